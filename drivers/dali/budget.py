"""The bus budget of one DALI bus: frames per second used against what 1200 bit/s allows.

A 1200 bit/s bus carries about 30 commands/s or 25 queries/s (IEC 62386-101 §8: a 16-bit
forward frame is 19 bits = 15.8 ms, then 13.5-19.5 ms settling before the next forward frame;
a query adds 5.5-10.5 ms settling, an 11-bit backward frame of 9.2 ms and 2.4 ms after it).
An input device's 24-bit event frame (27 bits = 22.5 ms plus settling) costs about a query.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

Kind = Literal["command", "query", "event"]
# Bus time per frame, from the nominal rates above.
COST_S: dict[Kind, float] = {"command": 1 / 30, "query": 1 / 25, "event": 1 / 25}
MAX_PER_S = {kind: round(1 / cost) for kind, cost in COST_S.items()}


class BusBudget:
    """Counts frames over a sliding window and reports the share of bus time they take."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._frames: deque[tuple[float, Kind]] = deque()
        self.totals: dict[Kind, int] = dict.fromkeys(COST_S, 0)

    def record(self, kind: Kind, frames: int = 1) -> None:
        """Count ``frames`` frames of one kind put on (or heard on) the bus now."""
        now = self._clock()
        for _ in range(frames):
            self._frames.append((now, kind))
        self.totals[kind] += frames
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._frames and self._frames[0][0] < now - self.window_s:
            self._frames.popleft()

    def snapshot(self) -> dict[str, float | int]:
        """Frames/s used, frames/s available at this mix, and the share of bus time used (0..1).

        ``frames_per_s``, ``max_frames_per_s`` and ``utilisation`` are the generic keys the edge
        shows for any bus; the rest is DALI detail.
        """
        now = self._clock()
        self._expire(now)
        span = min(self.window_s, max(now - self._started, 1e-3))
        counts: dict[Kind, int] = dict.fromkeys(COST_S, 0)
        for _, kind in self._frames:
            counts[kind] += 1
        frames = sum(counts.values())
        busy_s = sum(counts[k] * COST_S[k] for k in counts)
        # at the current mix of commands and queries; all commands when the bus is idle
        mean_cost = busy_s / frames if frames else COST_S["command"]
        return {
            "window_s": round(span, 1),
            "frames_per_s": round(frames / span, 1),
            "max_frames_per_s": round(1 / mean_cost, 1),
            "utilisation": round(busy_s / span, 3),
            "commands_per_s": round(counts["command"] / span, 1),
            "queries_per_s": round(counts["query"] / span, 1),
            "events_per_s": round(counts["event"] / span, 1),
            "max_commands_per_s": MAX_PER_S["command"],
            "max_queries_per_s": MAX_PER_S["query"],
            "frames_total": sum(self.totals.values()),
        }
