"""What goes up the uplink: producers add samples, events and acks here; the buffer writer
gives each data and event message its ``seq`` and writes it to the on-disk buffer
(:mod:`edge.buffer`) before the uplink may send it.

Samples wait at most ``publish.max_delay_ms`` (or until ``publish.max_batch`` of them) in
memory; events and acks are written at once. If the writer cannot keep up, at most
``publish.queue_max`` samples wait in memory (oldest dropped first, counted).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wire
from wire import Ack, Kind, Sample

from .buffer import DiskBuffer
from .state import Counters, now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event before it gets its ``seq`` (assigned when it is written to the buffer)."""

    ts_ms: int
    device: str
    kind: str
    active: bool
    severity: str
    point: str = ""
    detail: str = ""


class Outbox:
    """Producer side: ``add_sample`` / ``add_urgent``; :meth:`run_writer` moves them to the buffer."""

    def __init__(
        self,
        max_samples: int,
        counters: Counters,
        *,
        buffer: DiskBuffer | None = None,
        next_seq: Callable[[], int] | None = None,
        max_batch: int = 100,
        max_delay_ms: int = 200,
        gateway_id: str = "",
    ) -> None:
        self.max_samples = max_samples
        self.counters = counters
        if buffer is None:
            buffer = DiskBuffer(Path(":memory:"), max_bytes=1 << 30, max_age_s=7 * 86400)
        self.buffer = buffer
        self.next_seq = next_seq or itertools.count().__next__
        self.max_batch = max_batch
        self.max_delay_ms = max_delay_ms
        self.gateway_id = gateway_id
        self.samples: deque[Sample] = deque()
        self.urgent: deque[PendingEvent | Ack] = deque()
        self._ready = asyncio.Event()
        self.stored = asyncio.Event()  # set whenever new messages are in the buffer
        self._first_at = 0.0  # monotonic time the oldest waiting sample arrived
        self._warned_full = False

    def add_sample(self, sample: Sample) -> None:
        """Queue a sample; when full, the oldest waiting sample is dropped and counted."""
        if not self.samples:
            self._first_at = time.monotonic()
            self._ready.set()
        if len(self.samples) >= self.max_samples:
            self.samples.popleft()
            self.counters.samples_dropped += 1
            if not self._warned_full:
                log.warning("sample queue full (%d): the buffer writer is not keeping up", self.max_samples)
                self._warned_full = True
        elif self._warned_full and len(self.samples) < self.max_samples // 2:
            self._warned_full = False
        self.samples.append(sample)
        if len(self.samples) >= self.max_batch:
            self._ready.set()

    def add_urgent(self, item: PendingEvent | Ack) -> None:
        """Queue an event or an ack: written to the buffer at once, sent before samples."""
        self.urgent.append(item)
        self._ready.set()

    def gateway_event(
        self, kind: str, detail: str, *, active: bool = True, severity: str = "warning"
    ) -> None:
        """An event about the gateway itself (``buffer_overflow``, ``buffer_error``)."""
        self.add_urgent(PendingEvent(now_ms(), self.gateway_id, kind, active, severity, "", detail))

    # -- the writer -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Number, encode and store everything waiting (one transaction); returns messages written."""
        items: list[tuple[Kind, int, int, int, bytes]] = []
        while self.urgent:
            item = self.urgent.popleft()
            if isinstance(item, Ack):
                items.append((Kind.ACK, -1, item.ts_ms, 1, wire.encode_ack(item)))
                continue
            ev = wire.Event(
                seq=self.next_seq(),
                ts_ms=item.ts_ms,
                device=item.device,
                kind=item.kind,
                active=item.active,
                severity=item.severity,
                point=item.point,
                detail=item.detail,
            )
            items.append((Kind.EVENT, ev.seq, ev.ts_ms, 1, wire.encode_event(ev)))
        while self.samples:
            n = min(len(self.samples), self.max_batch)
            popleft = self.samples.popleft
            batch = [popleft() for _ in range(n)]
            seq = self.next_seq()
            items.append(
                (Kind.DATA, seq, min(s[2] for s in batch), n, wire.encode_data(wire.Data(seq, batch)))
            )
        if items:
            self.buffer.append(items)
            self.stored.set()
        return len(items)

    async def run_writer(self) -> None:
        """Forever: write urgent items at once, samples when a batch is full or max_delay_ms old."""
        delay = self.max_delay_ms / 1000
        try:
            while True:
                if not self.urgent and self.samples:
                    wait = self._first_at + delay - time.monotonic()
                    if wait > 0 and len(self.samples) < self.max_batch:
                        self._ready.clear()
                        try:
                            async with asyncio.timeout(wait):
                                await self._ready.wait()
                        except TimeoutError:
                            pass
                        continue
                if self.urgent or self.samples:
                    self.flush()
                    continue
                self._ready.clear()
                try:
                    async with asyncio.timeout(max(delay, 0.05)):
                        await self._ready.wait()
                except TimeoutError:
                    pass
        finally:
            # Cancelled (SIGTERM) or crashed: what waits in memory goes to disk first.
            self.flush()

    def __len__(self) -> int:
        return len(self.samples) + len(self.urgent) + len(self.buffer)
