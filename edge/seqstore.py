"""The gateway's persistent message counter (``seq``) and session number.

``seq`` must never repeat, even after a power cut: the hub stores each ``(gateway, seq)`` once,
so a reused number would make it discard a new message as a duplicate. We reserve numbers in
blocks and persist the end of the block (write, fsync, rename) before using any of it; a crash
skips at most one block, which the hub sees as a jump at a new session, never as a repeat.
"""

from __future__ import annotations

from pathlib import Path

from .fsutil import write_atomic

BLOCK = 1000


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as err:
        raise RuntimeError(f"{path}: corrupt counter file ({err}); refusing to reuse numbers") from err


def _write_int(path: Path, value: int) -> None:
    write_atomic(path, b"%d\n" % value)


class SeqStore:
    """Hands out increasing ``seq`` numbers that survive restarts; counts sessions."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._seq_path = data_dir / "seq"
        self._reserved = _read_int(self._seq_path)
        self._next = self._reserved
        session_path = data_dir / "session"
        self.session = _read_int(session_path) + 1
        _write_int(session_path, self.session)

    def next(self) -> int:
        """The next unused sequence number."""
        if self._next >= self._reserved:
            self._reserved = self._next + BLOCK
            _write_int(self._seq_path, self._reserved)
        n = self._next
        self._next += 1
        return n

    @property
    def last(self) -> int:
        """The last number handed out (-1 before the first)."""
        return self._next - 1
