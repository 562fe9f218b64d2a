"""The store-and-forward buffer: every message is on disk before it is sent, deleted after PUBACK.

SQLite in WAL mode, one transaction per batch of messages (measured against an append-only
segment log in ``bench/edge_buffer.py``: docs/performance.md section 8). A message is a row
``(id, kind, seq, created_ms, ts_ms, n, payload)``: ``id`` orders the rows (oldest first),
``payload`` is the encoded wire message *without* the historical flag (added at replay).

Bounds: ``max_bytes`` of payload and ``max_age_h``; beyond them the oldest rows are dropped,
counted in a persistent ``drops`` row and reported as a ``buffer_overflow`` event. A write the
disk refuses (full, read-only, I/O error) keeps the messages in memory (bounded, oldest
dropped and counted), reports ``buffer_error`` once, and retries the disk every few seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wire import Kind

log = logging.getLogger(__name__)

MEM_ID_BASE = 1 << 53  # ids of records held in memory sort after every disk row
RETRY_DISK_S = 5.0
AGE_CHECK_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS msg (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    k INTEGER PRIMARY KEY CHECK (k = 0),
    messages INTEGER NOT NULL, samples INTEGER NOT NULL, events INTEGER NOT NULL,
    first_ts INTEGER, last_ts INTEGER, first_seq INTEGER, last_seq INTEGER
);
CREATE TABLE IF NOT EXISTS cmd_seen (id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL);
"""

CMD_SEEN_MAX = 10_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Record:
    """One buffered message. ``seq`` is -1 for an ack (acks carry the command id instead)."""

    id: int
    kind: Kind
    seq: int
    created_ms: int
    ts_ms: int
    n: int
    payload: bytes


@dataclass
class Drops:
    """What the bounds dropped since it was last reported."""

    messages: int = 0
    samples: int = 0
    events: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None

    def add(self, kind: str, seq: int, ts_ms: int, n: int) -> None:
        """Count one dropped message."""
        self.messages += 1
        if kind == Kind.DATA.value:
            self.samples += n
        elif kind == Kind.EVENT.value:
            self.events += 1
        self.first_ts = ts_ms if self.first_ts is None else min(self.first_ts, ts_ms)
        self.last_ts = ts_ms if self.last_ts is None else max(self.last_ts, ts_ms)
        if seq >= 0:
            self.first_seq = seq if self.first_seq is None else min(self.first_seq, seq)
            self.last_seq = seq if self.last_seq is None else max(self.last_seq, seq)

    def merge(self, other: Drops) -> None:
        """Add another tally to this one."""
        self.messages += other.messages
        self.samples += other.samples
        self.events += other.events
        for name, pick in (("first_ts", min), ("last_ts", max), ("first_seq", min), ("last_seq", max)):
            a, b = getattr(self, name), getattr(other, name)
            setattr(self, name, b if a is None else a if b is None else pick(a, b))

    def describe(self) -> str:
        """One line for an event detail or a log."""
        seqs = f", seq {self.first_seq}..{self.last_seq}" if self.first_seq is not None else ""
        return (
            f"dropped {self.messages} buffered messages ({self.samples} samples, {self.events} events)"
            f"{seqs}, sample times {self.first_ts}..{self.last_ts} ms"
        )


@dataclass
class BufferStats:
    """Totals since the daemon started (the drops total includes earlier runs' unreported drops)."""

    appended: int = 0
    acked: int = 0
    dropped_messages: int = 0
    dropped_samples: int = 0
    write_errors: int = 0
    last_error: str = ""
    pending_drops: Drops = field(default_factory=Drops)


class DiskBuffer:
    """Rows of encoded messages in a SQLite WAL database, bounded by bytes and age."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        sync: str = "full",
        memory_max_bytes: int = 8 * 1024 * 1024,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self.memory_max_bytes = memory_max_bytes
        self.on_error = on_error
        self.stats = BufferStats()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM msg").fetchone()
        self.disk_count, self.disk_bytes = int(row[0]), int(row[1])
        d = self.db.execute(
            "SELECT messages, samples, events, first_ts, last_ts, first_seq, last_seq FROM drops"
        ).fetchone()
        if d is not None:
            self.stats.pending_drops = Drops(*d)
        self._mem: deque[Record] = deque()
        self.mem_bytes = 0
        self._mem_next = MEM_ID_BASE
        self.disk_ok = True
        self.generation = 0  # bumped when memory-held records move to disk (they get new ids)
        self._retry_at = 0.0
        self._age_check_at = 0.0

    # -- writing --------------------------------------------------------------------------------

    def append(self, items: Iterable[tuple[Kind, int, int, int, bytes]], now_ms: int | None = None) -> None:
        """Store messages ``(kind, seq, ts_ms, n, payload)`` in one transaction (memory if the disk fails)."""
        now = _now_ms() if now_ms is None else now_ms
        rows = [(k.value, seq, now, ts, n, p) for k, seq, ts, n, p in items]
        if not rows:
            return
        self.stats.appended += len(rows)
        if self.disk_ok or time.monotonic() >= self._retry_at:
            try:
                self._write(rows)
            except (sqlite3.Error, OSError) as err:
                self._disk_failed(err)
            else:
                if not self.disk_ok:
                    self.disk_ok = True
                    log.warning(
                        "buffer %s writable again; %d messages moved from memory", self.path, len(rows)
                    )
                self._enforce(now)
                return
        for kind, seq, created, ts, n, payload in rows:
            self._mem.append(Record(self._mem_next, Kind(kind), seq, created, ts, n, payload))
            self._mem_next += 1
            self.mem_bytes += len(payload)
        if self.mem_bytes > self.memory_max_bytes:
            self._shrink_memory()

    def _shrink_memory(self) -> None:
        """Drop the oldest data messages held in memory (events and acks only if nothing else is)."""
        kept: deque[Record] = deque()
        gone: list[tuple[str, int, int, int, int]] = []
        excess = self.mem_bytes - self.memory_max_bytes
        for r in self._mem:
            if excess > 0 and r.kind is Kind.DATA:
                gone.append((r.kind.value, r.seq, r.ts_ms, r.n, len(r.payload)))
                excess -= len(r.payload)
            else:
                kept.append(r)
        while excess > 0 and kept:
            r = kept.popleft()
            gone.append((r.kind.value, r.seq, r.ts_ms, r.n, len(r.payload)))
            excess -= len(r.payload)
        self._mem = kept
        self.mem_bytes = sum(len(r.payload) for r in kept)
        self._dropped(gone)

    def _write(self, rows: list[tuple[str, int, int, int, int, bytes]]) -> None:
        """Insert the memory-held records (if any) then ``rows``, in one transaction."""
        held = [(r.kind.value, r.seq, r.created_ms, r.ts_ms, r.n, r.payload) for r in self._mem]
        all_rows = held + rows
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT INTO msg (kind, seq, created_ms, ts_ms, n, payload) VALUES (?, ?, ?, ?, ?, ?)",
                all_rows,
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK") if self.db.in_transaction else None
            raise
        self.disk_count += len(all_rows)
        self.disk_bytes += sum(len(r[5]) for r in all_rows)
        if held:
            self.generation += 1
            if self.stats.pending_drops.messages:
                self._save_drops(self.stats.pending_drops)
        self._mem.clear()
        self.mem_bytes = 0

    def _disk_failed(self, err: BaseException) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"{type(err).__name__}: {err}"
        self._retry_at = time.monotonic() + RETRY_DISK_S
        if self.disk_ok:
            self.disk_ok = False
            log.error(
                "buffer %s: write failed (%s); holding up to %d bytes in memory, retrying every %.0fs",
                self.path,
                self.stats.last_error,
                self.memory_max_bytes,
                RETRY_DISK_S,
            )
            if self.on_error is not None:
                self.on_error(self.stats.last_error)

    # -- bounds ---------------------------------------------------------------------------------

    def _enforce(self, now_ms: int) -> None:
        try:
            if self.disk_bytes > self.max_bytes:
                self._drop_oldest(int(self.max_bytes * 0.95))
            if time.monotonic() >= self._age_check_at:
                self._age_check_at = time.monotonic() + AGE_CHECK_S
                self._drop_older_than(now_ms - self.max_age_ms)
        except sqlite3.Error as err:
            log.warning("buffer %s: enforcing bounds failed: %s", self.path, err)

    def enforce_age(self, now_ms: int | None = None) -> None:
        """Drop what is older than ``max_age_h`` now (also done every minute on append)."""
        self._drop_older_than((_now_ms() if now_ms is None else now_ms) - self.max_age_ms)

    def _drop_oldest(self, target_bytes: int) -> None:
        gone: list[tuple[str, int, int, int, int]] = []
        total = self.disk_bytes
        last_id = 0
        # Oldest samples first; events and acks only when no sample is left to drop.
        for data_only in (True, False):
            sql = "SELECT id, kind, seq, ts_ms, n, length(payload) FROM msg"
            sql += " WHERE kind = 'data' AND id > ? ORDER BY id" if data_only else " WHERE id > ? ORDER BY id"
            cutoff_id = 0
            picked: list[tuple[str, int, int, int, int]] = []
            for row in self.db.execute(sql, (last_id,)):
                if total <= target_bytes:
                    break
                cutoff_id = row[0]
                picked.append(row[1:])
                total -= row[5]
            if picked:
                kind_filter = "kind = 'data' AND " if data_only else ""
                self._delete_dropped(f"DELETE FROM msg WHERE {kind_filter}id <= ?", (cutoff_id,), picked)
                gone += picked
            if total <= target_bytes:
                break

    def _drop_older_than(self, cutoff_ms: int) -> None:
        gone = self.db.execute(
            "SELECT kind, seq, ts_ms, n, length(payload) FROM msg WHERE created_ms < ?", (cutoff_ms,)
        ).fetchall()
        if gone:
            self._delete_dropped("DELETE FROM msg WHERE created_ms < ?", (cutoff_ms,), gone)

    def _delete_dropped(self, sql: str, args: tuple[int], gone: list[tuple[str, int, int, int, int]]) -> None:
        tally = Drops()
        for kind, seq, ts, n, _size in gone:
            tally.add(kind, seq, ts, n)
        pending = Drops(**vars(self.stats.pending_drops))
        pending.merge(tally)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(sql, args)
            self._save_drops(pending)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.disk_count -= len(gone)
        self.disk_bytes -= sum(g[4] for g in gone)
        self._count_drops(tally)
        self.stats.pending_drops = pending
        log.warning("buffer %s full or too old: %s", self.path, tally.describe())

    def _dropped(self, gone: list[tuple[str, int, int, int, int]]) -> None:
        """Records dropped from memory (the disk is failing: the tally is persisted when it can be)."""
        tally = Drops()
        for kind, seq, ts, n, _size in gone:
            tally.add(kind, seq, ts, n)
        self._count_drops(tally)
        self.stats.pending_drops.merge(tally)

    def _count_drops(self, tally: Drops) -> None:
        self.stats.dropped_messages += tally.messages
        self.stats.dropped_samples += tally.samples

    def _save_drops(self, d: Drops) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO drops VALUES (0, ?, ?, ?, ?, ?, ?, ?)",
            (d.messages, d.samples, d.events, d.first_ts, d.last_ts, d.first_seq, d.last_seq),
        )

    def take_drops(self) -> Drops | None:
        """The drops not yet reported (and forget them), or None when there are none."""
        d = self.stats.pending_drops
        if d.messages == 0:
            return None
        self.stats.pending_drops = Drops()
        try:
            self.db.execute("DELETE FROM drops")
        except sqlite3.Error as err:
            log.warning("buffer %s: clearing the drop tally failed: %s", self.path, err)
        return d

    # -- reading and acknowledging --------------------------------------------------------------

    def fetch(self, after_id: int, upto_id: int | None = None, limit: int = 64) -> list[Record]:
        """Records with ``after_id < id (<= upto_id)``, oldest first: disk rows, then memory-held."""
        out: list[Record] = []
        if after_id < MEM_ID_BASE:
            try:
                if upto_id is None:
                    cur = self.db.execute(
                        "SELECT id, kind, seq, created_ms, ts_ms, n, payload FROM msg WHERE id > ? "
                        "ORDER BY id LIMIT ?",
                        (after_id, limit),
                    )
                else:
                    cur = self.db.execute(
                        "SELECT id, kind, seq, created_ms, ts_ms, n, payload FROM msg "
                        "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                        (after_id, min(upto_id, MEM_ID_BASE - 1), limit),
                    )
                out = [Record(r[0], Kind(r[1]), *r[2:]) for r in cur]
            except sqlite3.Error as err:
                log.warning("buffer %s: read failed: %s", self.path, err)
        if len(out) < limit and (upto_id is None or upto_id >= MEM_ID_BASE):
            for r in self._mem:
                if r.id > after_id and (upto_id is None or r.id <= upto_id):
                    out.append(r)
                    if len(out) >= limit:
                        break
        return out

    def last_id(self) -> int:
        """The newest record's id (0 when empty)."""
        if self._mem:
            return self._mem[-1].id
        try:
            row = self.db.execute("SELECT max(id) FROM msg").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0] or 0)

    def ack(self, ids: Iterable[int]) -> int:
        """Delete records the broker confirmed; returns how many existed."""
        disk = [i for i in ids if i < MEM_ID_BASE]
        mem = {i for i in ids if i >= MEM_ID_BASE}
        done = 0
        if mem:
            kept: deque[Record] = deque()
            for r in self._mem:
                if r.id in mem:
                    self.mem_bytes -= len(r.payload)
                    done += 1
                else:
                    kept.append(r)
            self._mem = kept
        if disk:
            try:
                self.db.execute("BEGIN")
                gone = 0
                size = 0
                for i in disk:
                    row = self.db.execute(
                        "DELETE FROM msg WHERE id = ? RETURNING length(payload)", (i,)
                    ).fetchone()
                    if row is not None:
                        gone += 1
                        size += row[0]
                self.db.execute("COMMIT")
            except sqlite3.Error as err:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                log.warning(
                    "buffer %s: deleting sent messages failed (they will be resent): %s", self.path, err
                )
            else:
                self.disk_count -= gone
                self.disk_bytes -= size
                done += gone
        self.stats.acked += done
        return done

    # -- commands seen --------------------------------------------------------------------------

    def command_seen(self, cmd_id: str) -> bool:
        """True if a command with this id was handled before (this run or an earlier one)."""
        try:
            return self.db.execute("SELECT 1 FROM cmd_seen WHERE id = ?", (cmd_id,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def remember_command(self, cmd_id: str) -> None:
        """Record a command id (the newest CMD_SEEN_MAX are kept)."""
        try:
            self.db.execute("INSERT OR IGNORE INTO cmd_seen VALUES (?, ?)", (cmd_id, _now_ms()))
            if self.db.execute("SELECT count(*) FROM cmd_seen").fetchone()[0] > CMD_SEEN_MAX + 1000:
                self.db.execute(
                    "DELETE FROM cmd_seen WHERE id NOT IN "
                    "(SELECT id FROM cmd_seen ORDER BY ts_ms DESC LIMIT ?)",
                    (CMD_SEEN_MAX,),
                )
        except sqlite3.Error as err:
            log.warning("buffer %s: remembering command %s failed: %s", self.path, cmd_id, err)

    # -- inspection -----------------------------------------------------------------------------

    def oldest_ms(self) -> int | None:
        """Creation time of the oldest buffered message."""
        try:
            row = self.db.execute("SELECT min(created_ms) FROM msg").fetchone()
        except sqlite3.Error:
            row = (None,)
        times = [t for t in (row[0], self._mem[0].created_ms if self._mem else None) if t is not None]
        return min(times) if times else None

    def counts(self) -> dict[str, int]:
        """Buffered messages and samples, on disk and in memory."""
        try:
            row = self.db.execute(
                "SELECT coalesce(sum(CASE WHEN kind = 'data' THEN n ELSE 0 END), 0), "
                "coalesce(sum(kind = 'event'), 0), coalesce(sum(kind = 'ack'), 0) FROM msg"
            ).fetchone()
        except sqlite3.Error:
            row = (0, 0, 0)
        mem_samples = sum(r.n for r in self._mem if r.kind is Kind.DATA)
        return {
            "messages": self.disk_count + len(self._mem),
            "samples": int(row[0]) + mem_samples,
            "events": int(row[1]) + sum(1 for r in self._mem if r.kind is Kind.EVENT),
            "acks": int(row[2]) + sum(1 for r in self._mem if r.kind is Kind.ACK),
            "bytes": self.disk_bytes + self.mem_bytes,
            "memory_messages": len(self._mem),
            "memory_bytes": self.mem_bytes,
        }

    def __len__(self) -> int:
        return self.disk_count + len(self._mem)

    def close(self) -> None:
        """Close the database (the rows stay for the next start)."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass
