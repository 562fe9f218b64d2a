"""The edge's store-and-forward buffer on a real SQLite file: nothing unsent is lost, across any
interleaving of writes, sends, PUBACKs and restarts; the bounds drop oldest first and count it;
a disk that refuses writes keeps messages in memory and loses nothing it can hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from edge.buffer import DiskBuffer
from edge.outbox import Outbox, PendingEvent
from edge.state import Counters
from edge.uplink import historical
from wire import Ack, AckStatus, Kind


def _open(path: Path, **kw: int) -> DiskBuffer:
    return DiskBuffer(path, max_bytes=kw.get("max_bytes", 1 << 30), max_age_s=kw.get("max_age_s", 86400))


def _msg(seq: int, n: int = 3) -> tuple[Kind, int, int, int, bytes]:
    samples = [(f"L-{i}", "power", 1_700_000_000_000 + seq, float(seq), "good") for i in range(n)]
    return Kind.DATA, seq, samples[0][2], n, wire.encode_data(wire.Data(seq, samples))


def _all(buf: DiskBuffer) -> list[int]:
    seqs, after = [], 0
    while batch := buf.fetch(after):
        seqs += [r.seq for r in batch]
        after = batch[-1].id
    return seqs


# One step of the edge's life: write k messages, send (fetch) and PUBACK some of what was sent,
# send without PUBACK (connection lost), or restart (kill -9 / power cycle: reopen the file).
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("send_ack"), st.integers(1, 8)),
        st.tuples(st.just("send_lost"), st.integers(1, 8)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_interleaving_of_append_ack_restart_loses_nothing(tmp_path_factory: pytest.TempPathFactory, ops) -> None:
    path = tmp_path_factory.mktemp("buf") / "buffer.db"
    buf = _open(path)
    seq = 0
    unacked: list[int] = []  # what the hub has not confirmed, oldest first: must all be in the buffer
    confirmed: set[int] = set()
    for op, k in ops:
        if op == "append":
            buf.append([_msg(seq + i) for i in range(k)])
            unacked += range(seq, seq + k)
            seq += k
        elif op in ("send_ack", "send_lost"):
            sent = buf.fetch(0, limit=k)
            if op == "send_ack":
                buf.ack([r.id for r in sent])
                confirmed |= {r.seq for r in sent}
                unacked = [s for s in unacked if s not in confirmed]
        else:
            buf.close()
            buf = _open(path)
        assert _all(buf) == unacked, f"after {op} {k}"
        assert len(buf) == len(unacked)
    assert not confirmed & set(_all(buf)), "a PUBACKed message is still queued for sending"
    buf.close()


def test_size_bound_drops_oldest_first_counts_and_persists_the_tally(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    one = len(_msg(0, 20)[4])
    buf = _open(path, max_bytes=max(64 * 1024, one * 100))
    total = 400
    for s in range(total):
        buf.append([_msg(s, 20)])
    kept = _all(buf)
    assert kept == list(range(total - len(kept), total)), "not the newest that were kept"
    dropped = total - len(kept)
    assert dropped > 0
    assert buf.disk_bytes <= buf.max_bytes
    assert buf.stats.dropped_messages == dropped and buf.stats.dropped_samples == 20 * dropped
    buf.close()
    # The unreported drops survive a restart, then are reported once.
    buf = _open(path, max_bytes=max(64 * 1024, one * 100))
    d = buf.take_drops()
    assert d is not None and d.messages == dropped and (d.first_seq, d.last_seq) == (0, dropped - 1)
    assert "dropped" in d.describe() and f"seq 0..{dropped - 1}" in d.describe()
    assert buf.take_drops() is None
    buf.close()
    assert _open(path).take_drops() is None


def test_age_bound_drops_what_is_older(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.db", max_age_s=3600)
    buf.append([_msg(0)], now_ms=1_000)
    buf.append([_msg(1)], now_ms=2_000_000_000_000)
    buf.enforce_age(now_ms=2_000_000_000_000)
    assert _all(buf) == [1]
    assert buf.stats.dropped_messages == 1


def test_disk_refusing_writes_holds_in_memory_then_moves_to_disk(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    errors: list[str] = []
    buf = _open(path)
    buf.on_error = errors.append
    buf.append([_msg(0)])
    # A real refusal from SQLite: the same file opened read-only.
    rw = buf.db
    buf.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    buf.append([_msg(1)])
    buf.append([_msg(2)])
    assert not buf.disk_ok and len(errors) == 1, "buffer_error reported once"
    assert "readonly" in errors[0]
    assert _all(buf) == [0, 1, 2], "memory-held messages are sent too"
    # Acking a memory-held message forgets it.
    mem = [r for r in buf.fetch(0) if r.seq == 1]
    buf.ack([mem[0].id])
    buf.db.close()
    buf.db = rw
    buf._retry_at = 0.0
    gen = buf.generation
    buf.append([_msg(3)])
    assert buf.disk_ok and buf.generation == gen + 1
    assert _all(buf) == [0, 2, 3]
    buf.close()
    assert _all(_open(path)) == [0, 2, 3], "moved to disk: survives a restart"


def test_memory_hold_is_bounded_oldest_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = DiskBuffer(path, max_bytes=1 << 30, max_age_s=86400, memory_max_bytes=64 * 1024)
    buf.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    for s in range(3000):
        buf.append([_msg(s, 5)])
    held = _all(buf)
    assert held == list(range(3000 - len(held), 3000))
    assert buf.mem_bytes <= 64 * 1024
    assert buf.stats.dropped_messages == 3000 - len(held)
    assert buf.stats.pending_drops.messages == 3000 - len(held)


def test_command_ids_survive_restart(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.db")
    assert not buf.command_seen("c1")
    buf.remember_command("c1")
    buf.close()
    assert _open(tmp_path / "b.db").command_seen("c1")


async def test_outbox_numbers_events_and_batches_and_writes_before_sending(tmp_path: Path) -> None:
    buf = _open(tmp_path / "b.db")
    seqs = iter(range(100, 200))
    box = Outbox(1000, Counters(), buffer=buf, next_seq=seqs.__next__, max_batch=4, gateway_id="gw")
    for i in range(6):
        box.add_sample(("L-1", "power", 1000 + i, float(i), "good"))
    box.add_urgent(PendingEvent(5, "L-1", "lamp_failure", True, "alarm"))
    box.add_urgent(Ack(id="c1", status=AckStatus.EXPIRED, ts_ms=7))
    assert box.flush() == 4
    recs = buf.fetch(0)
    assert [(r.kind, r.seq, r.n) for r in recs] == [
        (Kind.EVENT, 100, 1),
        (Kind.ACK, -1, 1),
        (Kind.DATA, 101, 4),
        (Kind.DATA, 102, 2),
    ]
    data = wire.decode_data(recs[3].payload)
    assert data.samples[0][2] == 1004 and not data.historical
    # A replayed message keeps its seq and timestamps and is flagged historical.
    replayed = wire.decode_data(historical(recs[3]))
    assert replayed.historical and replayed.seq == 102 and replayed.samples == data.samples
    ev = wire.decode_event(historical(recs[0]))
    assert ev.historical and ev.seq == 100 and ev.ts_ms == 5
    assert historical(recs[1]) == recs[1].payload  # acks are never historical
