"""``citynerve-edge scan dali`` and ``citynerve-edge dali ...``: commissioning and DALI bus tools.

When the edge daemon runs it owns the serial port: the request goes through its control socket
into the bus's scheduler (ahead of polling). When no daemon answers, the CLI opens the port
itself, from the bus of ``--config`` or from ``--port``. Progress goes to stderr, results to
stdout (``--json`` for machines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnconfig import ConfigError

from . import config as edge_config
from . import control
from .cli import DEFAULT_SOCKET, EXIT_NO_DAEMON, _socket_path, _table

EXIT_FAILED = 2
# An idle limit, not a total: a scan of 64 gear sends progress at least every few seconds.
IDLE_TIMEOUT_S = 120.0


def register(sub: argparse._SubParsersAction, scan: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``scan dali`` to the ``scan`` subcommands and ``dali ...`` to the top-level ones."""
    s = scan.add_parser(
        "dali",
        help="find DALI gear (random-address search), give free short addresses, list them",
        description="Commission a DALI bus: gear without a short address get the lowest free ones "
        "(existing addresses are kept unless --readdress); every gear found is listed.",
    )
    _common(s)
    s.add_argument(
        "--readdress", action="store_true", help="clear every short address and number all gear anew"
    )
    s.add_argument(
        "--addresses", help="short addresses that may be given, e.g. 0-9,20 (default: every free one)"
    )
    s.add_argument(
        "--write-config", metavar="FILE", help="write a starter edge config listing the gear found"
    )
    s.set_defaults(fn=cmd_scan)

    d = sub.add_parser("dali", help="DALI technician commands: query, fade, identify, group, scene")
    dsub = d.add_subparsers(dest="dali_command", required=True)
    q = dsub.add_parser("query", help="a gear's level, status bits, device types, groups, fades, scenes")
    _common(q)
    q.add_argument("address", type=int, help="short address 0-63")
    q.set_defaults(fn=cmd_tool, action="query")

    f = dsub.add_parser("fade", help="set fade time and/or fade rate (send-twice configuration)")
    _common(f)
    _target(f)
    f.add_argument("--time", type=int, choices=range(16), metavar="0-15", help="fade time code (0: none)")
    f.add_argument("--rate", type=int, choices=range(1, 16), metavar="1-15", help="fade rate code")
    f.set_defaults(fn=cmd_tool, action="fade")

    i = dsub.add_parser("identify", help="blink a lamp (DALI-2 IDENTIFY DEVICE, else OFF/MAX toggles)")
    _common(i)
    i.add_argument("address", type=int, help="short address 0-63")
    i.add_argument("--blinks", type=int, default=3, help="toggles for DALI-1 gear (default 3)")
    i.set_defaults(fn=cmd_tool, action="identify")

    g = dsub.add_parser("group", help="add a gear to a group or remove it (send-twice configuration)")
    _common(g)
    g.add_argument("group_action", choices=("add", "remove"))
    g.add_argument("address", type=int, help="short address 0-63")
    g.add_argument("group", type=int, help="group 0-15")
    g.set_defaults(fn=cmd_tool, action="group")

    sc = dsub.add_parser("scene", help="store a level as scene N, remove it, or go to scene N")
    _common(sc)
    _target(sc)
    how = sc.add_mutually_exclusive_group(required=True)
    how.add_argument("--store", type=int, metavar="N", help="store --level as scene N (0-15)")
    how.add_argument("--remove", type=int, metavar="N", help="remove the gear from scene N")
    how.add_argument("--go", type=int, metavar="N", help="GO TO SCENE N")
    sc.add_argument("--level", type=float, help="the scene's level in percent (with --store)")
    sc.set_defaults(fn=cmd_tool, action="scene")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bus", "-b", help="the DALI bus id (from the config)")
    p.add_argument("--config", "-c", help="edge config: the bus's serial port, and the control socket")
    p.add_argument(
        "--socket", help=f"control socket path (default $CITYNERVE_EDGE_SOCKET or {DEFAULT_SOCKET})"
    )
    p.add_argument("--port", help="no daemon, no config: open this serial port (luba232) directly")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _target(p: argparse.ArgumentParser) -> None:
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--address", "-a", type=int, help="one gear, short address 0-63")
    t.add_argument("--group", "-g", type=int, help="every gear of group 0-15 (one frame)")
    t.add_argument("--broadcast", action="store_true", help="every gear on the bus (one frame)")


def _tool_args(args: argparse.Namespace) -> dict[str, Any]:
    action = args.action
    if action in ("query", "identify"):
        out: dict[str, Any] = {"address": args.address}
        if action == "identify":
            out["blinks"] = args.blinks
        return out
    if action == "group":
        return {"address": args.address, "group": args.group, "action": args.group_action}
    out = {"address": args.address, "group": args.group, "broadcast": args.broadcast or None}
    if action == "fade":
        out.update(fade_time=args.time, fade_rate=args.rate)
    else:
        if args.store is not None and args.level is None:
            raise _Usage("--store needs --level (percent)")
        out.update(store=args.store, remove=args.remove, go=args.go, level=args.level)
    return {k: v for k, v in out.items() if v is not None}


class _Usage(Exception):
    """A command line that cannot work; the message says why."""


def _progress(msg: dict[str, Any]) -> None:
    """One progress line on stderr: a message, or how far the search has come."""
    text = msg.get("message")
    if isinstance(text, str) and text.startswith("Available addresses: ["):
        free = text.partition("[")[2].rstrip("]")
        text = f"free short addresses: {_ranges([int(a) for a in free.split(',') if a.strip()])}"
    done, size = msg.get("completed"), msg.get("size")
    if not text and isinstance(done, int) and isinstance(size, int) and size:
        text = f"searching random addresses: {done / size:.0%}"
    if text:
        print(f"  {text}", file=sys.stderr, flush=True)


def _ranges(values: list[int]) -> str:
    """``0-9,20``: sorted integers as ranges."""
    out: list[str] = []
    for v in sorted(values):
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out) or "none"


async def _run(args: argparse.Namespace, action: str, tool_args: dict[str, Any]) -> dict[str, Any]:
    """Through the daemon if one answers, else with the port opened here."""
    path = _socket_path(args) if args.socket or args.config or not args.port else None
    if path is not None:
        try:
            resp = await control.request(
                path,
                "bus_tool",
                timeout=IDLE_TIMEOUT_S,
                on_progress=_progress,
                bus=_bus_id(args),
                action=action,
                args=tool_args,
            )
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # no daemon: open the port here
        else:
            if not resp.get("ok"):
                raise _Failed(str(resp.get("error")))
            print(f"(through the running daemon on {path})", file=sys.stderr)
            result: dict[str, Any] = resp["result"]
            return result
    elif await _daemon_answers(DEFAULT_SOCKET):
        raise _Usage(f"the daemon on {DEFAULT_SOCKET} owns the buses: give --bus ID instead of --port")
    return await _run_here(args, action, tool_args)


async def _daemon_answers(path: Path) -> bool:
    try:
        await control.request(path, "status", timeout=2)
    except (OSError, TimeoutError, ValueError):
        return False
    return True


class _Failed(Exception):
    """The bus operation failed; the message says how."""


def _bus_id(args: argparse.Namespace) -> str:
    if args.bus:
        return str(args.bus)
    if args.config:
        buses = [b.id for b in edge_config.load(args.config).buses if b.driver == "dali"]
        if len(buses) == 1:
            return buses[0]
        raise _Usage(f"{args.config} has {len(buses)} DALI buses ({', '.join(buses) or 'none'}): give --bus")
    raise _Usage("give --bus ID (with the daemon running or --config FILE), or --port /dev/ttyX")


async def _run_here(args: argparse.Namespace, action: str, tool_args: dict[str, Any]) -> dict[str, Any]:
    from drivers.base import DriverError
    from drivers.dali import DaliBusConfig, DaliDriver

    if args.port:
        bus = DaliBusConfig(id=args.bus or "dali1", serial_port=args.port)
    elif args.config:
        bus_id = _bus_id(args)
        found = [b for b in edge_config.load(args.config).buses if b.id == bus_id]
        if not found or not isinstance(found[0], DaliBusConfig):
            raise _Usage(f"{args.config} has no DALI bus {bus_id!r}")
        bus = found[0]
    else:
        raise _Usage(
            f"no daemon answers on {_socket_path(args)}: "
            "give --config FILE (to open the bus's port) or --port"
        )
    print(f"(no daemon: opening {bus.describe()} here)", file=sys.stderr)
    # python-dali logs each framing error; in a search they are several gear answering YES
    logging.getLogger("dali").setLevel(logging.ERROR)
    try:
        async with DaliDriver(bus) as driver:
            return await driver.tool(action, tool_args, _progress)
    except DriverError as err:
        raise _Failed(f"{type(err).__name__}: {err}") from err


def _addresses(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise _Usage(f"--addresses {spec!r}: use e.g. 0-9,20") from None
    if not all(0 <= a <= 63 for a in out):
        raise _Usage(f"--addresses {spec!r}: short addresses are 0-63")
    return out


def _guard(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except _Usage as err:
            print(f"citynerve-edge: {err}", file=sys.stderr)
            return EXIT_FAILED
        except _Failed as err:
            print(f"citynerve-edge: {err}", file=sys.stderr)
            return EXIT_FAILED
        except PermissionError as err:
            print(f"citynerve-edge: {err} (run as the citynerve user or root)", file=sys.stderr)
            return EXIT_NO_DAEMON

    return wrapped


@_guard
def cmd_scan(args: argparse.Namespace) -> int:
    """Commission the bus and list its gear."""
    tool_args: dict[str, Any] = {"readdress": args.readdress}
    if (free := _addresses(args.addresses)) is not None:
        tool_args["addresses"] = free
    if args.write_config and Path(args.write_config).exists():
        raise _Usage(f"{args.write_config} exists: not overwritten (give a new file name)")
    print("scanning the DALI bus (random-address search; ~0.1-0.2 s per bit per gear) ...", file=sys.stderr)
    result = asyncio.run(_run(args, "scan", tool_args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_gear(result)
    if args.write_config:
        Path(args.write_config).write_text(starter_config(result, args))
        print(f"wrote {args.write_config}: check it with citynerve-edge check-config", file=sys.stderr)
    return 0


def _print_gear(result: dict[str, Any]) -> None:
    rows = []
    for g in result["gear"]:
        if "error" in g:
            rows.append([f"A{g['address']}", "new" if g["new"] else "kept", *["?"] * 5, g["error"]])
            continue
        faults = [k for k, v in g["status"].items() if v and k not in ("lamp_on", "fade_running")]
        rows.append(
            [
                f"A{g['address']}",
                "new" if g["new"] else "kept",
                g["random_address"],
                "DALI-2" if g["dali2"] else f"DALI {g['version']}",
                ",".join(map(str, g["device_types"])) or "-",
                ",".join(map(str, g["groups"])) or "-",
                "-" if g["level"] is None else f"{g['level']:g}%",
                ",".join(faults) or "ok",
            ]
        )
    print(_table(rows, ["ADDRESS", "SHORT ADDR", "RANDOM", "VERSION", "TYPES", "GROUPS", "LEVEL", "STATUS"]))
    new = result["programmed"]
    print(f"{len(result['gear'])} gear on bus {result['bus']}; {len(new)} given a short address now")


def starter_config(result: dict[str, Any], args: argparse.Namespace) -> str:
    """A commented edge config with the bus and one device per gear found (default points)."""
    gateway = "CHANGE-ME"
    if args.config:
        try:
            gateway = edge_config.load(args.config).gateway.id
        except ConfigError:
            pass
    bus = result["bus"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Starter config written by `citynerve-edge scan dali` on {when}: {len(result['gear'])} gear",
        f"# on bus {bus}. Name the lamps, add mqtt/publish settings (docs/edge.md), then check it:",
        "#   citynerve-edge check-config FILE",
        "# Each lamp has the default points: level (writable, %), lamp_failure, gear_failure and",
        "# power_failure, each fault an alarm event (docs/dali.md).",
        "gateway:",
        f"  id: {gateway}",
        "buses:",
        f"  - {{id: {bus}, driver: dali, interface: {result.get('interface', 'luba232')}, "
        f"serial_port: {result.get('serial_port', '/dev/ttyUSB0')}}}",
        "devices:",
    ]
    groups: set[int] = set()
    for g in result["gear"]:
        if "error" in g:
            lines.append(f"  # A{g['address']}: {g['error']}")
        groups.update(g.get("groups", ()))
        member = f", groups: [{', '.join(map(str, g['groups']))}]" if g.get("groups") else ""
        lines.append(
            f"  - {{id: {bus}-L{g['address']:02d}, bus: {bus}, kind: lamp, address: {g['address']}{member}}}"
        )
    level = '{id: level, unit: "%", writable: true, min: 0, max: 100, interval_s: 60}'
    for n in sorted(groups):
        lines.append(f"  - {{id: {bus}-G{n}, bus: {bus}, group: {n}, points: [{level}]}}")
    lines.append(
        f"  - {{id: {bus}-all, bus: {bus}, broadcast: true, points: [{level}, "
        "{id: missing_short_address, interval_s: 300}]}"
    )
    return "\n".join(lines) + "\n"


@_guard
def cmd_tool(args: argparse.Namespace) -> int:
    """One DALI tool (query, fade, identify, group, scene) on one gear, group or the bus."""
    result = asyncio.run(_run(args, args.action, _tool_args(args)))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.action == "query":
        for key, value in result.items():
            if key == "status":
                value = ", ".join(k for k, v in value.items() if v) or "-"
            print(f"{key:<16}{value}")
    else:
        print("  ".join(f"{k} {v}" for k, v in result.items()))
    return 0
