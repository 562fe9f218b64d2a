"""``citynerve-edge``: the daemon and the technician's commands at the cabinet."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnconfig import EXIT_BAD_CONFIG, ConfigError

from . import config as edge_config
from . import control

DEFAULT_SOCKET = Path("/var/lib/citynerve-edge/control.sock")
EXIT_NO_DAEMON = 3


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return edge_config.load(args.config).socket_path
    env = os.environ.get("CITYNERVE_EDGE_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _fmt_budget(b: dict[str, Any] | None) -> str:
    """``12.5/27.8 frames/s (45%)``: used vs available at the current mix; ``-`` if not kept."""
    if not b:
        return "-"
    return f"{b['frames_per_s']}/{b['max_frames_per_s']} frames/s ({b['utilisation']:.0%})"


def _print_status(s: dict[str, Any]) -> None:
    up = s["uplink"]
    state = "connected" if up["connected"] else f"DISCONNECTED ({up['last_error'] or 'connecting'})"
    hub = {True: "online", False: "OFFLINE", None: "unknown"}[up["hub_online"]]
    print(f"gateway   {s['gateway']}  ({s['version']}, session {s['session']}, up {s['uptime_s']}s)")
    print(f"config    {s['config']}  hash {s['config_hash']}")
    print(f"uplink    {state} to {up['broker']}; hub {hub}")
    print(f"queued    {up['queued_samples']} samples, {up['queued_urgent']} events/acks; last seq {s['seq']}")
    if "buffered" in up:
        print(f"buffer    {up['buffered']} messages on disk, {up['replay']} (details: citynerve-edge buffer)")
    plan = s.get("plan")
    if plan:
        if plan.get("version"):
            what = (
                f"{plan['version']} for {plan['lamps']} lamps; {plan['writes']} writes, "
                f"{plan['write_failures']} failed, {plan['corrections']} corrections"
            )
        else:
            what = "none (the hub has not sent one yet)"
        if plan.get("last_error"):
            what += f"; last error: {plan['last_error']}"
        print(f"plan      {what}")
    c = s["counters"]
    print(
        f"published {c['samples_published']} samples in {c['messages_published']} messages, "
        f"{c['events_published']} events, {c['acks_published']} acks; dropped {c['samples_dropped']}"
    )
    print(
        f"commands  {c['commands_received']} received, {c['commands_duplicate']} duplicate, "
        f"{c['commands_malformed']} malformed"
    )
    print()
    print(
        _table(
            [
                [
                    b["id"],
                    b["driver"],
                    "running" if b["running"] else "STOPPED",
                    str(b["reads"]),
                    str(b["restarts"]),
                    _fmt_budget(b.get("budget")),
                ]
                for b in s["buses"]
            ],
            ["BUS", "DRIVER", "STATE", "READS", "RESTARTS", "BUS BUDGET"],
        )
    )
    print()
    print(
        _table(
            [
                [d["id"], d["bus"], d["kind"], d["health"], _ts(d["last_ok_ms"]), d["last_error"]]
                for d in s["devices"]
            ],
            ["DEVICE", "BUS", "KIND", "HEALTH", "LAST OK", "LAST ERROR"],
        )
    )
    _print_cov(s)


def _print_cov(s: dict[str, Any]) -> None:
    """COV subscriptions (BACnet), if any bus keeps them: state, renewals, notifications."""
    rows = [
        [
            c["device"],
            c["point"],
            b["id"],
            c["state"],
            str(c["renewals"]),
            str(c["notifications"]),
            c["reason"],
        ]
        for b in s["buses"]
        for c in b.get("cov") or []
    ]
    if rows:
        print()
        print(_table(rows, ["COV DEVICE", "POINT", "BUS", "STATE", "RENEWALS", "NOTIFIED", "REASON"]))


def _fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _print_points(rows: list[dict[str, Any]]) -> None:
    print(
        _table(
            [
                [
                    r["device"],
                    r["point"],
                    _fmt_value(r["value"]),
                    r["unit"],
                    r["quality"] or "-",
                    _ts(r["ts_ms"]),
                    "rw" if r["writable"] else "r",
                ]
                for r in rows
            ],
            ["DEVICE", "POINT", "VALUE", "UNIT", "QUALITY", "TIME", "ACCESS"],
        )
    )


async def _ask(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any]:
    path = _socket_path(args)
    try:
        resp = await control.request(path, op, **kw)
    except (FileNotFoundError, ConnectionRefusedError) as err:
        print(
            f"citynerve-edge: no daemon answers on {path} ({err.strerror}); is the service running? "
            "(systemctl status citynerve-edge)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_DAEMON) from None
    if not resp.get("ok"):
        print(f"citynerve-edge: {resp.get('error')}", file=sys.stderr)
        raise SystemExit(2)
    return resp


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    from .daemon import run

    cfg = edge_config.load(args.config)
    logging.basicConfig(
        level=args.log_level or cfg.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pymodbus logs an ERROR for every timeout; the driver logs each device's loss and
    # recovery once, which is what a technician reading the journal needs.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(run(cfg))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate config files; print every problem."""
    bad = False
    for f in args.files:
        try:
            cfg = edge_config.load(f)
        except ConfigError as err:
            for issue in err.issues:
                print(issue, file=sys.stderr)
            bad = True
            continue
        npoints = sum(len(d.points) for d in cfg.devices)
        print(
            f"{f}: OK (gateway {cfg.gateway.id}, {len(cfg.buses)} buses, "
            f"{len(cfg.devices)} devices, {npoints} points)"
        )
    return EXIT_BAD_CONFIG if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show the running daemon's status."""
    resp = asyncio.run(_ask(args, "status"))
    if args.json:
        print(json.dumps(resp, indent=2))
    else:
        _print_status(resp)
    return 0


def cmd_points(args: argparse.Namespace) -> int:
    """Show live point values."""
    kw = {"device": args.device} if args.device else {}
    resp = asyncio.run(_ask(args, "points", **kw))
    if args.json:
        print(json.dumps(resp["points"], indent=2))
    else:
        _print_points(resp["points"])
    return 0


from .cli_buffer import cmd_buffer  # noqa: E402  (after _ask, which it uses)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="citynerve-edge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("--config", "-c", required=True, help="edge YAML config file")
    r.add_argument("--log-level", help="override the config's log_level (DEBUG, INFO, ...)")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check-config", help="validate config files and report every error")
    c.add_argument("files", nargs="+")
    c.set_defaults(fn=cmd_check)

    for name, fn, help_ in (
        ("status", cmd_status, "uplink state, device health and counters of the running daemon"),
        ("points", cmd_points, "live values of every point"),
        ("buffer", cmd_buffer, "the store-and-forward buffer: what waits, how old, drops, replay"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", "-c", help="config file (to find the control socket)")
        s.add_argument(
            "--socket", help=f"control socket path (default $CITYNERVE_EDGE_SOCKET or {DEFAULT_SOCKET})"
        )
        s.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "points":
            s.add_argument("--device", "-d", help="only this device")
        s.set_defaults(fn=fn)

    # `scan <bus kind>`: each kind registers its own sub-subcommand (scan dali, scan bacnet, ...)
    scan = sub.add_parser("scan", help="discover and commission devices on a bus, with progress")
    scans = scan.add_subparsers(dest="scan_kind", required=True)
    from . import cli_bacnet, cli_dali  # import this module: loaded here, not at the top

    cli_dali.register(sub, scans)
    cli_bacnet.register(sub, scans)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``citynerve-edge`` console script."""
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
