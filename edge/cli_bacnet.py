"""``citynerve-edge scan bacnet``: find BACnet/IP devices (Who-Is/I-Am) and list their objects.

Standalone, with or without the daemon running: the scan opens its own bacpypes3 application
on a fresh UDP port of the bus's IP (never the daemon's bus port), so the two never compete for
a socket; devices answer each client at its own address. Progress goes to stderr, results to
stdout (``--json`` for machines); ``--write-config FILE`` writes a starter edge config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import config as edge_config
from .cli import _fmt_value, _table

EXIT_FAILED = 2


class _Usage(Exception):
    """A command line that cannot work; the message says why."""


def register(sub: argparse._SubParsersAction, scan: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``scan bacnet`` to the ``scan`` subcommands."""
    s = scan.add_parser(
        "bacnet",
        help="find BACnet/IP devices (Who-Is) and list their objects: name, type, value, units",
        description="Who-Is to the bus's broadcast address (or --target), then every device's "
        "object-list with object-name, present-value and units. Runs on its own UDP port, so the "
        "daemon may keep running.",
    )
    s.add_argument("--config", "-c", help="edge config: the bacnet bus's IP, timeouts and Who-Is target")
    s.add_argument("--bus", "-b", help="the bacnet bus id (when the config has several)")
    s.add_argument("--local", help="no config: the IP (optionally /mask) to scan from, e.g. 10.20.0.5/24")
    s.add_argument(
        "--target",
        "-t",
        action="append",
        help="ip[:port] to send Who-Is to (a broadcast address or one device; repeatable). "
        "Default: the bus's who_is_to (its subnet broadcast) and every configured device address",
    )
    s.add_argument("--low", type=int, help="lowest device instance (with --high)")
    s.add_argument("--high", type=int, help="highest device instance (with --low)")
    s.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for I-Am (default 2)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--write-config", metavar="FILE", help="write a starter edge config for the devices found")
    s.set_defaults(fn=cmd_scan)


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _plan(args: argparse.Namespace) -> tuple[Any, list[str | None], dict[str, Any], str]:
    """(bus config for the scan, Who-Is targets, bus section for a starter config, gateway id)."""
    from drivers.bacnet import BacnetBusConfig
    from drivers.bacnet.config import parse_address

    if (args.low is None) != (args.high is None):
        raise _Usage("give --low and --high together")
    gateway = "CHANGE-ME"
    targets: list[str | None] = list(args.target or [])
    if args.config:
        cfg = edge_config.load(args.config)
        gateway = cfg.gateway.id
        buses = [
            b for b in cfg.buses if isinstance(b, BacnetBusConfig) and (not args.bus or b.id == args.bus)
        ]
        if len(buses) != 1:
            names = ", ".join(b.id for b in cfg.buses if b.driver == "bacnet") or "none"
            raise _Usage(
                f"{args.config}: {len(buses)} matching BACnet buses (bacnet buses: {names}): give --bus"
            )
        bus = buses[0]
        ip, mask, _ = parse_address(bus.address, mask_allowed=True)
        section = {"id": bus.id, "driver": "bacnet", "address": bus.address}
        if not targets:
            targets = [bus.who_is_address()]
            for d in edge_config.devices_on(cfg, bus.id):
                addr = getattr(d, "bacpypes_address", lambda: None)()
                if addr is not None and addr not in targets:
                    targets.append(addr)
        timing = {"apdu_timeout_s": bus.apdu_timeout_s, "apdu_retries": bus.apdu_retries}
    elif args.local:
        try:
            ip, mask, _ = parse_address(args.local, mask_allowed=True)
        except ValueError as err:
            raise _Usage(f"--local: {err}") from None
        section = {"id": args.bus or "bms", "driver": "bacnet", "address": f"{args.local.partition(':')[0]}"}
        timing = {}
    else:
        raise _Usage("give --config FILE (the bacnet bus to scan from) or --local IP[/mask]")
    where = ip if mask is None else f"{ip}/{mask}"
    scan_bus = BacnetBusConfig.model_validate(
        {
            "id": section["id"],
            "driver": "bacnet",
            "address": f"{where}:{_free_port(ip)}",
            "who_is_timeout_s": args.timeout,
            **timing,
        }
    )
    if not targets:
        targets = [scan_bus.who_is_address()]
    return scan_bus, targets, section, gateway


async def _scan(scan_bus: Any, targets: list[str | None], args: argparse.Namespace) -> list[dict[str, Any]]:
    from drivers.bacnet import BacnetDriver
    from drivers.bacnet.scan import scan

    async with BacnetDriver(scan_bus, []) as driver:
        return await scan(driver, targets, args.low, args.high, _progress)


def cmd_scan(args: argparse.Namespace) -> int:
    """Scan for BACnet devices and list their objects."""
    from drivers.base import DriverError

    try:
        if args.write_config and Path(args.write_config).exists():
            raise _Usage(f"{args.write_config} exists: not overwritten (give a new file name)")
        scan_bus, targets, section, gateway = _plan(args)
        print(
            f"scanning from {scan_bus.bacpypes_address()} (its own port; the daemon may run)", file=sys.stderr
        )
        devices = asyncio.run(_scan(scan_bus, targets, args))
    except _Usage as err:
        print(f"citynerve-edge: {err}", file=sys.stderr)
        return EXIT_FAILED
    except DriverError as err:
        print(f"citynerve-edge: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"devices": devices}, indent=2, ensure_ascii=False))
    else:
        _print_devices(devices)
    if args.write_config:
        from drivers.bacnet.scan import starter_config

        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        Path(args.write_config).write_text(starter_config(devices, gateway, section, when))
        print(f"wrote {args.write_config}: check it with citynerve-edge check-config", file=sys.stderr)
    return 0


def _print_devices(devices: list[dict[str, Any]]) -> None:
    for d in devices:
        print(f"device,{d['instance']}  {d['name'] or '?'}  at {d['address']}  ({len(d['objects'])} objects)")
        if "error" in d:
            print(f"  ERROR {d['error']}")
        rows = [
            [
                o["object"],
                o["name"],
                o["type"],
                _fmt_value(o["present_value"]),
                o["units"],
                o.get("error", ""),
            ]
            for o in d["objects"]
        ]
        if rows:
            print(_table(rows, ["OBJECT", "NAME", "TYPE", "PRESENT VALUE", "UNITS", "ERROR"]))
        print()
    print(f"{len(devices)} device(s), {sum(len(d['objects']) for d in devices)} objects")


__all__ = ["cmd_scan", "register"]
