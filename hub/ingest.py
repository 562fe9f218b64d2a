"""The ingest writer: drains the bounded queue in batches and stores them.

One task, the only writer of the registry. Per batch: control messages (status, birth, ack)
are applied in arrival order; data and events go into one transaction whose first step claims
their ``(gateway, seq)`` keys, so a redelivered message is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wire import (
    Birth,
    Data,
    Event,
    Kind,
    Topics,
    WireError,
    decode_ack,
    decode_birth,
    decode_data,
    decode_event,
    decode_status,
)

from .commands import record_ack
from .config import IngestSettings
from .counters import Counters
from .mqtt import Incoming, MqttLink
from .registry import GatewayState, PointState, Registry
from .seqtrack import INT64_MAX, Gap
from .storage import QUALITY_CODE, EventRow, SampleRow, Storage
from .storage.models import HASH_MAX, NAME_MAX, SEVERITY_MAX, UNIT_MAX

log = logging.getLogger(__name__)

_ACK_SUFFIX = "/" + Kind.ACK.value


LATEST_FLUSH_S = 1.0
# A transaction that fails is retried (transient: database locked, disk full) with backoff;
# after this many attempts its messages are stored one by one to find a poisonous one.
STORE_ATTEMPTS = 4
RETRY_MAX_S = 5.0
# How long a graceful shutdown waits for the transaction in flight.
SHUTDOWN_WAIT_S = 10.0


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


@dataclass
class _Pending:
    """Data and events of one batch, waiting for their transaction."""

    rows: list[tuple[GatewayState, int, list[SampleRow]]] = field(default_factory=list)
    events: list[tuple[GatewayState, Event]] = field(default_factory=list)
    touched: dict[int, PointState] = field(default_factory=dict)
    samples: int = 0
    # (gateway, seq, received at): in arrival order, for gap accounting
    arrivals: list[tuple[GatewayState, int, int]] = field(default_factory=list)

    def parts(self) -> list[_Pending]:
        """One pending per message (to isolate a message the database refuses)."""
        out = [_Pending(rows=[r], touched=self.touched, samples=len(r[2]),
                        arrivals=[a for a in self.arrivals if a[0] is r[0] and a[1] == r[1]])
               for r in self.rows]
        out += [_Pending(events=[e], arrivals=[a for a in self.arrivals
                                               if a[0] is e[0] and a[1] == e[1].seq])
                for e in self.events]
        return out


def _check_len(what: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise WireError(f"{what} {value[:20]!r}... is {len(value)} characters long (at most {limit})")


def _check_birth(b: Birth) -> None:
    _check_int64("birth session", b.session)
    _check_len("birth sw", b.software_version, NAME_MAX)
    _check_len("birth config_hash", b.config_hash, HASH_MAX)
    for d in b.devices:
        for what, v in (("device id", d.id), ("device kind", d.kind), ("device driver", d.driver)):
            _check_len(f"birth {what}", v, NAME_MAX)
        for p in d.points:
            _check_len(f"birth device {d.id} point id", p.id, NAME_MAX)
            _check_len(f"birth device {d.id} point {p.id} unit", p.unit, UNIT_MAX)


def _check_event(ev: Event) -> None:
    if ev.seq < 0:
        raise WireError(f"event: negative seq {ev.seq}")
    _check_int64("event", ev.seq, ev.ts_ms)
    for what, v in (("device", ev.device), ("kind", ev.kind), ("point", ev.point)):
        _check_len(f"event {what}", v, NAME_MAX)
    _check_len("event severity", ev.severity, SEVERITY_MAX)


def _check_int64(what: str, *values: int) -> None:
    # SQLite and PostgreSQL store 64-bit signed integers; msgpack carries up to 2**64 - 1.
    for v in values:
        if not -INT64_MAX <= v <= INT64_MAX:
            raise WireError(f"{what} {v} does not fit in 64 bits")


class IngestWriter:
    """Consumes ``Incoming`` messages and writes them through registry and storage."""

    def __init__(
        self,
        settings: IngestSettings,
        topics: Topics,
        queue: asyncio.Queue[Incoming],
        link: MqttLink,
        storage: Storage,
        registry: Registry,
        counters: Counters,
    ) -> None:
        self._s = settings
        # Latest values live in memory (the API reads them there); the point table's copy only
        # serves a restart, so it is written at most once per LATEST_FLUSH_S, not per batch.
        self._dirty: dict[int, PointState] = {}
        self._inflight: asyncio.Task[None] | None = None
        self._latest_flushed = 0.0
        self._topics = topics
        self._queue = queue
        self._link = link
        self._storage = storage
        self._registry = registry
        self._counters = counters
        self.batches = 0
        self._seen: dict[int, GatewayState] = {}  # gateways with news since the last flush
        #: Called with (gateway, event) for every well-formed event, before it is stored
        #: (the lighting-policy runner listens for presence). Must not block or raise.
        self.event_listeners: list[Callable[[str, Event], None]] = []

    async def run(self) -> None:
        """Batch, store, acknowledge; forever."""
        q = self._queue
        interval = self._s.batch_interval_ms / 1000
        last_flush = 0.0
        while True:
            batch = [await q.get()]
            # Cleared before draining: an ack queued from here on sets it and ends the wait.
            self._link.urgent.clear()
            self._drain(batch)
            wait = last_flush + interval - time.monotonic()
            if wait > 0 and len(batch) < q.maxsize and not any(m.topic.endswith(_ACK_SUFFIX) for m in batch):
                # Group commit: at most one transaction per interval under light load; but an
                # operator waits on a command's ack, so a batch holding one is written at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._link.urgent.wait(), wait)
                self._drain(batch)
            try:
                await self.process(batch)
            except Exception:
                # Not acked: the broker redelivers on the next connection; ingest is idempotent.
                self._counters.inc("errors.store")
                log.exception("applying a batch of %d messages failed", len(batch))
            last_flush = time.monotonic()

    # -- pipelining: the next batch is decoded while the previous one commits ---------------
    #
    # At most one store transaction runs at a time (``_inflight``). It runs in the database's
    # thread while this task decodes and maps the next batch, so the two overlap on two cores.
    # Anything else that touches the database (status, birth, ack, undeclared points) first
    # waits for it (``_barrier``): tortoise's SQLite connection must not see two at once.

    async def _gateway(self, name: str) -> GatewayState:
        """The registry's gateway; creating one touches the database, so after the barrier."""
        gw = self._registry.gateways.get(name)
        if gw is None:
            await self._barrier()
            gw = await self._registry.gateway(name)
        return gw

    async def _barrier(self) -> None:
        """Wait until the in-flight store transaction (if any) is done."""
        task = self._inflight
        if task is not None:
            # Shielded: cancelling the writer (shutdown) must not cut a transaction in half;
            # flush_latest() waits for it instead.
            await asyncio.shield(task)
            if self._inflight is task:
                self._inflight = None

    async def _launch(self, pending: _Pending, batch: list[Incoming] | None) -> None:
        """Start storing ``pending``; ack ``batch`` once it is committed."""
        await self._barrier()
        self._inflight = asyncio.create_task(self._store_and_ack(pending, batch), name="hub-ingest-store")

    async def _store_and_ack(self, pending: _Pending, batch: list[Incoming] | None) -> None:
        """Store until it is done, then ack: nothing is acked that is not stored.

        Retried with backoff (back-pressure holds meanwhile: the queue fills, the MQTT reader
        pauses); after STORE_ATTEMPTS, message by message: one the database refuses while the
        others go in is poison, logged, counted (``errors.poison``) and acked, so it cannot stall
        the city. If every message fails alone the database is the problem: keep retrying.
        """
        attempt = 0
        while True:
            try:
                await self._store(pending)
                break
            except Exception:
                self._counters.inc("errors.store")
                attempt += 1
                if attempt == 1:
                    log.exception("storing %d samples failed; retrying", pending.samples)
                if attempt >= STORE_ATTEMPTS and await self._store_each(pending):
                    break
                await asyncio.sleep(min(RETRY_MAX_S, 0.1 * 2**attempt))
        if attempt:
            log.info("stored %d samples after %d failed attempts", pending.samples, attempt)
        if batch is not None:
            self._link.ack(batch)

    async def _store_each(self, pending: _Pending) -> bool:
        """Store message by message; drop those that fail alone. False if none went in."""
        ok, bad = 0, list[tuple[_Pending, Exception]]()
        for part in pending.parts():
            try:
                await self._store(part)
                ok += 1
            except Exception as exc:  # classified below, logged with the message
                bad.append((part, exc))
        if not ok and bad:
            return False
        for part, err in bad:
            self._counters.inc("errors.poison")
            for gw, seq, _ in part.rows:
                log.error("gateway %s: data seq %d refused by the database, dropped: %s", gw.name, seq, err)
            for gw, ev in part.events:
                log.error("gateway %s: event seq %d refused by the database, dropped: %s",
                          gw.name, ev.seq, err)
        return True

    def _drain(self, batch: list[Incoming]) -> None:
        # Everything queued (at most queue_max messages); process() cuts it into transactions
        # of at most batch_max_samples samples.
        q = self._queue
        while not q.empty():
            batch.append(q.get_nowait())

    async def process(self, batch: list[Incoming]) -> None:
        """Apply one batch of messages."""
        pending = _Pending()
        count = self._counters.inc
        for m in batch:
            try:
                gw_name, kind = self._topics.parse(m.topic)
            except WireError as err:
                count("malformed.topic")
                log.warning("dropped a message on unexpected topic %s: %s", m.topic, err)
                continue
            count(f"received.{kind.value}")
            try:
                await self._one(gw_name, kind, m, pending)
            except WireError as err:
                count(f"malformed.{kind.value}")
                log.warning("gateway %s: dropped malformed %s on %s: %s", gw_name, kind.value, m.topic, err)
            except Exception:
                # A bug or a database refusal on one control message must not stall ingest
                # (it would never be acked and the broker's window would close).
                count(f"errors.{kind.value}")
                log.exception("gateway %s: applying %s on %s failed; dropped", gw_name, kind.value, m.topic)
            if pending.samples >= self._s.batch_max_samples:
                await self._launch(pending, None)
                pending = _Pending()
        if pending.rows or pending.events:
            await self._launch(pending, batch)
        else:
            await self._barrier()
            self._link.ack(batch)
        self.batches += 1

    async def _one(self, gw_name: str, kind: Kind, m: Incoming, pending: _Pending) -> None:
        reg = self._registry
        payload = m.payload
        rx = m.rx_ms or now_ms()
        if kind is Kind.DATA:
            data = decode_data(payload)
            stamps = [s[2] for s in data.samples]
            newest = max(stamps) if stamps else None
            _check_int64("data seq", data.seq)
            if stamps:
                _check_int64("sample ts_ms", min(stamps), max(stamps))  # type: ignore[type-var]
            gw = await self._gateway(gw_name)
            for attempt in range(1, STORE_ATTEMPTS + 1):
                try:
                    # Rerunnable: rows are added to pending only at its end, and live state
                    # updates are the same the second time.
                    await self._rows(gw, data, pending)
                    break
                except WireError:
                    raise
                except Exception:
                    # Creating an undeclared device/point failed (database): a transient
                    # failure must not drop the message; a lasting one must not stall ingest.
                    if attempt == STORE_ATTEMPTS:
                        raise
                    self._counters.inc("errors.store")
                    await asyncio.sleep(min(RETRY_MAX_S, 0.1 * 2**attempt))
            pending.arrivals.append((gw, data.seq, rx))
            self._seen_at(gw, rx)
            if data.historical:
                gw.track.historical(newest, rx)  # type: ignore[arg-type]
            elif newest is not None:
                self._live(gw, newest, rx)  # type: ignore[arg-type]
        elif kind is Kind.EVENT:
            ev = decode_event(payload)
            _check_event(ev)
            gw = await self._gateway(gw_name)
            pending.events.append((gw, ev))
            for listener in self.event_listeners:
                try:
                    listener(gw_name, ev)
                except Exception:
                    log.exception("gateway %s: event listener failed on %s", gw_name, ev.kind)
            pending.arrivals.append((gw, ev.seq, rx))
            self._seen_at(gw, rx)
            if ev.historical:  # replayed by the edge: its age is not clock skew
                gw.track.historical(ev.ts_ms, rx)
            else:
                self._live(gw, ev.ts_ms, rx)
        elif kind is Kind.STATUS:
            st = decode_status(payload)
            _check_int64("status session", st.session)
            await self._barrier()
            await reg.set_status(await self._gateway(gw_name), st.online, st.session, rx)
            self._counters.inc("stored.status")
        elif kind is Kind.BIRTH:
            birth = decode_birth(payload)
            _check_birth(birth)
            await self._barrier()
            await reg.apply_birth(await self._gateway(gw_name), birth, rx)
            self._counters.inc("stored.birth")
        elif kind is Kind.ACK:
            ack = decode_ack(payload)
            _check_int64("ack ts", ack.ts_ms)
            await self._barrier()
            await record_ack(self._storage, self._counters, await self._gateway(gw_name), ack)
        else:
            self._counters.inc(f"ignored.{kind.value}")

    def _seen_at(self, gw: GatewayState, rx: int) -> None:
        if gw.last_seen_ms is None or rx > gw.last_seen_ms:
            gw.last_seen_ms = rx
            self._seen[gw.id] = gw

    def _live(self, gw: GatewayState, ts: int, rx: int) -> None:
        """Feed the clock-skew estimate; flag (and log once) a gateway beyond the threshold."""
        track = gw.track
        track.live(ts, rx)
        offset = track.clock_offset_ms(rx)
        bad = offset is not None and abs(offset) > self._s.clock_skew_max_ms
        if bad != track.skew_alarm:
            track.skew_alarm = bad
            if bad:
                self._counters.inc("clock.skew_alarm")
                log.warning("gateway %s: clock %+d ms off the hub's (threshold %d ms)",
                            gw.name, offset, self._s.clock_skew_max_ms)
            else:
                log.info("gateway %s: clock back within %d ms of the hub's (%+d ms)",
                         gw.name, self._s.clock_skew_max_ms, offset)

    def _latest_rows(self) -> list[tuple[float | None, int, int, int]]:
        return [(pt.value, pt.ts_ms, pt.quality, pt.id) for pt in self._dirty.values()]  # type: ignore[misc]

    async def flush_latest(self) -> None:
        """Finish the in-flight store, write latest values through to the point table (shutdown)."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._barrier(), SHUTDOWN_WAIT_S)
        if self._dirty or self._seen:
            try:
                async with self._storage.ingest_tx() as tx:
                    await tx.update_latest(self._latest_rows())
                    await tx.update_last_seen(self._seen_rows())
            except Exception as err:
                # Only the table copy of the latest values (samples are stored): a restart
                # shows latest values up to a second older. Not worth failing the shutdown.
                log.warning("latest values of %d points not written at shutdown: %s", len(self._dirty), err)
                return
            self._dirty.clear()
            self._seen.clear()

    def _seen_rows(self) -> list[tuple[int, int]]:
        return [(gw.last_seen_ms, gw.id) for gw in self._seen.values()]  # type: ignore[misc]

    async def _rows(self, gw: GatewayState, data: Data, pending: _Pending) -> None:
        """Map samples to point ids and update live state (newest timestamp wins)."""
        devices = self._registry.devices
        codes = QUALITY_CODE
        touched = pending.touched
        rows: list[SampleRow] = []
        append = rows.append
        dev_name = None
        points: dict[str, PointState] = {}
        for dev, pt_name, ts, v, q in data.samples:
            if dev != dev_name:
                d = devices.get(dev)
                if d is not None and d.gateway_id != gw.id:
                    self._counters.inc("conflict.sample")
                    dev_name, points = None, {}
                    continue
                dev_name, points = dev, (d.points if d is not None else {})
            pt = points.get(pt_name)
            if pt is None:
                if len(dev) > NAME_MAX or len(pt_name) > NAME_MAX:
                    # A new name the point table cannot hold: that sample is dropped, counted.
                    self._counters.inc("malformed.sample")
                    log.warning("gateway %s: sample with a name over %d characters dropped",
                                gw.name, NAME_MAX)
                    continue
                await self._barrier()
                pt = await self._registry.undeclared_point(gw, dev, pt_name, v)
                dev_name = None  # the device may be new: look it up again
                if pt is None:
                    self._counters.inc("conflict.sample")
                    continue
            value = v if v.__class__ is float or v is None else float(v)  # type: ignore[arg-type]
            code = codes[q]
            append((pt.id, ts, value, code))
            if pt.ts_ms is None or ts >= pt.ts_ms:
                pt.value, pt.ts_ms, pt.quality = value, ts, code
                touched[pt.id] = pt
        pending.rows.append((gw, data.seq, rows))
        pending.samples += len(rows)

    def _gap_updates(
        self, p: _Pending, fresh: dict[int, set[int]]
    ) -> tuple[dict[int, tuple[GatewayState, list[Gap]]], int]:
        """The new gap lists of gateways whose gaps change (working copies, not yet applied)
        and how many gaps opened."""
        work: dict[int, tuple[GatewayState, list[Gap], int | None]] = {}
        changed: set[int] = set()
        opened = 0
        for gw, seq, rx in p.arrivals:
            if seq not in fresh.get(gw.id, ()):
                continue  # a duplicate: it was accounted when it was first stored
            _, gs, last = work.get(gw.id) or (gw, list(gw.track.gaps), gw.last_seq)
            new_last, moved = gw.track.advance(gs, last, seq, rx)
            work[gw.id] = (gw, gs, new_last)
            if moved:
                changed.add(gw.id)
                opened += last is not None and seq > last
        return {gid: work[gid][:2] for gid in changed}, opened

    async def _store(self, p: _Pending) -> None:
        """One transaction: claim message keys, insert what is new, write latest values."""
        seqs: dict[int, list[int]] = {}
        for gw, seq, _ in p.rows:
            seqs.setdefault(gw.id, []).append(seq)
        for gw, ev in p.events:
            seqs.setdefault(gw.id, []).append(ev.seq)
        count = self._counters.inc
        # advance() moves these two flags; a failed transaction must leave them as they were.
        flags = [(gw, gw.track.restart_pending, gw.track.forgotten) for gw, _, _ in p.arrivals]
        try:
            async with self._storage.ingest_tx() as tx:
                fresh = await tx.claim_many(seqs)
                gaps, opened = self._gap_updates(p, fresh)
                await tx.replace_gaps({gid: [(g.lo, g.hi, g.opened_ms, g.restart) for g in gs]
                                       for gid, (_, gs) in gaps.items()})
                samples: list[SampleRow] = []
                stored = dup = 0
                for gw, seq, rows in p.rows:
                    new = fresh[gw.id]
                    if seq in new:
                        new.discard(seq)
                        samples.extend(rows)
                        stored += 1
                    else:
                        dup += 1
                events: list[EventRow] = []
                dup_ev = 0
                for gw, ev in p.events:
                    new = fresh[gw.id]
                    if ev.seq in new:
                        new.discard(ev.seq)
                        events.append(
                            EventRow(
                                gw.id,
                                ev.seq,
                                ev.ts_ms,
                                ev.device,
                                ev.kind,
                                ev.active,
                                ev.severity,
                                ev.point,
                                ev.detail,
                            )
                        )
                    else:
                        dup_ev += 1
                await tx.insert_samples(samples)
                await tx.insert_events(events)
                self._dirty.update(p.touched)
                if time.monotonic() - self._latest_flushed >= LATEST_FLUSH_S:
                    await tx.update_latest(self._latest_rows())
                    await tx.update_last_seen(self._seen_rows())
                    self._dirty.clear()
                    self._seen.clear()
                    self._latest_flushed = time.monotonic()
        except BaseException:
            for gw, restart_pending, forgotten in flags:
                gw.track.restart_pending, gw.track.forgotten = restart_pending, forgotten
            raise
        # Committed: now the in-memory view may move (a failed transaction left it as it was).
        for gw, gs in gaps.values():
            gw.track.gaps = gs
        count("gaps.opened", opened)
        for gw, seq, _ in p.rows:
            if gw.last_seq is None or seq > gw.last_seq:
                gw.last_seq = seq
        for gw, ev in p.events:
            if gw.last_seq is None or ev.seq > gw.last_seq:
                gw.last_seq = ev.seq
        count("stored.data", stored)
        count("stored.samples", len(samples))
        count("duplicate.data", dup)
        count("stored.event", len(events))
        count("duplicate.event", dup_ev)
