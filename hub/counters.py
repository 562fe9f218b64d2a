"""Named monotonic counters, exposed by ``GET /api/v1/stats``."""

from __future__ import annotations

from collections import Counter


class Counters:
    """A flat set of counters keyed ``<what>.<kind>`` (e.g. ``malformed.data``)."""

    def __init__(self) -> None:
        self._c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""
        self._c[name] += n

    def get(self, name: str) -> int:
        """The value of one counter (0 if never counted)."""
        return self._c[name]

    def snapshot(self) -> dict[str, int]:
        """Every counter, sorted by name."""
        return dict(sorted(self._c.items()))
