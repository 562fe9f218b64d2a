"""``citynerve-edge buffer``: what the store-and-forward buffer holds, from the running daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return (
        f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m"
        if s >= 86400
        else f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"
    )


def format_buffer(b: dict[str, Any]) -> str:
    """The human-readable report."""
    replay = b["replay"]
    hub = {True: "online", False: "OFFLINE", None: "unknown"}[b["hub_online"]]
    lines = [
        f"buffer {b['path']}: {'ok' if b['disk_ok'] else 'WRITE FAILING: ' + b['last_error']}",
        f"  buffered   {b['messages']} messages ({b['samples']} samples, {b['events']} events, "
        f"{b['acks']} acks), {b['bytes']} bytes of {b['max_bytes']}"
        + (f"; {b['memory_messages']} held in memory" if b["memory_messages"] else ""),
        f"  oldest     {_age(b['oldest_age_s'])} (bound {b['max_age_h']:g} h)",
        f"  dropped    {b['dropped_messages']} messages ({b['dropped_samples']} samples) since start; "
        f"{b['drops_unreported']['messages']} not yet reported to the hub",
        f"  uplink     {'connected' if b['uplink_connected'] else 'DISCONNECTED'}, hub {hub}",
        f"  replay     {replay.get('state')}: {replay.get('replayed_messages', 0)} of "
        f"{replay.get('backlog_at_start', 0)} backlog messages sent this connection; "
        f"{b['messages_replayed']} messages ({b['samples_replayed']} samples) replayed since start",
    ]
    return "\n".join(lines)


def cmd_buffer(args: argparse.Namespace) -> int:
    """Show the buffer of the running daemon."""
    from .cli import _ask

    resp = asyncio.run(_ask(args, "buffer"))
    resp.pop("ok", None)
    print(json.dumps(resp, indent=2) if args.json else format_buffer(resp))
    return 0
