"""BACnet: points/s with ReadPropertyMultiple vs ReadProperty, and COV latency, against BuildingSim.

The building simulator and the driver share one process and event loop on loopback (fresh UDP
ports), so absolute figures include both sides' CPU; compare the ratios. Every object of the
default building (17: fire, intrusion, doors, locks, HVAC, meter) is one point, present-value
plus status-flags. Baseline: ReadProperty, two requests per point (present-value, status-flags).
COV latency: ``sim.set_temperature`` -> the PushedUpdate out of ``driver.updates()``; its
baseline is one ReadProperty round trip in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import _common

from drivers.bacnet import BacnetBusConfig, BacnetDeviceConfig, BacnetDriver
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports
from firmware_sim.bacnet.building import Layout, object_map

INSTANCE = 1001




def configs(gw_port: int, dev_port: int, read_multiple: bool) -> tuple[BacnetBusConfig, BacnetDeviceConfig]:
    points: list[dict[str, Any]] = [
        {"id": name, "object": oid, "cov": oid == "analog-input,1"}
        for oid, name in object_map(Layout()).items()
    ]
    bus = BacnetBusConfig.model_validate(
        {"id": "bms", "address": f"127.0.0.1:{gw_port}", "apdu_timeout_s": 1.0}
    )
    dev = BacnetDeviceConfig.model_validate(
        {
            "id": "b",
            "bus": "bms",
            "address": f"127.0.0.1:{dev_port}",
            "device_instance": INSTANCE,
            "read_multiple": read_multiple,
            "points": points,
        }
    )
    return bus, dev


async def reads(read_multiple: bool, duration: float) -> dict[str, Any]:
    gw_port, dev_port = udp_ports(2)
    bus, dev = configs(gw_port, dev_port, read_multiple)
    async with BuildingSim(port=dev_port, instance=INSTANCE), BacnetDriver(bus, [dev]) as driver:
        await driver.read(dev, dev.points)  # warm up
        n = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < duration:
            got = await driver.read(dev, dev.points)
            n += len(got)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_read = 1 if read_multiple else 2 * len(dev.points)
    return {
        "service": "ReadPropertyMultiple" if read_multiple else "ReadProperty (baseline)",
        "points_per_s": n / wall,
        "requests_per_s": n / len(dev.points) * per_read / wall,
        "cpu_us_per_point": cpu / n * 1e6,
    }


async def cov_latency(samples: int) -> dict[str, Any]:
    gw_port, dev_port = udp_ports(2)
    bus, dev = configs(gw_port, dev_port, True)
    temp = next(p for p in dev.points if p.cov)
    async with BuildingSim(port=dev_port, instance=INSTANCE) as sim, BacnetDriver(bus, [dev]) as driver:
        updates = driver.updates()
        await anext(updates)  # the subscription's initial notification
        cov_ms, rp_ms = [], []
        for i in range(samples):
            value = 30.0 + (i % 2)  # alternate: every change is above the 0.1 COV increment
            t0 = time.perf_counter()
            sim.set_temperature(1, value)
            while (await anext(updates)).reading.value != value:
                pass
            cov_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await driver.read(dev, [temp])
            rp_ms.append((time.perf_counter() - t0) * 1000)
        await updates.aclose()
    return {
        "cov_median_ms": statistics.median(cov_ms),
        "cov_p95_ms": statistics.quantiles(cov_ms, n=20)[18],
        "read_median_ms": statistics.median(rp_ms),
    }


async def main_async(quick: bool) -> dict[str, Any]:
    duration, samples = (1.0, 40) if quick else (10.0, 400)
    rp = await reads(False, duration)
    rpm = await reads(True, duration)
    cov = await cov_latency(samples)
    return {"reads": [rp, rpm], "x_rp": rpm["points_per_s"] / rp["points_per_s"], "cov": cov}


def main() -> None:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    result = asyncio.run(main_async(args.quick))
    rows = [
        [
            r["service"],
            r["points_per_s"],
            r["points_per_s"] / result["reads"][0]["points_per_s"],
            r["requests_per_s"],
            r["cpu_us_per_point"],
        ]
        for r in result["reads"]
    ]
    print(_common.table(["service", "points/s", "x RP", "requests/s", "cpu us/point"], rows))
    cov = result["cov"]
    print(
        _common.table(
            ["COV change -> update", "median ms", "p95 ms", "x one RP round trip (median)"],
            [
                [
                    "analog-input,1",
                    cov["cov_median_ms"],
                    cov["cov_p95_ms"],
                    cov["cov_median_ms"] / cov["read_median_ms"],
                ]
            ],
        )
    )
    if args.json:
        print("wrote", _common.save("bacnet_read", {"quick": args.quick, **result}))


if __name__ == "__main__":
    main()
