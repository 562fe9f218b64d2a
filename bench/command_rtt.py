"""Command round trip: REST POST -> hub -> MQTT -> edge -> Modbus write + read-back -> ack -> REST.

The real hub (in this process, default settings) and the real edge daemon (its own process,
``citynerve-edge run``) polling a CabinetSim (its own process) through a private Mosquitto;
meanwhile a publisher sends telemetry for 20 other gateways (100 samples/message, 40 msg/s).
Each command is POSTed to /api/v1/commands and GET /api/v1/commands/{id} is polled (every
2 ms) until it is no longer pending. Baselines in the same run: a bare MQTT QoS 1
publish -> subscribe round trip through the same broker, and a bare pymodbus write + read.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import aiohttp
import paho.mqtt.client as paho
from aiohttp import web

import wire
from hub.app import create_app
from hub.config import HubSettings
from hub.keys import LINK, REGISTRY, STORAGE
from hub.tokens import create_token

GW = "cab-rtt"
EDGE_YAML = """
gateway: {{id: {gw}}}
mqtt: {{host: 127.0.0.1, port: {mqtt}}}
data_dir: {work}/edge
control_socket: {work}/edge.sock
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 1}}
      - {{id: actual_level, register: input, address: 100, type: u16, unit: "%", interval_s: 1}}
      - {{id: power, register: input, address: 101, type: u16, scale: 0.1, unit: W, interval_s: 1}}
      - {{id: energy, register: input, address: 102, type: u32, unit: Wh, interval_s: 5}}
buses:
  - {{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {sim}, timeout_s: 1, retries: 1, max_gap: 9}}
devices:
{lamps}
"""


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def summary(ms: list[float]) -> dict[str, float]:
    """p50 / p99 / max / mean in ms."""
    return {"n": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "max_ms": max(ms),
            "mean_ms": statistics.fmean(ms)}




async def modbus_rtt(port: int, n: int) -> list[float]:
    """Bare pymodbus write of one holding register and read-back (what the edge does)."""
    from pymodbus.client import AsyncModbusTcpClient

    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    await c.connect()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await c.write_register(100, i % 101, device_id=1)
        await c.read_holding_registers(100, count=1, device_id=1)
        out.append((time.perf_counter() - t0) * 1000)
    c.close()
    return out


def background_publisher(port: int, stop: threading.Event, rate: float = 40.0) -> None:
    """Telemetry of 20 other gateways, 100 samples a message, at a steady rate."""
    topics = wire.Topics(wire.DEFAULT_ROOT)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rtt-bg")
    c.connect("127.0.0.1", port)
    c.loop_start()
    seq = 0
    next_t = time.monotonic()
    while not stop.is_set():
        seq += 1
        gw = f"bg{seq % 20:02d}"
        ts = int(time.time() * 1000)
        samples = [(f"{gw}-L{j // 10}", f"p{j % 10}", ts, float(seq % 100), "good") for j in range(100)]
        c.publish(topics.gateway(gw, wire.Kind.DATA), wire.encode_data(wire.Data(seq, samples)), qos=1)
        next_t += 1 / rate
        time.sleep(max(0.0, next_t - time.monotonic()))
    c.disconnect()
    c.loop_stop()


async def command_rtts(base: str, token: str, n: int) -> list[float]:
    """POST a command, poll its status until it leaves pending; ms per command."""
    out: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base, headers=headers) as http:
        for i in range(n):
            body = {"device": f"L-{i % 8 + 1:04d}", "point": "level", "value": (i * 7) % 101}
            t0 = time.perf_counter()
            async with http.post("/api/v1/commands", json=body) as r:
                posted = await r.json()
                if r.status != 202:
                    raise RuntimeError(f"POST failed: {r.status} {posted}")
            cid = posted["id"]
            while True:
                async with http.get(f"/api/v1/commands/{cid}") as r:
                    st = (await r.json())["status"]
                if st != "pending":
                    break
                await asyncio.sleep(0.002)
            out.append((time.perf_counter() - t0) * 1000)
            if st != "acknowledged":
                raise RuntimeError(f"command {cid} ended {st}")
    return out


async def run(n: int, work: Path) -> dict[str, Any]:
    """Everything in one run: baselines, then commands under background telemetry."""
    sim_port = _common.free_port()
    sim = subprocess.Popen([str(Path(sys.executable).with_name("citynerve-sim")), "modbus", "--port",
                            str(sim_port), "--lamps", "8"], stdout=subprocess.DEVNULL)
    broker = _common.Broker(work / "broker").start()
    edge: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    runner: web.AppRunner | None = None
    try:
        _common.wait_port("127.0.0.1", sim_port)
        base_mqtt = await _common.mqtt_rtt(broker.port, n)
        base_modbus = await modbus_rtt(sim_port, n)
        http_port = _common.free_port()
        settings = HubSettings.model_validate({
            "data_dir": str(work / "hub"), "log_level": "WARNING",
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "rtt-hub"},
            "http": {"port": http_port}})
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        await asyncio.wait_for(app[LINK].connected.wait(), 10)
        _, token = await create_token(app[STORAGE], f"bench-{uuid.uuid4().hex[:6]}", "operator")
        lamps = "\n".join(f"  - {{id: L-{k + 1:04d}, bus: cab, unit: 1, template: lamp, "
                          f"address_offset: {10 * k}}}" for k in range(8))
        cfg = work / "edge.yaml"
        cfg.write_text(EDGE_YAML.format(gw=GW, mqtt=broker.port, work=work, sim=sim_port, lamps=lamps))
        edge = subprocess.Popen([str(Path(sys.executable).with_name("citynerve-edge")), "run",
                                 "--config", str(cfg), "--log-level", "WARNING"])
        deadline = time.monotonic() + 20
        while "L-0008" not in app[REGISTRY].devices:
            if time.monotonic() > deadline:
                raise RuntimeError("the edge's birth never reached the hub")
            await asyncio.sleep(0.05)
        bg = threading.Thread(target=background_publisher, args=(broker.port, stop), daemon=True)
        bg.start()
        await asyncio.sleep(1.0)
        await command_rtts(f"http://127.0.0.1:{http_port}", token, 10)  # warm-up
        cmd = await command_rtts(f"http://127.0.0.1:{http_port}", token, n)
        stop.set()
        bg.join()
    finally:
        stop.set()
        if edge is not None:
            edge.terminate()
            edge.wait(10)
        if runner is not None:
            await runner.cleanup()
        broker.stop()
        sim.terminate()
        sim.wait(5)
    return {"commands": summary(cmd), "mqtt_pub_sub": summary(base_mqtt),
            "modbus_write_read": summary(base_modbus)}


def main() -> int:
    """Run and print the table."""
    args = _common.parser(__doc__).parse_args()
    n = 30 if args.quick else 200
    work = Path(tempfile.mkdtemp(prefix="cn-rtt-", dir="/tmp"))
    res = asyncio.run(run(n, work))
    base = res["mqtt_pub_sub"]["p50_ms"] + res["modbus_write_read"]["p50_ms"]
    rows = []
    for name in ("mqtt_pub_sub", "modbus_write_read", "commands"):
        s = res[name]
        rows.append([name, s["n"], s["p50_ms"], s["p99_ms"], s["max_ms"],
                     s["p50_ms"] / base])
    print(_common.table(["round trip", "n", "p50 ms", "p99 ms", "max ms", "p50 x (mqtt+modbus)"], rows))
    ok = res["commands"]["p99_ms"] <= 50
    print(f"target command p99 <= 50 ms: {'met' if ok else 'NOT met'}")
    if args.json:
        print("wrote", _common.save("command_rtt", {"quick": args.quick, "target_met": ok, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
