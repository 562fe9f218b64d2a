"""The local control socket: one JSON request line in, one JSON response line out.

The technician CLI talks to the running daemon through it; it works with no network at all.
A streaming op (a bus scan) may send ``{"progress": {...}}`` lines before its response line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Progress = Callable[[dict[str, Any]], None]
# A long op that reports progress: it gets a function that sends one progress line.
StreamHandler = Callable[[dict[str, Any], Progress], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


async def serve(
    path: Path, handlers: dict[str, Handler], streams: dict[str, StreamHandler] | None = None
) -> asyncio.Server:
    """Listen on a Unix socket (mode 0660) and dispatch ``{"op": ...}`` requests."""
    streams = streams or {}
    known = sorted([*handlers, *streams])

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                req = json.loads(line[:MAX_REQUEST] or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                op = str(req.get("op"))
                handler = handlers.get(op)
                stream = streams.get(op)

                def progress(msg: dict[str, Any]) -> None:
                    if not writer.is_closing():
                        writer.write(json.dumps({"progress": msg}, default=str).encode() + b"\n")

                if handler is not None:
                    resp = {"ok": True, **(await handler(req))}
                elif stream is not None:
                    resp = {"ok": True, **(await stream(req, progress))}
                else:
                    resp = {
                        "ok": False,
                        "error": f"unknown op {req.get('op')!r} (known: {', '.join(known)})",
                    }
            except (ValueError, KeyError, TypeError) as err:
                resp = {"ok": False, "error": str(err)}
            writer.write(json.dumps(resp, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_socket():
        path.unlink()
    server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_REQUEST)
    os.chmod(path, 0o660)
    return server


async def request(
    path: Path, op: str, timeout: float = 10.0, on_progress: Progress | None = None, **args: Any
) -> dict[str, Any]:
    """Send one request to a running daemon and return its response.

    Progress lines go to ``on_progress``; ``timeout`` is the longest wait for any line.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=2**24), timeout)
    try:
        writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            resp = json.loads(line)
            if not (isinstance(resp, dict) and "progress" in resp and "ok" not in resp):
                break
            if on_progress is not None:
                on_progress(resp["progress"])
    finally:
        writer.close()
    assert isinstance(resp, dict)
    return resp
