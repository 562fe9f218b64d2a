"""Faults at the hub, with real parts: the hub killed with SIGKILL mid-ingest, field devices
that stop answering or garble their frames, and fuzzed payloads on every topic the hub reads.

Every test reports sent/stored/lost/duplicated in its assertion message and requires zero loss
and zero duplicates in storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import msgpack
import pytest
from broker import Mosquitto, free_port, wait_port
from hubtest import _settings, eventually, start_hub

import wire
from firmware_sim.modbus import CabinetSim
from hub.keys import STORAGE
from wire import (
    Ack,
    AckStatus,
    Birth,
    Data,
    DeviceInfo,
    Event,
    Kind,
    PointInfo,
    PointType,
    Status,
    Topics,
    WireError,
    encode_ack,
    encode_birth,
    encode_data,
    encode_event,
    encode_status,
)

TOPICS = Topics()


def _now() -> int:
    return int(time.time() * 1000)


def report(sent: set[Any], stored: list[Any]) -> str:
    """``sent=.. stored=.. lost=.. duplicated=..`` for an assertion message."""
    unique = set(stored)
    lost = sent - unique
    return (f"sent={len(sent)} stored={len(unique)} lost={len(lost)} "
            f"duplicated={len(stored) - len(unique)} extra={len(unique - sent)} "
            f"first lost={sorted(lost)[:10]}")


# -- the hub as a process, killed with SIGKILL -------------------------------------------------


class HubProcess:
    """``python -m hub.cli run`` on a config file; killable; its database readable directly."""

    def __init__(self, tmp: Path, broker: Mosquitto, protocol: str = "3.1.1") -> None:
        self.dir = tmp / "hubproc"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.config = self.dir / "hub.yaml"
        self.config.write_text(
            f"data_dir: {self.dir}\n"
            f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: hub-kill, keepalive_s: 5,"
            f" protocol: '{protocol}'}}\n"
            f"http: {{host: 127.0.0.1, port: {self.http_port}}}\n"
            "ingest: {batch_interval_ms: 20, queue_max: 200}\n"
        )
        self.db = self.dir / "citynerve.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start and wait until the REST API answers."""
        self.starts += 1
        log = open(self.dir / f"hub-{self.starts}.log", "wb")  # closed below: Popen keeps its own fd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port("127.0.0.1", self.http_port, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush, nothing graceful."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait (exit 0 expected)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                assert self.proc.wait(30) == 0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the hub's SQLite file (WAL: readers never block the writer)."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db:
            return db.execute(sql).fetchall()

    def token(self) -> str:
        """A viewer token through the CLI."""
        out = subprocess.run(
            [sys.executable, "-m", "hub.cli", "token", "create", "--config", str(self.config),
             "--role", "viewer", "--name", f"t{self.starts}-{time.monotonic_ns()}"],
            check=True, capture_output=True, timeout=60,
        )
        return out.stdout.decode().strip()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_hub_killed_mid_ingest_loses_and_duplicates_nothing(
    tmp_path: Path, mosquitto: Mosquitto, protocol: str
) -> None:
    hub = HubProcess(tmp_path, mosquitto, protocol)
    hub.start()
    gateways, per_gw = 8, 400
    base = _now()  # sample time = base + seq: a live clock, so no skew alarm muddles the logs
    published = 0
    kills = 0
    done = asyncio.Event()

    async def gateway(n: int) -> None:
        nonlocal published
        gw = f"gw-k{n}"
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=gw) as c:
            for seq in range(per_gw):
                if seq % 25 == 24:
                    payload = encode_event(Event(seq=seq, ts_ms=base + seq, device=f"D-{n}",
                                                 kind="door_open", detail=f"{n}/{seq}"))
                    await c.publish(TOPICS.gateway(gw, Kind.EVENT), payload, qos=1)
                else:
                    payload = encode_data(Data(seq=seq, samples=[
                        (f"D-{n}", "v", base + seq, float(seq), "good")]))
                    await c.publish(TOPICS.gateway(gw, Kind.DATA), payload, qos=1)
                published += 1
                await asyncio.sleep(0.004)

    async def killer() -> None:
        nonlocal kills
        total = gateways * per_gw
        stored_at_start = 0
        for fraction in (0.2, 0.55):
            async def stored_enough(f: float = fraction, floor: int = stored_at_start) -> bool:
                # Killed mid-ingest: this process has stored some messages itself.
                rows = await asyncio.to_thread(hub.query, "SELECT count(*) FROM ingested_msg")
                return published >= f * total and rows[0][0] > floor

            await eventually(stored_enough, 120)
            await asyncio.to_thread(hub.kill)
            kills += 1
            await asyncio.sleep(0.5)  # publishers go on; the broker queues for the dead hub
            rows = await asyncio.to_thread(hub.query, "SELECT count(*) FROM ingested_msg")
            stored_at_start = rows[0][0]
            await asyncio.to_thread(hub.start)

    try:
        await asyncio.gather(killer(), *(gateway(n) for n in range(gateways)))
        done.set()
        sent = {(f"gw-k{n}", s) for n in range(gateways) for s in range(per_gw)}

        def stored_keys() -> list[tuple[str, int]]:
            return [(g, s) for g, s in hub.query(
                "SELECT g.name, m.seq FROM ingested_msg m JOIN gateway g ON g.id = m.gateway_id")]

        async def all_in() -> bool:
            return len(await asyncio.to_thread(stored_keys)) >= len(sent)

        with contextlib.suppress(AssertionError):
            await eventually(all_in, 120)
        keys = await asyncio.to_thread(stored_keys)
        samples = await asyncio.to_thread(hub.query, f"""
            SELECT g.name, s.ts_ms - {base} FROM sample s JOIN point p ON p.id = s.point_id
            JOIN device d ON d.id = p.device_id JOIN gateway g ON g.id = d.gateway_id""")
        events = await asyncio.to_thread(
            hub.query, "SELECT g.name, e.seq FROM event e JOIN gateway g ON g.id = e.gateway_id")
        sent_data = {k for k in sent if k[1] % 25 != 24}
        sent_events = sent - sent_data
        msg = (f"kills={kills} messages: {report(sent, keys)}; samples: "
               f"{report(sent_data, [(g, s) for g, s in samples])}; events: {report(sent_events, events)}")
        assert kills == 2, msg
        assert set(keys) == sent and len(keys) == len(sent), msg
        assert sorted(samples) == sorted(sent_data), msg
        assert sorted(events) == sorted(sent_events), msg
        # The restarted hub knows nothing is missing (gaps are persisted and were closed).
        token = await asyncio.to_thread(hub.token)
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"http://127.0.0.1:{hub.http_port}/api/v1/gateways",
                               headers={"Authorization": f"Bearer {token}"})
            body = await r.json()
        assert r.status == 200, body
        assert {g["id"]: (g["open_gaps"], g["last_seq"]) for g in body["items"]} == {
            f"gw-k{n}": (0, per_gw - 1) for n in range(gateways)}, msg
    finally:
        hub.stop()


# -- fuzz: random and mutated payloads on every subscribed topic ----------------------------------

FUZZ_GWS = ("gw-fz1", "gw-fz2")
# The device of the valid messages sent after the fuzz: no byte flip of "F-1" can produce it
# (a flip once turned "F-1" into "V-1", which a fuzzed gateway then owned).
AFTER = "VALID-AFTER-FUZZ"
_VALID: dict[Kind, Callable[[random.Random], bytes]] = {
    Kind.STATUS: lambda r: encode_status(Status(online=r.random() < 0.5, session=r.randrange(5))),
    Kind.BIRTH: lambda r: encode_birth(Birth(session=1, software_version="f", config_hash="h", ts_ms=1,
        devices=(DeviceInfo("F-1", "lamp", "modbus", (PointInfo("level", PointType.FLOAT, "%", 0, 100,
                                                               writable=True),)),))),
    Kind.DATA: lambda r: encode_data(Data(seq=r.randrange(10_000), samples=[
        ("F-1", "level", _now(), r.random() * 100, "good") for _ in range(r.randrange(1, 4))],
        historical=r.random() < 0.3)),
    Kind.EVENT: lambda r: encode_event(Event(seq=r.randrange(10_000), ts_ms=_now(), device="F-1",
                                             kind="door_open", detail="x")),
    Kind.ACK: lambda r: encode_ack(Ack("6f1c2e9a-0000-4000-8000-000000000000", AckStatus.OK, "x", 1, 2.0)),
}
_DECODE = {Kind.STATUS: wire.decode_status, Kind.BIRTH: wire.decode_birth, Kind.DATA: wire.decode_data,
           Kind.EVENT: wire.decode_event, Kind.ACK: wire.decode_ack}
_ODD = [None, True, -1, 0, 2**63, 2**64 - 1, -(2**63), 1.5, float("nan"), "", "x" * 300, b"\x00",
        [], {}, [1, 2], {"a": 1}]
_KEYS = ["v", "seq", "samples", "hist", "ts", "device", "kind", "active", "severity", "point",
         "detail", "online", "session", "sw", "config_hash", "devices", "id", "status", "value"]


def _random_value(r: random.Random, depth: int = 0) -> Any:
    if depth < 2 and r.random() < 0.3:
        return [_random_value(r, depth + 1) for _ in range(r.randrange(6))]
    if depth < 2 and r.random() < 0.2:
        return {r.choice(_KEYS): _random_value(r, depth + 1) for _ in range(r.randrange(6))}
    # msgpack carries integers from -2**63 to 2**64 - 1.
    return copy.deepcopy(r.choice([*_ODD, r.randrange(-(2**63), 2**64), r.random() * 1e20, "L-1", "good"]))


def _mutate_map(r: random.Random, payload: bytes) -> bytes:
    body = msgpack.unpackb(payload)
    for _ in range(r.randrange(1, 3)):
        key = r.choice([*body, *_KEYS])
        if r.random() < 0.2:
            body.pop(key, None)
        else:
            body[key] = _random_value(r)
    if "samples" in body and isinstance(body["samples"], list) and body["samples"] and r.random() < 0.5:
        s = list(body["samples"][0]) if isinstance(body["samples"][0], list) else [body["samples"][0]]
        if s:
            s[r.randrange(len(s))] = _random_value(r)
        body["samples"][0] = s
    return msgpack.packb(body)


def fuzz_payload(r: random.Random, kind: Kind) -> bytes:
    """Random bytes, random msgpack, a valid payload, or a valid one mutated."""
    choice = r.random()
    if choice < 0.15:
        return r.randbytes(r.randrange(0, 64))
    if choice < 0.3:
        return msgpack.packb({r.choice(_KEYS): _random_value(r) for _ in range(r.randrange(8))})
    valid = _VALID[kind](r)
    if choice < 0.4:
        return valid
    if choice < 0.55:  # byte flips and cuts
        b = bytearray(valid)
        for _ in range(r.randrange(1, 4)):
            b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b[: r.randrange(1, len(b) + 1)]) if r.random() < 0.3 else bytes(b)
    return _mutate_map(r, valid)


def _wire_rejects(kind: Kind, payload: bytes) -> bool:
    try:
        _DECODE[kind](payload)
    except WireError:
        return True
    return False


async def _fuzz(tmp_path: Path, mosquitto: Mosquitto, seconds: float, seed: int) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    r = random.Random(seed)
    sent: dict[Kind | str, int] = dict.fromkeys([*_DECODE, "topic"], 0)
    rejects = dict.fromkeys(_DECODE, 0)
    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="fuzzer") as c:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for _ in range(50):
                    kind = r.choice(list(_DECODE))
                    payload = fuzz_payload(r, kind)
                    if r.random() < 0.02:  # a gateway id the topic scheme refuses
                        await c.publish(f"cn/v1/gw/bad%id/{kind.value}", payload, qos=1)
                        sent["topic"] += 1
                        continue
                    sent[kind] += 1
                    rejects[kind] += _wire_rejects(kind, payload)
                    await c.publish(TOPICS.gateway(r.choice(FUZZ_GWS), kind), payload, qos=1,
                                    retain=kind in (Kind.STATUS, Kind.BIRTH) and r.random() < 0.5)
                await asyncio.sleep(0)

            async def all_received() -> bool:
                _, st = await hub.get("/stats")
                cn = st["counters"]
                return all(cn.get(f"received.{k}", 0) >= sent[k] for k in _DECODE) and (
                    cn.get("malformed.topic", 0) >= sent["topic"]) and st["ingest_queue"] == 0

            with contextlib.suppress(AssertionError):
                await eventually(all_received, 60)
            # Not stuck: a valid gateway's messages sent after the fuzz are stored.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gw-after") as ok:
                for seq in range(20):
                    await ok.publish(TOPICS.gateway("gw-after", Kind.DATA), encode_data(Data(
                        seq=seq, samples=[(AFTER, "level", 5_000 + seq, float(seq), "good")])), qos=1)

                async def valid_stored() -> bool:
                    _, pts = await hub.get(f"/devices/{AFTER}/points")
                    return bool(pts.get("items")) and pts["items"][0]["ts_ms"] == 5_019

                try:
                    await eventually(valid_stored, 60)
                except AssertionError:
                    _, st = await hub.get("/stats")
                    tasks = {t.get_name(): t.done() for t in asyncio.all_tasks()}
                    raise AssertionError(f"seed {seed}: valid messages after the fuzz not stored: "
                                         f"stats {st}; tasks done {tasks}") from None
        def accounting(cn: dict[str, int]) -> dict[str, tuple[int, int, int]]:
            """Per kind: (applied, refused, received), the 20 valid messages left out."""
            applied = {
                "data": cn.get("stored.data", 0) + cn.get("duplicate.data", 0) - 20,
                "event": cn.get("stored.event", 0) + cn.get("duplicate.event", 0),
                "status": cn.get("stored.status", 0), "birth": cn.get("stored.birth", 0),
                "ack": sum(cn.get(n, 0) for n in ("ack.unknown", "ack.late")),
            }
            return {k: (n, cn.get(f"malformed.{k}", 0) + cn.get(f"errors.{k}", 0),
                        cn.get(f"received.{k}", 0) - (k == "data") * 20) for k, n in applied.items()}

        async def balanced() -> bool:
            _, st = await hub.get("/stats")
            return all(a + b == c for a, b, c in accounting(st["counters"]).values())

        with contextlib.suppress(AssertionError):
            await eventually(balanced, 30)  # the last transaction may still be committing
        _, st = await hub.get("/stats")
        cn = st["counters"]
        _, hist = await hub.get("/telemetry", device=AFTER, point="level", **{"from": "0", "to": "6000"})
        stored_after = [i["ts_ms"] - 5_000 for i in hist["items"]]
        msg = f"seed {seed}: sent {sent}; wire rejects {rejects}; counters {cn}; after the fuzz: " + report(
            set(range(20)), stored_after)
        assert sorted(stored_after) == list(range(20)), msg
        assert cn.get("malformed.topic", 0) == sent["topic"], msg
        for k in _DECODE:
            assert cn.get(f"received.{k}", 0) == sent[k] + (k == "data") * 20, msg
            # Every message the wire rejects is counted as malformed (the hub refuses a few more:
            # numbers beyond 64 bits, names longer than its columns, negative event seqs).
            assert rejects[k] <= cn.get(f"malformed.{k}", 0) <= sent[k], msg
        for k, (applied, refused, received) in accounting(cn).items():
            assert applied + refused == received, f"{k}: {applied} applied + {refused} refused != {received}; {msg}"
        assert cn.get("errors.store", 0) == 0 and cn.get("errors.poison", 0) == 0, msg
        names = {t.get_name(): t for t in asyncio.all_tasks()}
        for name in ("hub-ingest-writer", "hub-mqtt"):
            assert name in names and not names[name].done(), f"{name} is gone; {msg}"
        assert await hub.app[STORAGE].count_samples() >= 20
    finally:
        await hub.client.close()


async def test_fuzz_every_topic_nothing_crashes_or_sticks(tmp_path: Path, mosquitto: Mosquitto) -> None:
    await _fuzz(tmp_path, mosquitto, seconds=8, seed=int(os.environ.get("CN_FUZZ_SEED", "20261122")))


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_fuzz_soak(tmp_path: Path, mosquitto: Mosquitto) -> None:
    await _fuzz(tmp_path, mosquitto, seconds=float(os.environ.get("CN_FUZZ_SECONDS", "300")),
                seed=int(os.environ.get("CN_FUZZ_SEED", str(int(time.time())))))


# -- field faults seen from the hub ---------------------------------------------------------------


@pytest.fixture
async def cabinet() -> AsyncIterator[CabinetSim]:
    """A simulated lamp cabinet over Modbus TCP."""
    from test_e2e import LAMPS

    async with CabinetSim(lamps=LAMPS, port=0) as sim:
        yield sim


async def test_field_faults_seen_at_the_hub_then_nothing_lost(
    tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim
) -> None:
    from test_e2e import running_city  # the real edge + hub + simulator wiring

    bus = (f"{{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {cabinet.tcp_port}, "
           "timeout_s: 0.3, retries: 0, max_gap: 9}")
    async with running_city(tmp_path, mosquitto, cabinet, bus) as city:
        await city.wait_point("L-0001", "power", quality="good")
        for mode, quality in (("no_answer", "comm_error"), ("garble", "comm_error"),
                              ("exception", "device_error")):
            cabinet.set_fault(mode, code=2)  # 2: illegal data address (Modbus spec §7)
            await city.wait_point("L-0001", "power", quality=quality)
            await city.wait_point("CAB-07", "supply_voltage", quality=quality)
            cabinet.set_fault("none")
            recovered = await city.wait_point("L-0001", "power", quality="good")
            assert recovered["value"] is not None
        # Nothing the edge sent is missing at the hub: its last seq arrived and no gap is open.
        target = city.edge.seqs.last

        async def caught_up() -> bool:
            _, g = await city.hub.get(f"/gateways/{city.edge.config.gateway.id}")
            return g["last_seq"] is not None and g["last_seq"] >= target

        await eventually(caught_up, 30)
        _, g = await city.hub.get(f"/gateways/{city.edge.config.gateway.id}")
        _, st = await city.hub.get("/stats")
        cn = st["counters"]
        msg = (f"edge last seq {target}, hub last seq {g['last_seq']}, open gaps {g['gaps']}, "
               f"stored {cn.get('stored.data')} duplicated {cn.get('duplicate.data', 0)}")
        assert g["open_gaps"] == 0 and g["missing"] == 0, msg
        assert cn.get("errors.store", 0) == 0, msg


@pytest.mark.parametrize("quality", [{}, [], {"a": 1}])
def test_wire_rejects_an_unhashable_quality_as_malformed(quality: Any) -> None:
    # Found by the fuzz above: a map as quality raised TypeError, not WireError.
    payload = msgpack.packb({"v": 1, "seq": 1, "samples": [["L-1", "level", 1, 1.0, quality]]})
    with pytest.raises(WireError, match="sample 0"):
        wire.decode_data(payload)


async def test_database_locked_mid_ingest_is_retried_not_lost(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Another process holds the database's write lock past SQLite's 5 s busy timeout: the
    transaction fails and is retried, the command sweep fails and lives on, nothing is acked
    before it is stored, nothing is lost."""
    settings = _settings(tmp_path, mosquitto)
    hub = await start_hub(settings)
    db_file = settings.data_dir / "citynerve.db"
    base = _now()

    def msg(seq: int) -> bytes:
        return encode_data(Data(seq=seq, samples=[("LK-1", "v", base + seq, float(seq), "good")]))

    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gw-lock") as c:
            await c.publish(TOPICS.gateway("gw-lock", Kind.DATA), msg(0), qos=1)

            async def counter(name: str, n: int) -> bool:
                _, st = await hub.get("/stats")
                return int(st["counters"].get(name, 0)) >= n

            await eventually(lambda: counter("stored.data", 1), 30)
            locker = sqlite3.connect(db_file, timeout=30, isolation_level=None)
            try:
                locker.execute("BEGIN EXCLUSIVE")
                for seq in range(1, 41):
                    await c.publish(TOPICS.gateway("gw-lock", Kind.DATA), msg(seq), qos=1)
                await eventually(lambda: counter("errors.store", 1), 30)
                # Held until the command sweep fails too (after SQLite's 5 s busy timeout).
                await eventually(lambda: counter("errors.sweep", 1), 30)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            await eventually(lambda: counter("stored.data", 41), 30)
        _, hist = await hub.get("/telemetry", device="LK-1", point="v", **{"from": "0"})
        stored = [i["ts_ms"] - base for i in hist["items"]]
        _, st = await hub.get("/stats")
        msg_ = f"{report(set(range(41)), stored)}; counters {st['counters']}"
        assert sorted(stored) == list(range(41)), msg_
        assert st["counters"].get("errors.poison", 0) == 0, msg_
        _, g = await hub.get("/gateways/gw-lock")
        assert g["open_gaps"] == 0 and g["last_seq"] == 40, msg_
        # The command expiry sweep (every 0.1 s here) met the lock too and lives on.
        sweep = [t for t in asyncio.all_tasks() if t.get_name() == "hub-command-sweep"]
        assert sweep and not sweep[0].done(), msg_
    finally:
        await hub.client.close()
