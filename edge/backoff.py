"""Exponential backoff with jitter: the one helper every retry loop uses."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delay that doubles from ``initial`` to ``cap`` with +-``jitter`` spread; reset on success."""

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    _current: float = 0.0

    def next(self) -> float:
        """The delay to wait before the next attempt."""
        self._current = self.initial if self._current == 0 else min(self._current * 2, self.cap)
        spread = self._current * self.jitter
        return max(0.0, self._current + random.uniform(-spread, spread))

    def reset(self) -> None:
        """Call after a success: the next failure starts again from ``initial``."""
        self._current = 0.0
