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
from dataclasses import dataclass, field

from wire import (
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
from .storage import QUALITY_CODE, EventRow, SampleRow, Storage

log = logging.getLogger(__name__)

_ACK_SUFFIX = "/" + Kind.ACK.value


LATEST_FLUSH_S = 1.0


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
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _launch(self, pending: _Pending, batch: list[Incoming] | None) -> None:
        """Start storing ``pending``; ack ``batch`` once it is committed."""
        await self._barrier()
        self._inflight = asyncio.create_task(self._store_and_ack(pending, batch), name="hub-ingest-store")

    async def _store_and_ack(self, pending: _Pending, batch: list[Incoming] | None) -> None:
        try:
            await self._store(pending)
        except Exception:
            # Not acked: the broker redelivers on the next connection; ingest is idempotent.
            self._counters.inc("errors.store")
            log.exception("storing %d samples failed", pending.samples)
            return
        if batch is not None:
            self._link.ack(batch)

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
                await self._one(gw_name, kind, m.payload, pending)
            except WireError as err:
                count(f"malformed.{kind.value}")
                log.warning("gateway %s: dropped malformed %s on %s: %s", gw_name, kind.value, m.topic, err)
            if pending.samples >= self._s.batch_max_samples:
                await self._launch(pending, None)
                pending = _Pending()
        if pending.rows or pending.events:
            await self._launch(pending, batch)
        else:
            await self._barrier()
            self._link.ack(batch)
        self.batches += 1

    async def _one(self, gw_name: str, kind: Kind, payload: bytes, pending: _Pending) -> None:
        reg = self._registry
        if kind is Kind.DATA:
            data = decode_data(payload)
            gw = await self._gateway(gw_name)
            await self._rows(gw, data, pending)
        elif kind is Kind.EVENT:
            ev = decode_event(payload)
            pending.events.append((await self._gateway(gw_name), ev))
        elif kind is Kind.STATUS:
            st = decode_status(payload)
            await self._barrier()
            await reg.set_status(await self._gateway(gw_name), st.online, st.session, now_ms())
            self._counters.inc("stored.status")
        elif kind is Kind.BIRTH:
            birth = decode_birth(payload)
            await self._barrier()
            await reg.apply_birth(await self._gateway(gw_name), birth, now_ms())
            self._counters.inc("stored.birth")
        elif kind is Kind.ACK:
            ack = decode_ack(payload)
            await self._barrier()
            await record_ack(self._storage, self._counters, await self._gateway(gw_name), ack)
        else:
            self._counters.inc(f"ignored.{kind.value}")

    def _latest_rows(self) -> list[tuple[float | None, int, int, int]]:
        return [(pt.value, pt.ts_ms, pt.quality, pt.id) for pt in self._dirty.values()]  # type: ignore[misc]

    async def flush_latest(self) -> None:
        """Finish the in-flight store, write latest values through to the point table (shutdown)."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._barrier()
        if self._dirty:
            async with self._storage.ingest_tx() as tx:
                await tx.update_latest(self._latest_rows())
            self._dirty.clear()

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

    async def _store(self, p: _Pending) -> None:
        """One transaction: claim message keys, insert what is new, write latest values."""
        seqs: dict[int, list[int]] = {}
        for gw, seq, _ in p.rows:
            seqs.setdefault(gw.id, []).append(seq)
        for gw, ev in p.events:
            seqs.setdefault(gw.id, []).append(ev.seq)
        count = self._counters.inc
        async with self._storage.ingest_tx() as tx:
            fresh = await tx.claim_many(seqs)
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
                self._dirty.clear()
                self._latest_flushed = time.monotonic()
        for gw, seq, _ in p.rows:
            if gw.last_seq is None or seq > gw.last_seq:
                gw.last_seq = seq
        count("stored.data", stored)
        count("stored.samples", len(samples))
        count("duplicate.data", dup)
        count("stored.event", len(events))
        count("duplicate.event", dup_ev)
