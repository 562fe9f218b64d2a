"""The hub's delivery bookkeeping end to end: seq gaps, replay progress, clock skew, dedupe
across restarts, and bounded memory under a burst. Real Mosquitto, real SQLite, the REST API."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import Mosquitto
from hubtest import Hub, _settings, eventually, start_hub
from hypothesis import given
from hypothesis import strategies as st

from hub.api.openapi import openapi_document
from hub.keys import STORAGE
from hub.seqtrack import MAX_GAPS, SEQ_BLOCK, WINDOW_MS, Gap, SeqTrack
from wire import Data, Event, Kind, Status, Topics, encode_data, encode_event, encode_status

TOPICS = Topics()
GW = "gw-rel"


def _now() -> int:
    return int(time.time() * 1000)


def data(seq: int, ts: int | None = None, hist: bool = False, dev: str = "L-1") -> bytes:
    """One wire data message with one sample."""
    return encode_data(Data(seq=seq, samples=[(dev, "level", ts or _now(), float(seq), "good")],
                            historical=hist))


def event(seq: int, ts: int | None = None) -> bytes:
    """One wire event."""
    return encode_event(Event(seq=seq, ts_ms=ts or _now(), device="L-1", kind="door_open",
                              severity="alarm", detail=f"ev {seq}"))


async def pub(c: aiomqtt.Client, kind: Kind, payload: bytes, gw: str = GW) -> None:
    """Publish as a gateway does."""
    await c.publish(TOPICS.gateway(gw, kind), payload, qos=1,
                    retain=kind in (Kind.STATUS, Kind.BIRTH))


async def stats(hub: Hub) -> dict[str, Any]:
    """GET /stats."""
    _, body = await hub.get("/stats")
    return dict(body)


async def wait_counter(hub: Hub, name: str, value: int, timeout: float = 20) -> None:
    """Until a counter reaches ``value``."""
    async def ok() -> bool:
        return int((await stats(hub))["counters"].get(name, 0)) >= value

    try:
        await eventually(ok, timeout)
    except AssertionError:
        raise AssertionError(f"{name} never reached {value}: {(await stats(hub))['counters']}") from None


async def gateway(hub: Hub, gw: str = GW) -> dict[str, Any]:
    """GET /gateways/{gw}."""
    status, body = await hub.get(f"/gateways/{gw}")
    assert status == 200, body
    return dict(body)


@pytest.fixture
async def gw_client(mosquitto: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    """A fake gateway's connection."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=GW) as c:
        yield c


# -- the pure bookkeeping, by table ------------------------------------------------------------


@pytest.mark.parametrize(
    ("seqs", "gaps", "last"),
    [
        ([0, 1, 2], [], 2),
        ([5, 6, 9], [(7, 8)], 9),  # the first seq seen opens nothing before it
        ([0, 4, 2], [(1, 1), (3, 3)], 4),  # a late arrival splits a gap
        ([0, 4, 1, 2, 3], [], 4),  # replay closes it
        ([0, 4, 3], [(1, 2)], 4),
        ([0, 10, 20, 15, 5], [(1, 4), (6, 9), (11, 14), (16, 19)], 20),
        ([10, 3], [], 10),  # older than anything seen: not a gap we know of
    ],
)
def test_gap_table(seqs: list[int], gaps: list[tuple[int, int]], last: int) -> None:
    t = SeqTrack()
    work: list[Gap] = []
    cur: int | None = None
    for s in seqs:
        cur, _ = t.advance(work, cur, s, 0)
    assert [(g.lo, g.hi) for g in work] == gaps and cur == last


@given(st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=120, unique=True))
def test_gaps_are_exactly_the_numbers_never_seen(seqs: list[int]) -> None:
    # Reference model: after the first seq seen, every number up to the highest seen that has
    # not arrived is missing (numbers below the first are unknown to the hub).
    t = SeqTrack()
    work: list[Gap] = []
    last: int | None = None
    for s in seqs:
        last, _ = t.advance(work, last, s, 0)
    first = seqs[0]
    missing = set(range(first, max(seqs) + 1)) - set(seqs)
    assert {n for g in work for n in range(g.lo, g.hi + 1)} == missing
    assert all(a.hi + 1 < b.lo for a, b in itertools.pairwise(work))  # sorted, disjoint, apart
    assert last == max(seqs)


def test_restart_skip_is_not_an_open_gap_and_gaps_are_bounded() -> None:
    t = SeqTrack()
    work: list[Gap] = []
    last, _ = t.advance(work, None, 10, 0)
    t.restart_pending = True  # the registry sets it on a new session
    last, _ = t.advance(work, last, SEQ_BLOCK, 0)
    last, _ = t.advance(work, last, SEQ_BLOCK + 5, 0)  # a real loss later in the session
    t.gaps = work
    assert [(g.lo, g.hi, g.restart) for g in work] == [
        (11, SEQ_BLOCK - 1, True), (SEQ_BLOCK + 1, SEQ_BLOCK + 4, False)]
    assert [(g.lo, g.hi) for g in t.open_gaps()] == [(SEQ_BLOCK + 1, SEQ_BLOCK + 4)]
    for _ in range(MAX_GAPS + 10):
        last, _moved = t.advance(work, last, last + 2, 0)  # type: ignore[operator]
    assert len(work) == MAX_GAPS and t.forgotten == 12


def test_clock_offset_is_robust_to_delay() -> None:
    t = SeqTrack()
    rx = 1_000_000
    # The gateway's clock is 7 s ahead; delays of 0.05 to 3 s only ever lower ts - rx.
    for i, delay in enumerate([3000, 50, 800, 2500, 120]):
        t.live(rx + i * 1000 + 7000 - delay, rx + i * 1000)
    assert t.clock_offset_ms(rx + 5000) == 7000 - 50
    # The clock is fixed: one to two windows later the old estimate is gone.
    later = rx + 2 * WINDOW_MS + 1
    t.live(later - 30, later)
    assert t.clock_offset_ms(later) == -30


# -- through the broker and the API --------------------------------------------------------------


async def test_gaps_open_close_survive_restart_and_events_dedupe(
    tmp_path: Path, mosquitto: Mosquitto, gw_client: aiomqtt.Client
) -> None:
    settings = _settings(tmp_path, mosquitto)
    hub = await start_hub(settings)
    try:
        await pub(gw_client, Kind.STATUS, encode_status(Status(online=True, session=1)))
        for s in (0, 1, 2, 6, 7):
            await pub(gw_client, Kind.DATA, data(s))
        await pub(gw_client, Kind.EVENT, event(8))
        await pub(gw_client, Kind.EVENT, event(8))  # a resend
        await pub(gw_client, Kind.DATA, data(12))
        await wait_counter(hub, "stored.event", 1)
        await wait_counter(hub, "stored.data", 6)
        g = await gateway(hub)
        assert g["online"] is True and g["last_seq"] == 12 and g["last_seen_ms"] is not None
        assert g["open_gaps"] == 2 and g["missing"] == 3 + 3, g
        assert [(x["from_seq"], x["to_seq"]) for x in g["gaps"]] == [(3, 5), (9, 11)]
        _, lst = await hub.get("/gateways")
        [summary] = lst["items"]
        assert (summary["open_gaps"], summary["missing"]) == (2, 6)
        # The OpenAPI document names exactly the fields served.
        paths = openapi_document()["paths"]
        list_schema = paths["/gateways"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(list_schema["properties"]["items"]["items"]["properties"]) == set(summary)
        detail = paths["/gateways/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert {k for part in detail["allOf"] for k in part["properties"]} == set(g)
        assert set(detail["allOf"][1]["properties"]["replay"]["properties"]) == set(g["replay"])
        assert (await stats(hub))["counters"]["duplicate.event"] == 1
    finally:
        await hub.client.close()

    # While the hub is away: one missing message arrives, the event is resent again.
    await pub(gw_client, Kind.DATA, data(4))
    await pub(gw_client, Kind.EVENT, event(8))
    hub = await start_hub(settings)
    try:
        await wait_counter(hub, "duplicate.event", 1)
        await wait_counter(hub, "stored.data", 1)
        g = await gateway(hub)
        # Persisted: the restarted hub still knows what is missing, minus what arrived.
        assert [(x["from_seq"], x["to_seq"]) for x in g["gaps"]] == [(3, 3), (5, 5), (9, 11)], g
        # The replay fills the rest; its progress is visible.
        t_old = _now() - 3_600_000
        for s in (3, 5, 9, 10, 11):
            await pub(gw_client, Kind.DATA, data(s, ts=t_old + s, hist=True))
        await wait_counter(hub, "stored.data", 6)
        g = await gateway(hub)
        assert g["open_gaps"] == 0 and g["gaps"] == [] and g["missing"] == 0, g
        assert g["replay"]["messages_total"] == 5 and g["replay"]["messages_recent"] == 5
        assert g["replay"]["newest_ts_ms"] == t_old + 11 and g["replaying"] is True
        _, evs = await hub.get("/events", device="L-1", **{"from": "0"})
        assert len(evs["items"]) == 1  # stored once across the restart
        _, hist = await hub.get("/telemetry", device="L-1", point="level", **{"from": "0"})
        assert sorted(i["value"] for i in hist["items"]) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
        # A replayed old message does not count against the clock.
        assert g["clock_skew"] is False
    finally:
        await hub.client.close()


async def test_restart_block_skip_is_not_reported_missing(
    tmp_path: Path, mosquitto: Mosquitto, gw_client: aiomqtt.Client
) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    try:
        await pub(gw_client, Kind.STATUS, encode_status(Status(online=True, session=1)))
        for s in (0, 1, 2):
            await pub(gw_client, Kind.DATA, data(s))
        await wait_counter(hub, "stored.data", 3)
        # The gateway restarts: new session, numbers resume at the next reserved block.
        await pub(gw_client, Kind.STATUS, encode_status(Status(online=True, session=2)))
        await pub(gw_client, Kind.DATA, data(SEQ_BLOCK))
        await pub(gw_client, Kind.DATA, data(SEQ_BLOCK + 2))  # and then a real loss
        await wait_counter(hub, "stored.data", 5)
        g = await gateway(hub)
        assert g["session"] == 2 and g["restart_skips"] == 1
        assert g["open_gaps"] == 1 and g["missing"] == 1, g
    finally:
        await hub.client.close()


async def test_clock_skew_flagged(
    tmp_path: Path, mosquitto: Mosquitto, gw_client: aiomqtt.Client
) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto, ingest={
        "batch_interval_ms": 0, "clock_skew_max_ms": 20_000}))
    try:
        await pub(gw_client, Kind.DATA, data(0))
        await wait_counter(hub, "stored.data", 1)
        g = await gateway(hub)
        # Same clock: the estimate is minus the delivery delay (generous for a loaded machine).
        assert g["clock_skew"] is False and -20_000 <= g["clock_offset_ms"] <= 0, g
        # The gateway's clock jumps 90 s ahead: flagged at once.
        await pub(gw_client, Kind.EVENT, event(1, ts=_now() + 90_000))
        await wait_counter(hub, "clock.skew_alarm", 1)
        g = await gateway(hub)
        assert g["clock_skew"] is True and 60_000 < g["clock_offset_ms"] <= 90_000, g
        _, lst = await hub.get("/gateways")
        assert lst["items"][0]["clock_skew"] is True
    finally:
        await hub.client.close()


async def test_burst_is_absorbed_with_bounded_queues(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Many gateways replay at once: every message stored once, the hub's queues stay bounded."""
    gateways, per_gw, queue_max = 40, 150, 50
    hub = await start_hub(_settings(tmp_path, mosquitto, ingest={
        "batch_interval_ms": 0, "queue_max": queue_max}))
    try:
        async def replay(n: int) -> None:
            gw = f"gw-b{n:03d}"
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=gw,
                                      max_inflight_messages=200) as c:
                # All at once, as a reconnecting gateway's replay does.
                await asyncio.gather(*(
                    pub(c, Kind.DATA, data(s, hist=True, dev=f"D-{n:03d}"), gw=gw)
                    for s in range(per_gw)))
                await pub(c, Kind.DATA, data(0, hist=True, dev=f"D-{n:03d}"), gw=gw)  # a resend

        await asyncio.gather(*(replay(n) for n in range(gateways)))
        total = gateways * per_gw
        await wait_counter(hub, "stored.data", total, timeout=120)
        await wait_counter(hub, "duplicate.data", gateways, timeout=30)
        st = await stats(hub)
        c = st["counters"]
        sent, stored = total + gateways, c["stored.data"]
        dup = c.get("duplicate.data", 0)
        assert (stored, dup) == (total, gateways), f"sent {sent} stored {stored} duplicates {dup}"
        assert await hub.app[STORAGE].count_samples() == total
        assert st["ingest_queue_peak"] <= st["ingest_queue_bound"], st
        # Back-pressure did engage: the reader paused rather than the queue growing.
        assert c.get("mqtt.reader_paused", 0) >= 1, c
        _, lst = await hub.get("/gateways")
        assert all(g["open_gaps"] == 0 for g in lst["items"])
    finally:
        await hub.client.close()


async def test_backlog_larger_than_the_queues_at_connect(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The broker floods a returning hub with its session's backlog before SUBACK: the hub must
    still finish connecting (the reader may not pause before anyone consumes) and store all."""
    settings = _settings(tmp_path, mosquitto, ingest={"batch_interval_ms": 0, "queue_max": 20})
    hub = await start_hub(settings)
    await hub.client.close()
    n = 600
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=GW,
                              max_inflight_messages=100) as c:
        await asyncio.gather(*(pub(c, Kind.DATA, data(s)) for s in range(n)))
    hub = await start_hub(settings, connect_timeout=30)
    try:
        await wait_counter(hub, "stored.data", n, timeout=60)
        st = await stats(hub)
        stored = st["counters"]["stored.data"]
        assert stored == n and await hub.app[STORAGE].count_samples() == n, (
            f"sent {n} stored {stored} duplicated {st['counters'].get('duplicate.data', 0)}")
        assert st["ingest_queue_peak"] <= st["ingest_queue_bound"], st
    finally:
        await hub.client.close()
