"""DALI: commands/s and queries/s on one bus against the 1200 bit/s limit; dim 64 lamps one by one vs one frame.

The python-dali LUBA driver against the bus simulator at REAL frame timing (``timing=1.0``) on a
pty, in one process. The baseline is the physical limit of the bus, computed here from the
IEC 62386-101 timing (not from the simulator): at 1200 bit/s one half-bit Te = 1/2400 s; a
16-bit forward frame is 38 Te (start bit, 16 bits, 2 stop bits) = 15.8 ms, a backward frame
22 Te = 9.2 ms; settling times at their minimum: forward -> forward by transmit priority
(Table 22: 13.5 ms at priority 1 .. 19.5 ms at 5), forward -> backward 5.5 ms, backward ->
forward 2.4 ms. A command is one forward frame plus the settling before the next; a query adds
the answer. The simulator answers after 7 ms (within 5.5-10.5 ms), so even a perfect master
reaches only ~96 % of the query limit there.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import _common
from dali import address
from dali.gear import general as gg

from drivers.dali import DaliBusConfig, DaliDeviceConfig, DaliDriver, DaliPointConfig
from firmware_sim.dali import DaliBusSim

TE_S = 1 / 2400
FORWARD_S = 38 * TE_S
BACKWARD_S = 22 * TE_S
SETTLE_FORWARD_S = {1: 0.0135, 2: 0.0149, 3: 0.0163, 4: 0.0179, 5: 0.0195}
SETTLE_BACKWARD_S = 0.0055  # forward -> backward, minimum
SETTLE_AFTER_ANSWER_S = 0.0024  # backward -> next forward
PRIORITY_COMMAND = 2  # the driver's operator commands (and the tools)
LAMPS = 64


def limit_commands_per_s(priority: int = PRIORITY_COMMAND) -> float:
    """Forward frames back to back at ``priority``."""
    return 1 / (FORWARD_S + SETTLE_FORWARD_S[priority])


def limit_queries_per_s() -> float:
    """Query, answer, query ...: each after the previous answer."""
    return 1 / (SETTLE_AFTER_ANSWER_S + FORWARD_S + SETTLE_BACKWARD_S + BACKWARD_S)


LEVEL = DaliPointConfig(id="level", writable=True)
ACTUAL = DaliPointConfig(id="actual_level")


def lamp(n: int) -> DaliDeviceConfig:
    return DaliDeviceConfig(id=f"L-{n:02d}", bus="dali1", address=n, points=(LEVEL, ACTUAL))


async def commands(driver: DaliDriver, n: int) -> dict[str, Any]:
    """``n`` DAPC frames to lamps in turn, each sent when the master confirmed the previous one."""
    # timed from the end of a first frame: every timed frame then pays its settling time
    await driver.transaction("A63", gg.DAPC(address.GearShort(63), 254))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await driver.transaction(f"A{i % LAMPS}", gg.DAPC(address.GearShort(i % LAMPS), 200 + i % 50))
    return _rate(n, t0, cpu0, limit_commands_per_s())


def _rate(n: int, t0: float, cpu0: float, limit: float) -> dict[str, Any]:
    elapsed = time.perf_counter() - t0
    return {
        "frames": n,
        "per_s": round(n / elapsed, 1),
        "limit_per_s": round(limit, 1),
        # CPU of the whole process (driver and simulator) per frame: the host's share of the bus time
        "cpu_ms_per_frame": round((time.process_time() - cpu0) / n * 1000, 2),
    }


async def queries(driver: DaliDriver, n: int) -> dict[str, Any]:
    """``n`` reads of ``actual_level`` (one QUERY ACTUAL LEVEL each, the polling path)."""
    await driver.read(lamp(63), (ACTUAL,))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await driver.read(lamp(i % LAMPS), (ACTUAL,))
    return _rate(n, t0, cpu0, limit_queries_per_s())


async def dim_64(sim: DaliBusSim, driver: DaliDriver) -> dict[str, Any]:
    """Time to send 40 % to 64 lamps: one by one (with and without read-back) vs one group frame."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for n in range(LAMPS):
        await driver.write(lamp(n), LEVEL, 40)  # DAPC, QUERY STATUS, QUERY ACTUAL LEVEL
    out["one_by_one_readback_s"] = round(time.perf_counter() - t0, 3)
    assert {sim.level(n) for n in range(LAMPS)} == {220}
    t0 = time.perf_counter()
    for n in range(LAMPS):
        await driver.transaction(f"A{n}", gg.DAPC(address.GearShort(n), 170))
    out["one_by_one_dapc_s"] = round(time.perf_counter() - t0, 3)
    assert {sim.level(n) for n in range(LAMPS)} == {170}
    frames = sim.frames
    t0 = time.perf_counter()
    await driver.set_level(40, group=0)
    out["group_frame_s"] = round(time.perf_counter() - t0, 4)
    assert sim.frames == frames + 1 and {sim.level(n) for n in range(LAMPS)} == {220}
    out["x_dapc"] = round(out["one_by_one_dapc_s"] / out["group_frame_s"], 1)
    out["x_readback"] = round(out["one_by_one_readback_s"] / out["group_frame_s"], 1)
    return out


async def main_async(quick: bool) -> dict[str, Any]:
    n = 60 if quick else 300
    async with DaliBusSim(lamps=LAMPS, timing=1.0) as sim:
        for g in range(LAMPS):
            sim.add_to_group(g, 0)
        async with DaliDriver(DaliBusConfig(id="dali1", serial_port=sim.path)) as driver:
            await driver.read(lamp(0), (ACTUAL,))  # warm up: the master is open and confirmed
            cmd = await commands(driver, n)
            qry = await queries(driver, n)
            dim = await dim_64(sim, driver)
    for r in (cmd, qry):
        r["ratio"] = round(r["per_s"] / r["limit_per_s"], 3)
    # the simulator keeps real time in the same process: a loaded machine shows in the ratios
    return {"commands": cmd, "queries": qry, "dim_64": dim, "frames": n, "loadavg": os.getloadavg()}


def main() -> None:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    result = asyncio.run(main_async(args.quick))
    c, q, d = result["commands"], result["queries"], result["dim_64"]
    print(
        _common.table(
            ["frames (real 1200 bit/s timing)", "per s", "limit per s", "ratio", "CPU ms/frame"],
            [
                [
                    f"commands (DAPC, priority {PRIORITY_COMMAND})",
                    c["per_s"],
                    c["limit_per_s"],
                    c["ratio"],
                    c["cpu_ms_per_frame"],
                ],
                [
                    "queries (QUERY ACTUAL LEVEL + answer)",
                    q["per_s"],
                    q["limit_per_s"],
                    q["ratio"],
                    q["cpu_ms_per_frame"],
                ],
            ],
        )
    )
    print(
        _common.table(
            ["40 % to 64 lamps", "s", "x one group frame"],
            [
                ["one by one: DAPC + QUERY STATUS + read-back", d["one_by_one_readback_s"], d["x_readback"]],
                ["one by one: DAPC only", d["one_by_one_dapc_s"], d["x_dapc"]],
                ["one group frame (baseline)", d["group_frame_s"], 1.0],
            ],
        )
    )
    print(f"load average during the run: {result['loadavg'][0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        print("wrote", _common.save("dali_bus", {"quick": args.quick, **result}))


if __name__ == "__main__":
    main()
