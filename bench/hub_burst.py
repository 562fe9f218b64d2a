"""Hub under a reconnect burst: N gateways replaying M messages each at once, vs steady ingest.

The hub runs as its own process (``python -m hub.cli run``, default ingest settings) against a
private Mosquitto (max_inflight_messages = ingest.queue_max). In the same run:

* ``steady``  one live publisher sends S messages (QoS 1, 1000 in flight): the hub's ingest
              rate from the first message stored to the last (the baseline).
* ``burst``   N gateway clients connect at once and each publishes its M ``historical``
              messages with all of them in flight (a replay after an outage). Time from the
              first publish to the last message stored; absorb rate as a ratio to steady.

Memory: the hub's resident set (VmRSS sampled every 50 ms, and the kernel's VmHWM peak) before
and during the burst, and the hub's own queue high-water mark (``/stats``:
``ingest_queue_peak`` against ``ingest_queue_bound``). Correctness: every message stored
exactly once (rows of ``ingested_msg`` and ``sample`` counted in the hub's database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import _common
import aiomqtt

import wire
from hub.config import HubSettings

TOPICS = wire.Topics()
SAMPLES_PER_MSG = 20
QUEUE_MAX = HubSettings().ingest.queue_max


def birth(gw: str) -> bytes:
    """The gateway's lamps, declared as a real gateway does before it sends data."""
    pts = (wire.PointInfo("level", wire.PointType.FLOAT, "%", 0, 100, writable=True),)
    return wire.encode_birth(wire.Birth(session=1, software_version="bench", config_hash="x", ts_ms=0,
        devices=tuple(wire.DeviceInfo(f"{gw}-L{i:02d}", "lamp", "modbus", pts)
                      for i in range(SAMPLES_PER_MSG))))


async def declare(port: int, hub: HubProc, names: list[str]) -> None:
    """Every gateway's retained birth, as in a running city (the burst is a replay, not a debut)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-births", max_inflight_messages=100,
                              max_queued_outgoing_messages=0) as c:
        sem = asyncio.Semaphore(100)

        async def one(gw: str) -> None:
            async with sem:
                await c.publish(TOPICS.gateway(gw, wire.Kind.BIRTH), birth(gw), qos=1, retain=True)

        await asyncio.gather(*(one(gw) for gw in names))
    deadline = time.monotonic() + 600
    while (await asyncio.to_thread(hub.stats))["counters"].get("stored.birth", 0) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError("births not applied in time")
        await asyncio.sleep(0.2)


def message(gw: str, seq: int, hist: bool, ts0: int) -> bytes:
    """A data message of SAMPLES_PER_MSG samples, one per lamp of the gateway."""
    return wire.encode_data(wire.Data(seq=seq, historical=hist, samples=[
        (f"{gw}-L{i:02d}", "level", ts0 + seq, float(seq % 100), "good")
        for i in range(SAMPLES_PER_MSG)]))


def vm(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class HubProc:
    """The hub as a subprocess; its /stats through a viewer token."""

    def __init__(self, tmp: Path, broker_port: int, src: Path | None = None) -> None:
        self.http = _common.free_port()
        self.dir = tmp / "hub"
        self.dir.mkdir()
        self.config = self.dir / "hub.yaml"
        self.config.write_text(
            f"data_dir: {self.dir}\nlog_level: WARNING\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker_port}, client_id: bench-burst-hub}}\n"
            f"http: {{host: 127.0.0.1, port: {self.http}}}\n")
        # --hub-src: run the hub of another source tree (e.g. an older commit) to compare.
        env = {**os.environ, "PYTHONPATH": str(src)} if src else None
        self.token = subprocess.run(
            [sys.executable, "-m", "hub.cli", "token", "create", "--config", str(self.config),
             "--role", "viewer", "--name", "bench"], check=True, capture_output=True, text=True,
            env=env, cwd=src,
        ).stdout.strip()
        log = open(self.dir / "hub.log", "wb")  # Popen keeps its own fd
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=src)
        log.close()
        _common.wait_port("127.0.0.1", self.http, 30)

    def stats(self) -> dict[str, Any]:
        """GET /api/v1/stats."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/api/v1/stats",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return dict(json.load(r))

    def stored(self) -> int:
        """Data messages applied (stored or recognised as duplicates)."""
        c = self.stats()["counters"]
        return int(c.get("stored.data", 0) + c.get("duplicate.data", 0))

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_stored(hub: HubProc, target: int, timeout: float, rss: list[int]) -> float:
    """Poll until ``target`` data messages are applied; sample RSS meanwhile; the time it happened."""
    deadline = time.monotonic() + timeout
    last_poll = 0.0
    while True:
        rss.append(vm(hub.proc.pid, "VmRSS"))
        now = time.monotonic()
        if now - last_poll >= 0.2:
            last_poll = now
            if await asyncio.to_thread(hub.stored) >= target:
                return time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"hub stored {hub.stored()} of {target} in {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def steady(port: int, hub: HubProc, count: int, rss: list[int]) -> float:
    """One live publisher, 1000 in flight; returns messages/s stored."""
    ts0 = int(time.time() * 1000)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-live", max_inflight_messages=QUEUE_MAX,
                              max_queued_outgoing_messages=0) as c:
        # Warm-up: the hub creates the gateway's undeclared devices and points once.
        await c.publish(TOPICS.gateway("live", wire.Kind.DATA), message("live", 0, False, ts0), qos=1)
        await wait_stored(hub, 1, 60, rss)
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(QUEUE_MAX)

        async def one(seq: int) -> None:
            async with sem:
                await c.publish(TOPICS.gateway("live", wire.Kind.DATA), message("live", seq, False, ts0), qos=1)

        await asyncio.gather(*(one(s) for s in range(1, count + 1)))
        t1 = await wait_stored(hub, count + 1, 600, rss)
    return count / (t1 - t0)


async def burst(port: int, hub: HubProc, gateways: int, per_gw: int, before: int,
                rss: list[int]) -> tuple[float, float]:
    """N gateways replay M messages each, all in flight; (seconds to store all, publish seconds)."""
    ts0 = int(time.time() * 1000) - 3_600_000
    t0 = time.perf_counter()
    published: list[float] = []

    async def gateway(n: int) -> None:
        gw = f"gw{n:04d}"
        async with aiomqtt.Client("127.0.0.1", port, identifier=gw, max_inflight_messages=per_gw,
                                  max_queued_outgoing_messages=0, timeout=600) as c:
            await asyncio.gather(*(
                c.publish(TOPICS.gateway(gw, wire.Kind.DATA), message(gw, s, True, ts0), qos=1,
                          timeout=600)
                for s in range(per_gw)))
        published.append(time.perf_counter() - t0)

    pubs = asyncio.gather(*(gateway(n) for n in range(gateways)))
    t1 = await wait_stored(hub, before + gateways * per_gw, 1800, rss)
    await pubs
    return t1 - t0, max(published)


def count_rows(db: Path) -> tuple[int, int]:
    """(ingested_msg rows, sample rows) in the hub's database."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as c:
        return (c.execute("SELECT count(*) FROM ingested_msg").fetchone()[0],
                c.execute("SELECT count(*) FROM sample").fetchone()[0])


async def run(quick: bool, src: Path | None = None) -> dict[str, Any]:
    """Both phases against one broker and one hub process."""
    gateways, per_gw = (100, 20) if quick else (700, 50)
    steady_n = 2000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="cn-burst-") as d:
        tmp = Path(d)
        with _common.Broker(tmp / "broker", max_inflight=QUEUE_MAX) as broker:
            hub = HubProc(tmp, broker.port, src)
            try:
                await declare(broker.port, hub, ["live"] + [f"gw{n:04d}" for n in range(gateways)])
                rss_steady: list[int] = []
                rate = await steady(broker.port, hub, steady_n, rss_steady)
                rss_before = vm(hub.proc.pid, "VmRSS")
                hwm_before = vm(hub.proc.pid, "VmHWM")
                before = steady_n + 1
                rss_burst: list[int] = []
                absorb_s, publish_s = await burst(broker.port, hub, gateways, per_gw, before, rss_burst)
                hwm_after = vm(hub.proc.pid, "VmHWM")
                st = hub.stats()
            finally:
                hub.stop()
            msgs, samples = count_rows(hub.dir / "citynerve.db")
    total = gateways * per_gw
    expected = before + total
    return {
        "gateways": gateways, "messages_per_gateway": per_gw, "samples_per_message": SAMPLES_PER_MSG,
        "steady_messages": steady_n, "steady_msgs_per_s": rate,
        "burst_messages": total, "burst_absorb_s": absorb_s, "burst_publish_s": publish_s,
        "burst_msgs_per_s": total / absorb_s, "burst_x_steady": total / absorb_s / rate,
        "absorb_s_at_steady_rate": total / rate,
        "rss_kb_before_burst": rss_before, "rss_kb_peak_burst": max(rss_burst),
        "rss_kb_peak_steady": max(rss_steady), "vmhwm_kb_before": hwm_before, "vmhwm_kb_after": hwm_after,
        "queue_peak": st.get("ingest_queue_peak", -1), "queue_bound": st.get("ingest_queue_bound", -1),
        "reader_paused": st["counters"].get("mqtt.reader_paused", 0),
        "stored_messages": msgs, "expected_messages": expected,
        "stored_samples": samples, "expected_samples": expected * SAMPLES_PER_MSG,
        "duplicates": st["counters"].get("duplicate.data", 0),
    }


def main() -> int:
    """Run, print a table, optionally save JSON; exit 1 if anything was lost or duplicated."""
    global SAMPLES_PER_MSG
    p = _common.parser(__doc__)
    p.add_argument("--hub-src", type=Path, help="run the hub from this source tree instead (compare versions)")
    p.add_argument("--samples", type=int, default=SAMPLES_PER_MSG,
                   help=f"samples (lamps) per message, default {SAMPLES_PER_MSG}")
    args = p.parse_args()
    SAMPLES_PER_MSG = args.samples
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "pending publish calls" notes
    r = asyncio.run(run(args.quick, args.hub_src))
    print(_common.table(["phase", "messages", "s", "msgs/s", "x steady", "hub RSS peak MB"], [
        ["steady (1 live publisher)", r["steady_messages"], r["steady_messages"] / r["steady_msgs_per_s"],
         r["steady_msgs_per_s"], 1.0, r["rss_kb_peak_steady"] / 1024],
        [f"burst ({r['gateways']} gw x {r['messages_per_gateway']})", r["burst_messages"],
         r["burst_absorb_s"], r["burst_msgs_per_s"], r["burst_x_steady"], r["rss_kb_peak_burst"] / 1024],
    ]))
    print(f"burst publishers done after {r['burst_publish_s']:.1f} s; hub RSS before the burst "
          f"{r['rss_kb_before_burst'] / 1024:.0f} MB, peak {r['rss_kb_peak_burst'] / 1024:.0f} MB "
          f"(VmHWM {r['vmhwm_kb_before'] / 1024:.0f} -> {r['vmhwm_kb_after'] / 1024:.0f} MB); queue peak "
          f"{r['queue_peak']} of bound {r['queue_bound']}; reader paused {r['reader_paused']} times")
    ok = (r["stored_messages"] == r["expected_messages"] and r["stored_samples"] == r["expected_samples"]
          and r["queue_peak"] <= r["queue_bound"])
    print(f"stored {r['stored_messages']}/{r['expected_messages']} messages, {r['stored_samples']}/"
          f"{r['expected_samples']} samples: {'exactly once' if ok else 'MISMATCH'}")
    if args.json:
        print("wrote", _common.save("hub_burst", {"quick": args.quick, "exactly_once": ok, **r}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
