"""Edge store-and-forward buffer: write cost per sample, and replay rate after an outage vs live.

**Write cost.** Samples go through the real ``Outbox`` (numbering, msgpack encoding, batches of
``publish.max_batch`` = 100) into each store, then every message is acknowledged (deleted) as
after its PUBACK. Stores: the baseline is an in-memory append (a deque: what the edge did
before it had a disk buffer); the chosen SQLite WAL buffer (``edge/buffer.py``) with
``sync: full`` (fsync per commit) and ``sync: normal``; and the alternative that was measured,
an append-only segment log (length-prefixed records appended to a file, fsync per batch, acks
as a cursor file rewritten per batch). CPU and wall time per sample, as a ratio to the baseline.

**Replay.** The real ``Edge`` (no buses: synthetic samples at a live rate through
``Outbox.add_sample``) publishes to a private Mosquitto; this process plays the hub (retained
``cn/v1/hub/status``) and counts what arrives. The hub goes offline for a while (a backlog builds
on disk), comes back: replay rate = backlog samples / time to drain it, live data still flowing;
ratio to the live rate. Run with the default ``buffer.replay_rate`` (100 messages/s), 20 and unlimited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import _common
import aiomqtt
import msgpack

import wire
from edge.buffer import DiskBuffer
from edge.outbox import Outbox
from edge.state import Counters

GW = "bench-buf"


# -- write cost --------------------------------------------------------------------------------


class MemoryStore:
    """Baseline: encoded messages kept in a deque (no durability)."""

    def __init__(self) -> None:
        self.q: deque[tuple[int, bytes]] = deque()
        self.n = 0

    def append(self, items: list[tuple[Any, int, int, int, bytes]]) -> None:
        for it in items:
            self.n += 1
            self.q.append((self.n, it[4]))

    def ack_all(self) -> None:
        self.q.clear()

    def __len__(self) -> int:
        return len(self.q)


class SegmentLog:
    """Alternative: append-only segment file (length-prefixed), fsync per batch; acks as a cursor."""

    def __init__(self, d: Path, fsync: bool) -> None:
        self.f = open(d / "segment.log", "ab")
        self.cursor = d / "cursor"
        self.fsync = fsync
        self.written = 0

    def append(self, items: list[tuple[Any, int, int, int, bytes]]) -> None:
        for it in items:
            p = it[4]
            self.f.write(struct.pack(">I", len(p)) + p)
            self.written += 1
        self.f.flush()
        if self.fsync:
            os.fsync(self.f.fileno())

    def ack_all(self) -> None:
        tmp = self.cursor.with_suffix(".tmp")
        tmp.write_text(str(self.written))
        os.replace(tmp, self.cursor)

    def __len__(self) -> int:
        return 0


class SqliteStore:
    """The chosen store: ``edge.buffer.DiskBuffer``; acks delete what was fetched."""

    def __init__(self, d: Path, sync: str) -> None:
        self.b = DiskBuffer(d / "buffer.db", max_bytes=1 << 34, max_age_s=86400 * 30, sync=sync)

    def append(self, items: list[tuple[Any, int, int, int, bytes]]) -> None:
        self.b.append(items)

    def ack_all(self) -> None:
        after = 0
        while batch := self.b.fetch(after, limit=256):
            self.b.ack([r.id for r in batch])
            after = batch[-1].id

    def __len__(self) -> int:
        return len(self.b)


def write_cost(store: Any, samples: int) -> dict[str, float]:
    """Push ``samples`` through an Outbox into ``store``; ack every 10 batches."""
    box = Outbox(samples + 1, Counters(), buffer=store, max_batch=100)
    now = int(time.time() * 1000)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(samples):
        box.add_sample((f"L-{i % 200:04d}", "power", now + i, float(i % 1000) / 10, "good"))
        if len(box.samples) >= 100:
            box.flush()
            if i % 1000 == 999:
                store.ack_all()
    box.flush()
    store.ack_all()
    return {"cpu_us": (time.process_time() - c0) / samples * 1e6, "wall_us": (time.perf_counter() - t0) / samples * 1e6}


def bench_writes(samples: int) -> list[dict[str, Any]]:
    rows = []
    for name, make in (
        ("in-memory deque (baseline)", lambda d: MemoryStore()),
        ("SQLite WAL, sync full (default)", lambda d: SqliteStore(d, "full")),
        ("SQLite WAL, sync normal", lambda d: SqliteStore(d, "normal")),
        ("segment log, fsync per batch", lambda d: SegmentLog(d, True)),
        ("segment log, no fsync", lambda d: SegmentLog(d, False)),
    ):
        with tempfile.TemporaryDirectory(dir=os.environ.get("CN_BENCH_DIR")) as d:
            rows.append({"store": name, **write_cost(make(Path(d)), samples)})
    base = rows[0]
    for r in rows:
        r["x_cpu"] = r["cpu_us"] / base["cpu_us"]
        r["x_wall"] = r["wall_us"] / base["wall_us"]
    return rows


def bytes_per_sample(samples: int = 20_000) -> float:
    """Payload bytes per sample as stored (200 lamps' ids, realistic values)."""
    with tempfile.TemporaryDirectory() as d:
        s = SqliteStore(Path(d), "normal")
        box = Outbox(samples + 1, Counters(), buffer=s.b, max_batch=100)
        now = int(time.time() * 1000)
        for i in range(samples):
            box.add_sample((f"L-{i % 200:04d}", ("power", "level", "energy", "lamp_failure")[i % 4],
                            now + i * 50, round(float(i % 1000) / 10, 1), "good"))
        box.flush()
        s.b.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return (Path(d) / "buffer.db").stat().st_size / samples  # the file: payload + SQLite overhead


# -- replay ------------------------------------------------------------------------------------


async def replay_run(broker: _common.Broker, work: Path, live_rate: float, outage_s: float,
                     replay_rate: float) -> dict[str, Any]:
    from edge import config as edge_config
    from edge.daemon import Edge

    cfg = work / f"edge-{replay_rate:g}.yaml"
    cfg.write_text(
        f"gateway: {{id: {GW}}}\nmqtt: {{host: 127.0.0.1, port: {broker.port}}}\n"
        f"data_dir: {work / f'edge-{replay_rate:g}'}\ncontrol_socket: {work / f'e{replay_rate:g}.sock'}\n"
        f"buffer: {{replay_rate: {replay_rate}}}\n"
    )
    topics = wire.Topics()
    counts = {"live": 0, "hist": 0}

    async def hub_status(online: bool) -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-hub-status") as c:
            await c.publish(topics.hub_status(), wire.encode_status(wire.Status(online=online)), qos=1, retain=True)

    await hub_status(True)
    edge = Edge(edge_config.load(cfg))
    task = asyncio.create_task(edge.run())
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        t0 = time.perf_counter()
        while not stop.is_set():
            due = int((time.perf_counter() - t0) * live_rate)
            now = int(time.time() * 1000)
            while n < due:
                edge.outbox.add_sample((f"L-{n % 200:04d}", "power", now, float(n % 1000), "good"))
                n += 1
            await asyncio.sleep(0.01)

    last_hist = [0.0]

    async def count(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            body = msgpack.unpackb(m.payload)  # type: ignore[arg-type]
            counts["hist" if body.get("hist") else "live"] += len(body.get("samples", []))
            if body.get("hist"):
                last_hist[0] = time.perf_counter()

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-count") as sub:
        await sub.subscribe(topics.gateway(GW, wire.Kind.DATA), qos=1)
        counter = asyncio.create_task(count(sub))
        producer = asyncio.create_task(produce())
        await asyncio.sleep(2)
        await hub_status(False)
        await asyncio.sleep(outage_s)
        backlog = edge.buffer.counts()["samples"] + len(edge.outbox.samples)
        live0 = counts["live"]
        t0 = time.perf_counter()
        await hub_status(True)
        # Drained when no historical message came for 2 s (the backlog estimate above also holds
        # the last live message, sent but not yet deleted, so it is not the stop condition).
        while not counts["hist"] or time.perf_counter() - last_hist[0] < 2:
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > 900:
                break
        drain = last_hist[0] - t0
        live_during = counts["live"] - live0
        stop.set()
        await producer
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    edge.buffer.close()
    replay = counts["hist"] / drain
    return {"replay_rate_setting": replay_rate, "live_rate": live_rate, "outage_s": outage_s,
            "backlog_samples": backlog, "replayed_samples": counts["hist"], "drain_s": drain,
            "replay_samples_per_s": replay, "x_live": replay / live_rate,
            "live_samples_during_replay": live_during, "live_rate_during_replay": live_during / drain}


async def bench_replay(quick: bool) -> list[dict[str, Any]]:
    live_rate = 200.0  # samples/s: a 200-lamp cabinet at 1 sample per lamp per second (a busy one)
    outage = 10.0 if quick else 60.0
    rows = []
    with tempfile.TemporaryDirectory() as d, _common.Broker(Path(d) / "broker") as broker:
        for rate in (100.0, 20.0, 0.0):
            rows.append(await replay_run(broker, Path(d), live_rate, outage, rate))
    return rows


def main() -> None:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    samples = 20_000 if args.quick else 200_000
    writes = bench_writes(samples)
    print(_common.table(["store", "CPU us/sample", "wall us/sample", "x CPU", "x wall"],
                        [[r["store"], r["cpu_us"], r["wall_us"], r["x_cpu"], r["x_wall"]] for r in writes]))
    bps = bytes_per_sample()
    print(f"bytes per sample on disk (SQLite, batches of 100): {bps:.1f}")
    replays = asyncio.run(bench_replay(args.quick))
    print(_common.table(
        ["replay_rate", "live samples/s", "outage s", "backlog", "drain s", "replay samples/s", "x live",
         "live samples/s during replay"],
        [[r["replay_rate_setting"] or "unlimited", r["live_rate"], r["outage_s"], r["backlog_samples"],
          r["drain_s"], r["replay_samples_per_s"], r["x_live"], r["live_rate_during_replay"]] for r in replays]))
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        print("wrote", _common.save("edge_buffer", {"quick": args.quick, "samples": samples, "writes": writes,
                                                    "bytes_per_sample": bps, "replay": replays,
                                                    "loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
