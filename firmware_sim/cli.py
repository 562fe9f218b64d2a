"""``citynerve-sim``: run simulated field devices from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per protocol."""
    parser = argparse.ArgumentParser(prog="citynerve-sim", description=__doc__)
    sub = parser.add_subparsers(dest="protocol", required=True)
    mb = sub.add_parser("modbus", help="a lamp-cabinet controller over Modbus TCP or RTU")
    mb.add_argument("--host", default="127.0.0.1", help="TCP address to listen on")
    mb.add_argument("--port", type=int, default=5020, help="TCP port (0: any free port)")
    mb.add_argument("--lamps", type=int, default=8, help="number of lamps")
    mb.add_argument("--unit", type=int, default=1, help="Modbus unit id (1..247)")
    mb.add_argument("--rated-w", type=float, default=60.0, help="rated power per lamp, W")
    mb.add_argument("--delay-ms", type=float, default=None, help="response delay per request")
    mb.add_argument(
        "--churn", action="store_true", help="every register and bit changes on every read (benchmarks)"
    )
    mb.add_argument("--control-port", type=int, default=None, help="serve the JSON control API")
    rtu = mb.add_mutually_exclusive_group()
    rtu.add_argument("--rtu", metavar="SERIAL_PORT", help="serve RTU on this serial port")
    rtu.add_argument("--rtu-pty", action="store_true", help="serve RTU on a new pty pair")
    mb.add_argument("--baudrate", type=int, default=9600)
    mb.add_argument(
        "--parity", choices=["N", "E", "O"], default=None, help="serial parity (default E; N with --rtu-pty)"
    )
    mb.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    da = sub.add_parser("dali", help="a DALI bus of control gear behind a LUBA RS232 master, on a pty")
    da.add_argument("--lamps", type=int, default=64, help="control gear at short addresses 0.. (max 64)")
    da.add_argument(
        "--unaddressed",
        type=int,
        default=0,
        help="new gear without a short address (for citynerve-edge scan dali)",
    )
    da.add_argument("--fade-time", type=int, default=0, choices=range(16), help="fade time code 0-15")
    da.add_argument(
        "--sensors", type=int, default=0, help="occupancy sensors at control-device short addresses 0.."
    )
    da.add_argument(
        "--occupancy-every",
        type=float,
        default=0.0,
        metavar="S",
        help="every S seconds one sensor (in turn) toggles occupied/vacant; 0: never",
    )
    da.add_argument(
        "--timing", type=float, default=1.0, help="frame timing scale: 1 = real 1200 bit/s bus, 0 = instant"
    )
    bn = sub.add_parser("bacnet", help="a building's BACnet/IP device: fire, intrusion, doors, HVAC, meter")
    bn.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind")
    bn.add_argument("--port", type=int, default=47809, help="UDP port (not 47808: leave it to real devices)")
    bn.add_argument("--instance", type=int, default=1001, help="device instance (0..4194302)")
    bn.add_argument("--name", default="building", help="device object name")
    bn.add_argument(
        "--mask",
        type=int,
        help="subnet mask bits (e.g. 8 with --host 127.0.0.2): also answer a broadcast Who-Is "
        "to the subnet's broadcast address at --port",
    )
    return parser


async def run_bacnet(args: argparse.Namespace) -> int:
    """Serve one building device until SIGTERM or SIGINT."""
    from .bacnet import BuildingSim

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with BuildingSim(
        host=args.host, port=args.port, instance=args.instance, name=args.name, mask=args.mask
    ) as sim:
        print(f"bacnet-sim ready {sim.describe()} name={args.name}", flush=True)
        await stop.wait()
    return 0


async def run_modbus(args: argparse.Namespace) -> int:
    """Serve one cabinet until SIGTERM or SIGINT."""
    from .modbus import CabinetSim, ControlServer

    sim = CabinetSim(
        args.lamps,
        host=args.host,
        port=args.port,
        unit=args.unit,
        rated_w=args.rated_w,
        delay_s=None if args.delay_ms is None else args.delay_ms / 1000.0,
        rtu=args.rtu,
        rtu_pty=args.rtu_pty,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
        churn=args.churn,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(sim)
        line = f"modbus-sim ready {sim.describe()} unit={sim.unit} lamps={args.lamps}"
        if args.control_port is not None:
            control = await stack.enter_async_context(ControlServer(sim, args.host, args.control_port))
            line += f" control={control.url}"
        print(line, flush=True)
        await stop.wait()
    return 0


async def _toggle_sensors(sim: Any, every: float, stop: asyncio.Event) -> None:
    """Every ``every`` seconds, the next sensor in turn toggles occupied/vacant (one event)."""
    n = 0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        sensor = sim.sensors[n % len(sim.sensors)]
        sim.occupancy(sensor.short_address, not sensor.occupied)
        n += 1


async def run_dali(args: argparse.Namespace) -> int:
    """Serve one DALI bus on a new pty until SIGTERM or SIGINT."""
    from .dali import DaliBusSim

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DaliBusSim(
        args.lamps,
        timing=args.timing,
        fade_time=args.fade_time,
        sensors=args.sensors,
        unaddressed=args.unaddressed,
    ) as sim:
        print(
            f"dali-sim ready {sim.path} interface=luba232 lamps={args.lamps} sensors={args.sensors}"
            + (f" unaddressed={args.unaddressed}" if args.unaddressed else ""),
            flush=True,
        )
        if args.sensors and args.occupancy_every > 0:
            await _toggle_sensors(sim, args.occupancy_every, stop)
        else:
            await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``citynerve-sim``."""
    args = build_parser().parse_args(argv)
    runners = {"bacnet": run_bacnet, "dali": run_dali, "modbus": run_modbus}
    run = runners[args.protocol]
    try:
        return asyncio.run(run(args))
    except (OSError, ValueError) as err:
        print(f"citynerve-sim: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
