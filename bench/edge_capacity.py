"""Edge capacity: points polled, converted and published per second on one core.

A CabinetSim (90 lamps, ``--churn``: every register changes on every read, no response delay)
runs in its own process. The edge (BusPoller + ModbusDriver + Outbox + Uplink, the real
``edge.daemon.Edge``) runs in another process and publishes to a private Mosquitto; this
process counts the samples that arrive. The baseline, in the same run against the same sim, is
a bare pymodbus client loop issuing exactly the edge's requests (same function codes, starts
and counts), also in its own process. CPU is ``time.process_time()`` of each process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import aiomqtt
import msgpack

import wire

LAMPS = 90
GW = "bench-edge"


def edge_yaml(mqtt_port: int, sim_port: int, workdir: Path) -> str:
    """90 lamps on one cabinet, 5 points each, every point due on every cycle."""
    lamps = "\n".join(
        f"  - {{id: L-{n + 1:04d}, bus: cab, unit: 1, template: lamp, address_offset: {10 * n}}}"
        for n in range(LAMPS)
    )
    return f"""
gateway: {{id: {GW}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}
data_dir: {workdir / "edge"}
control_socket: {workdir / "edge.sock"}
publish: {{full_report_s: 3600}}
buffer: {{wait_for_hub: false}}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.001}}
      - {{id: actual_level, register: input, address: 100, type: u16, unit: "%", interval_s: 0.001}}
      - {{id: power, register: input, address: 101, type: u16, scale: 0.1, unit: W, interval_s: 0.001}}
      - {{id: energy, register: input, address: 102, type: u32, unit: Wh, interval_s: 0.001}}
      - {{id: lamp_failure, register: discrete, address: 100, type: bool, interval_s: 0.001}}
buses:
  - {{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {sim_port}, timeout_s: 1, retries: 0, max_gap: 9}}
devices:
{lamps}
"""


# -- child processes -------------------------------------------------------------------------


async def child_edge(config: str, warmup: float, duration: float) -> dict[str, Any]:
    """Run the edge daemon; report its counters and CPU over the measured window."""
    from edge import config as edge_config
    from edge.daemon import Edge

    edge = Edge(edge_config.load(config))
    task = asyncio.create_task(edge.run())
    await asyncio.sleep(warmup)
    poller = edge.pollers["cab"]
    c0, p0, r0, s0 = time.process_time(), poller.points_read, poller.reads_total, edge.counters.samples_published
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    dt = time.perf_counter() - t0
    out = {"seconds": dt, "cpu_s": time.process_time() - c0, "points": poller.points_read - p0,
           "device_reads": poller.reads_total - r0,
           "samples_published": edge.counters.samples_published - s0,
           "dropped": edge.counters.samples_dropped}
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return out


async def child_bare(port: int, requests: list[tuple[str, int, int]], warmup: float,
                     duration: float) -> dict[str, Any]:
    """A bare pymodbus client issuing the edge's requests in a loop, nothing else."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    await client.connect()
    calls = [(getattr(client, m), s, k) for m, s, k in requests]

    async def cycle() -> int:
        n = 0
        for fn, start, count in calls:
            r = await fn(start, count=count, device_id=1)
            if r.isError():
                raise RuntimeError(f"bare read {start}+{count}: {r}")
            n += count
        return n

    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        await cycle()
    c0, t0 = time.process_time(), time.perf_counter()
    regs = cycles = 0
    while time.perf_counter() - t0 < duration:
        regs += await cycle()
        cycles += 1
    out = {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "registers": regs, "requests": cycles * len(calls), "cycles": cycles}
    client.close()
    return out


# -- orchestration ---------------------------------------------------------------------------


def plan_requests(config_path: Path) -> tuple[list[tuple[str, int, int]], int]:
    """The edge's block requests for one full cycle (function, start, count), and its points."""
    from drivers.modbus.codec import plan_blocks
    from drivers.modbus.driver import _READ_METHOD
    from edge import config as edge_config

    cfg = edge_config.load(config_path)
    bus = cfg.buses[0]
    points = [p for d in cfg.devices for p in d.points]
    blocks = plan_blocks(points, max_registers=bus.max_block_registers,  # type: ignore[attr-defined]
                         max_bits=bus.max_block_bits, max_gap=bus.max_gap)  # type: ignore[attr-defined]
    return [(_READ_METHOD[b.register], b.start, b.count) for b in blocks], len(points)


def start_sim(port: int) -> subprocess.Popen[bytes]:
    """citynerve-sim in its own process (churn, no response delay)."""
    exe = Path(sys.executable).with_name("citynerve-sim")
    proc = subprocess.Popen([str(exe), "modbus", "--port", str(port), "--lamps", str(LAMPS),
                             "--churn", "--delay-ms", "0"], stdout=subprocess.PIPE)
    _common.wait_port("127.0.0.1", port)
    return proc


def run_child(args: list[str]) -> dict[str, Any]:
    """Run this script in a child role; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def count_samples(port: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Subscribe to the gateway's data and count samples (the edge's output, verified)."""
    topic = wire.Topics(wire.DEFAULT_ROOT).gateway(GW, wire.Kind.DATA)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-count") as c:
        await c.subscribe(topic, qos=1)
        counts["ready"] = 1
        async for m in c.messages:
            counts["samples"] += len(msgpack.unpackb(m.payload)["samples"])  # type: ignore[arg-type]
            counts["messages"] += 1
            if stop.is_set():
                return


def main() -> int:
    """Measure the bare loop, then the edge, against the same simulator."""
    p = _common.parser(__doc__)
    p.add_argument("--role", choices=["edge", "bare"], help=argparse_hidden())
    p.add_argument("--arg", action="append", default=[], help=argparse_hidden())
    args = p.parse_args()
    if args.role == "edge":
        print(json.dumps(asyncio.run(child_edge(args.arg[0], float(args.arg[1]), float(args.arg[2])))))
        return 0
    if args.role == "bare":
        reqs = json.loads(args.arg[1])
        print(json.dumps(asyncio.run(child_bare(int(args.arg[0]), [tuple(r) for r in reqs],
                                                float(args.arg[2]), float(args.arg[3])))))
        return 0
    warmup, duration = (1.0, 3.0) if args.quick else (3.0, 30.0)
    tmp = Path(tempfile.mkdtemp(prefix="cn-bench-edge-", dir="/tmp"))
    sim_port = _common.free_port()
    sim = start_sim(sim_port)
    try:
        with _common.Broker(tmp / "broker") as broker:
            cfg = tmp / "edge.yaml"
            cfg.write_text(edge_yaml(broker.port, sim_port, tmp))
            requests, npoints = plan_requests(cfg)
            bare = run_child(["--role", "bare", "--arg", str(sim_port), "--arg", json.dumps(requests),
                              "--arg", str(warmup), "--arg", str(duration)])

            async def edge_run() -> tuple[dict[str, Any], dict[str, int]]:
                stop = asyncio.Event()
                counts = {"samples": 0, "messages": 0, "ready": 0}
                counter = asyncio.create_task(count_samples(broker.port, stop, counts))
                while not counts["ready"]:
                    await asyncio.sleep(0.01)
                res = await asyncio.to_thread(run_child, ["--role", "edge", "--arg", str(cfg),
                                                          "--arg", str(warmup), "--arg", str(duration)])
                await asyncio.sleep(0.5)
                stop.set()
                counter.cancel()
                return res, counts

            edge, counts = asyncio.run(edge_run())
    finally:
        sim.terminate()
        sim.wait(5)
    regs_per_cycle = sum(k for _, _, k in requests)
    cycles = edge["points"] / npoints
    edge_regs = cycles * regs_per_cycle
    e_pps = edge["points"] / edge["seconds"]
    e_pub = edge["samples_published"] / edge["seconds"]
    b_rps = bare["registers"] / bare["seconds"]
    b_pps = bare["cycles"] * npoints / bare["seconds"]  # the same points, had they been decoded
    e_cpu_reg = edge["cpu_s"] / edge_regs * 1e6
    b_cpu_reg = bare["cpu_s"] / bare["registers"] * 1e6
    rows = [
        ["bare pymodbus loop", b_pps, b_rps, bare["requests"] / bare["seconds"], b_cpu_reg, 1.0],
        ["edge (poll+decode+publish)", e_pps, cycles * regs_per_cycle / edge["seconds"],
         cycles * len(requests) / edge["seconds"], e_cpu_reg, e_cpu_reg / b_cpu_reg],
    ]
    print(f"{npoints} points, {len(requests)} requests and {regs_per_cycle} registers/bits per cycle")
    print(_common.table(["loop", "points/s", "registers/s", "requests/s", "cpu us/register",
                         "cpu x bare"], rows))
    print(f"edge published {e_pub:,.0f} samples/s (consumer received {counts['samples']:,} samples "
          f"in {counts['messages']:,} messages); edge points/s = {e_pps / b_pps:.2f} x bare")
    ok_rate, ok_cpu = e_pps >= 50_000, e_cpu_reg <= 3 * b_cpu_reg
    print(f"target >= 50k points/s: {'met' if ok_rate else 'NOT met'}; "
          f"target cpu <= 3x bare: {'met' if ok_cpu else 'NOT met'}")
    if args.json:
        print("wrote", _common.save("edge_capacity", {
            "quick": args.quick, "points_per_cycle": npoints, "requests_per_cycle": len(requests),
            "registers_per_cycle": regs_per_cycle, "edge": edge, "bare": bare, "consumer": counts,
            "edge_points_per_s": e_pps, "edge_samples_published_per_s": e_pub,
            "bare_points_per_s": b_pps, "edge_cpu_us_per_register": e_cpu_reg,
            "bare_cpu_us_per_register": b_cpu_reg, "cpu_ratio": e_cpu_reg / b_cpu_reg,
            "target_rate_met": ok_rate, "target_cpu_met": ok_cpu}))
    return 0


def argparse_hidden() -> str:
    """Help text of the internal child-process options."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
