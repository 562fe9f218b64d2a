"""BACnet COV to MQTT: a change at the building simulator -> the sample seen by an MQTT subscriber.

The real edge daemon (``citynerve-edge run``, its own process) follows a BuildingSim (in this
process, so the bench can change a value at a known instant) over BACnet/IP on loopback, and
publishes to a private Mosquitto; a subscriber in this process decodes each data message and
stops the clock at the sample carrying the new value. Measured for a ``cov: true`` point (polled
once a minute, so only COV can be this fast) and, as baselines in the same run: the same change
on a point polled every second (no COV), a bare QoS 1 MQTT publish -> subscribe round trip
through the same broker, and one BACnet ReadProperty round trip. Run twice: with
``publish.max_delay_ms: 0`` and with the default 200 ms batching window.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import aiomqtt

import wire
from drivers.bacnet import BacnetBusConfig, BacnetDeviceConfig, BacnetDriver
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports

GW = "bms-bench"
INSTANCE = 1001
EDGE_YAML = """
gateway: {{id: {gw}}}
mqtt: {{host: 127.0.0.1, port: {mqtt}}}
data_dir: {work}/edge
control_socket: {work}/edge.sock
publish: {{max_delay_ms: {delay}}}
buffer: {{wait_for_hub: false}}  # no hub in this bench: send whenever connected
buses:
  - {{id: bms, driver: bacnet, address: "127.0.0.1:{gw_port}", apdu_timeout_s: 1}}
devices:
  - id: town-hall
    bus: bms
    kind: building
    address: "127.0.0.1:{dev_port}"
    device_instance: {instance}
    points:
      - {{id: zone-1-temp, object: "analog-input,1", cov: true, interval_s: 60}}
      - {{id: zone-2-temp, object: "analog-input,2", interval_s: 1}}
"""




def summary(ms: list[float]) -> dict[str, float]:
    """n, median, p95 and max in ms."""
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": statistics.quantiles(ms, n=20)[18] if len(ms) >= 2 else ms[0],
        "max_ms": max(ms),
    }




async def rp_rtt(dev_port: int, n: int) -> list[float]:
    """One ReadProperty (present-value + status-flags of one point) from a driver of our own."""
    (gw_port,) = udp_ports(1)
    bus = BacnetBusConfig.model_validate({"id": "b", "address": f"127.0.0.1:{gw_port}"})
    dev = BacnetDeviceConfig.model_validate(
        {
            "id": "d",
            "bus": "b",
            "address": f"127.0.0.1:{dev_port}",
            "device_instance": INSTANCE,
            "read_multiple": False,
            "points": [{"id": "t", "object": "analog-input,3"}],
        }
    )
    out = []
    async with BacnetDriver(bus, [dev]) as driver:
        await driver.read(dev, dev.points)
        for _ in range(n):
            t0 = time.perf_counter()
            await driver.read(dev, dev.points)
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def change_to_mqtt(
    sim: BuildingSim, messages: Any, zone: int, point: str, n: int, first: float
) -> list[float]:
    """Set zone's temperature n times; ms from each change to the sample at the subscriber."""
    out = []
    for i in range(n):
        value = first + (i % 2)  # alternate: each change is above the 0.1 COV increment
        t0 = time.perf_counter()
        sim.set_temperature(zone, value)
        async with asyncio.timeout(10):
            while True:
                msg = await anext(messages)
                data = wire.decode_data(bytes(msg.payload))
                if any(s[1] == point and s[3] == value for s in data.samples):
                    break
        out.append((time.perf_counter() - t0) * 1000)
        # a random pause: changes land anywhere in the poll cycle (uniform, as in the field)
        await asyncio.sleep(random.uniform(0.01, 0.1 if point == "zone-1-temp" else 1.0))
    return out


async def one_edge(broker: Any, work: Path, delay_ms: int, n_cov: int, n_poll: int) -> dict[str, Any]:
    """Start a simulator and an edge, measure COV (and polled) change -> MQTT, stop both."""
    gw_port, dev_port = udp_ports(2)
    out: dict[str, Any] = {"max_delay_ms": delay_ms}
    cfg = work / f"edge-{delay_ms}.yaml"
    cfg.write_text(
        EDGE_YAML.format(
            gw=GW,
            mqtt=broker.port,
            work=work / f"e{delay_ms}",
            delay=delay_ms,
            gw_port=gw_port,
            dev_port=dev_port,
            instance=INSTANCE,
        )
    )
    topic = wire.Topics().gateway(GW, wire.Kind.DATA)
    async with BuildingSim(port=dev_port, instance=INSTANCE) as sim:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"cov-sub-{delay_ms}") as sub:
            await sub.subscribe(topic, qos=1)
            messages = sub.messages.__aiter__()
            edge = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("citynerve-edge")),
                    "run",
                    "--config",
                    str(cfg),
                    "--log-level",
                    "WARNING",
                ]
            )
            try:
                sim.set_temperature(1, 25.0)  # wait until the subscription delivers changes
                async with asyncio.timeout(30):
                    while True:
                        data = wire.decode_data(bytes((await anext(messages)).payload))
                        if any(s[1] == "zone-1-temp" and s[3] == 25.0 for s in data.samples):
                            break
                await change_to_mqtt(sim, messages, 1, "zone-1-temp", 5, 40.0)  # warm-up
                out["cov"] = summary(await change_to_mqtt(sim, messages, 1, "zone-1-temp", n_cov, 30.0))
                if n_poll:
                    out["polled_1s"] = summary(
                        await change_to_mqtt(sim, messages, 2, "zone-2-temp", n_poll, 30.0)
                    )
            finally:
                edge.terminate()
                edge.wait(10)
        if n_poll:
            out["rp_rtt"] = summary(await rp_rtt(dev_port, 100))
    return out


async def run(quick: bool, work: Path) -> dict[str, Any]:
    """Baselines and both edge runs against one broker."""
    n_cov, n_poll = (30, 5) if quick else (300, 30)
    broker = _common.Broker(work / "broker").start()
    try:
        base_mqtt = summary(await _common.mqtt_rtt(broker.port, 100 if quick else 500))
        fast = await one_edge(broker, work, 0, n_cov, n_poll)
        default = await one_edge(broker, work, 200, n_cov // 3, 0)
    finally:
        broker.stop()
    return {"mqtt_pub_sub": base_mqtt, "max_delay_0": fast, "max_delay_200": default}


def main() -> int:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="cn-cov-", dir="/tmp"))
    res = asyncio.run(run(args.quick, work))
    base = res["mqtt_pub_sub"]["median_ms"] + res["max_delay_0"]["rp_rtt"]["median_ms"]
    rows = [
        ["bare MQTT pub -> sub (baseline)", res["mqtt_pub_sub"]],
        ["one ReadProperty (baseline)", res["max_delay_0"]["rp_rtt"]],
        ["COV change -> MQTT, max_delay_ms 0", res["max_delay_0"]["cov"]],
        ["polled 1 s change -> MQTT, max_delay_ms 0", res["max_delay_0"]["polled_1s"]],
        ["COV change -> MQTT, max_delay_ms 200 (default)", res["max_delay_200"]["cov"]],
    ]
    print(
        _common.table(
            ["path", "n", "median ms", "p95 ms", "max ms", "median x (MQTT + RP)"],
            [
                [name, s["n"], s["median_ms"], s["p95_ms"], s["max_ms"], s["median_ms"] / base]
                for name, s in rows
            ],
        )
    )
    if args.json:
        print("wrote", _common.save("bacnet_cov", {"quick": args.quick, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
