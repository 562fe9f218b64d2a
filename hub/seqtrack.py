"""Per-gateway delivery bookkeeping: gaps in ``seq``, replay progress, clock skew.

Pure and synchronous: the ingest writer feeds it what it stored and when, the API reads it;
persisting the gaps is the writer's job (``seq_gap`` table, same transaction as the samples).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# The edge reserves seq numbers in blocks of this size and starts a new session at the next
# block (edge/seqstore.py, docs/wire.md): a jump to a multiple of it right after a session
# change is numbers that were never used, not lost messages.
SEQ_BLOCK = 1000
# Bound on the ranges remembered per gateway; beyond it the oldest (lowest) are forgotten and
# counted, so a gateway sending every other number cannot grow the hub's memory without limit.
MAX_GAPS = 1000
WINDOW_MS = 60_000
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing seqs ``lo..hi`` (inclusive); ``restart`` if it opened at a gateway restart."""

    lo: int
    hi: int
    opened_ms: int
    restart: bool = False

    @property
    def size(self) -> int:
        """How many seqs are missing."""
        return self.hi - self.lo + 1


@dataclass(slots=True)
class _Windowed:
    """A maximum and a count over the last one to two windows (two buckets, O(1))."""

    start_ms: int = 0
    cur_max: int | None = None
    prev_max: int | None = None
    cur_n: int = 0
    prev_n: int = 0

    def _roll(self, now_ms: int, window_ms: int) -> None:
        age = now_ms - self.start_ms
        if age >= window_ms:
            recent = age < 2 * window_ms
            self.prev_max = self.cur_max if recent else None
            self.prev_n = self.cur_n if recent else 0
            self.cur_max, self.cur_n, self.start_ms = None, 0, now_ms

    def add(self, value: int, now_ms: int, window_ms: int) -> None:
        """Record one observation at ``now_ms``."""
        self._roll(now_ms, window_ms)
        self.cur_n += 1
        if self.cur_max is None or value > self.cur_max:
            self.cur_max = value

    def max(self, now_ms: int, window_ms: int) -> int | None:
        """The largest observation of the last one to two windows."""
        self._roll(now_ms, window_ms)
        vals = [v for v in (self.cur_max, self.prev_max) if v is not None]
        return max(vals) if vals else None

    def count(self, now_ms: int, window_ms: int) -> int:
        """Observations in the last one to two windows."""
        self._roll(now_ms, window_ms)
        return self.cur_n + self.prev_n


@dataclass(slots=True)
class SeqTrack:
    """What the hub knows about one gateway's delivery: gaps, replay, clock."""

    gaps: list[Gap] = field(default_factory=list)  # sorted by lo, disjoint
    restart_pending: bool = False  # a new session was seen; its first jump is a block skip
    forgotten: int = 0
    hist_total: int = 0
    hist_newest_ts_ms: int | None = None
    hist_last_rx_ms: int | None = None
    _hist: _Windowed = field(default_factory=_Windowed)
    _ahead: _Windowed = field(default_factory=_Windowed)  # ts - rx of live messages
    skew_alarm: bool = False

    # -- gaps --------------------------------------------------------------------------------

    def advance(self, gaps: list[Gap], last: int | None, seq: int, now_ms: int) -> tuple[int | None, bool]:
        """Account one newly stored ``seq`` in ``gaps`` (a working copy); the new last seq and
        whether ``gaps`` changed. ``last`` is the highest seq stored before it."""
        if last is None or seq == last + 1:
            return seq if last is None or seq > last else last, False
        if seq > last:
            restart = self.restart_pending and seq % SEQ_BLOCK == 0
            self.restart_pending = False
            gaps.append(Gap(last + 1, seq - 1, now_ms, restart))
            if len(gaps) > MAX_GAPS:
                del gaps[0]
                self.forgotten += 1
            return seq, True
        i = bisect.bisect_right(gaps, seq, key=lambda g: g.lo) - 1
        if i < 0 or gaps[i].hi < seq:
            return last, False  # not missing: older than the first seq seen, or forgotten
        g = gaps[i]
        parts = [Gap(lo, hi, g.opened_ms, g.restart)
                 for lo, hi in ((g.lo, seq - 1), (seq + 1, g.hi)) if lo <= hi]
        gaps[i : i + 1] = parts
        return last, True

    def open_gaps(self) -> list[Gap]:
        """Gaps that are not a restart's unused block."""
        return [g for g in self.gaps if not g.restart]

    # -- replay ------------------------------------------------------------------------------

    def historical(self, newest_ts_ms: int | None, rx_ms: int) -> None:
        """A replayed (``historical``) message arrived."""
        self.hist_total += 1
        self.hist_last_rx_ms = rx_ms
        self._hist.add(1, rx_ms, WINDOW_MS)
        if newest_ts_ms is not None and (
            self.hist_newest_ts_ms is None or newest_ts_ms > self.hist_newest_ts_ms
        ):
            self.hist_newest_ts_ms = newest_ts_ms

    def historical_recent(self, now_ms: int) -> int:
        """Replayed messages received in the last one to two minutes."""
        return self._hist.count(now_ms, WINDOW_MS)

    # -- clock -------------------------------------------------------------------------------

    def live(self, ts_ms: int, rx_ms: int, window_ms: int = WINDOW_MS) -> None:
        """A live message stamped ``ts_ms`` by the gateway arrived at ``rx_ms`` (hub clock)."""
        self._ahead.add(ts_ms - rx_ms, rx_ms, window_ms)

    def clock_offset_ms(self, now_ms: int, window_ms: int = WINDOW_MS) -> int | None:
        """How far the gateway's clock is ahead of the hub's (negative: behind).

        ``ts - rx = offset - delay`` for every live message, and delay (sampling to publish,
        broker, queues) is never negative, so the maximum over a window is the offset minus the
        smallest delay seen: robust to a slow or bursty path, which only adds delay.
        """
        return self._ahead.max(now_ms, window_ms)
