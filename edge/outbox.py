"""What waits to go up the uplink: samples (bounded), and events and acks (never dropped).

The uplink takes from here; pollers and the command executor put here. Store-and-forward to
disk replaces the in-memory sample queue in the reliability issue; this is the seam.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from wire import Ack, Sample

from .state import Counters

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event before it gets its ``seq`` (assigned when it is published)."""

    ts_ms: int
    device: str
    kind: str
    active: bool
    severity: str
    point: str = ""
    detail: str = ""


class Outbox:
    """Bounded sample queue (oldest dropped first, counted) plus an unbounded urgent queue."""

    def __init__(self, max_samples: int, counters: Counters) -> None:
        self.max_samples = max_samples
        self.counters = counters
        self.samples: deque[Sample] = deque()
        self.urgent: deque[PendingEvent | Ack] = deque()
        self._ready = asyncio.Event()
        self._warned_full = False

    def add_sample(self, sample: Sample) -> None:
        """Queue a sample; when full, the oldest sample is dropped and counted."""
        if len(self.samples) >= self.max_samples:
            self.samples.popleft()
            self.counters.samples_dropped += 1
            if not self._warned_full:
                log.warning(
                    "sample queue full (%d): dropping oldest samples until the uplink drains it",
                    self.max_samples,
                )
                self._warned_full = True
        elif self._warned_full and len(self.samples) < self.max_samples // 2:
            self._warned_full = False
        self.samples.append(sample)
        self._ready.set()

    def add_urgent(self, item: PendingEvent | Ack) -> None:
        """Queue an event or an ack; these go before samples and are never dropped."""
        self.urgent.append(item)
        self._ready.set()

    async def wait(self) -> None:
        """Wait until something is queued."""
        while not self.samples and not self.urgent:
            self._ready.clear()
            await self._ready.wait()

    async def wait_more(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for anything new; False on timeout."""
        self._ready.clear()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.samples) + len(self.urgent)
