"""The local control socket: one JSON request line in, one JSON response line out.

The technician CLI talks to the running daemon through it; it works with no network at all.
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
MAX_REQUEST = 64 * 1024


async def serve(path: Path, handlers: dict[str, Handler]) -> asyncio.Server:
    """Listen on a Unix socket (mode 0660) and dispatch ``{"op": ...}`` requests."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                req = json.loads(line[:MAX_REQUEST] or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                handler = handlers.get(str(req.get("op")))
                if handler is None:
                    resp = {
                        "ok": False,
                        "error": f"unknown op {req.get('op')!r} (known: {', '.join(sorted(handlers))})",
                    }
                else:
                    resp = {"ok": True, **(await handler(req))}
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


async def request(path: Path, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request to a running daemon and return its response."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=2**24), timeout)
    try:
        writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    resp = json.loads(line)
    assert isinstance(resp, dict)
    return resp
