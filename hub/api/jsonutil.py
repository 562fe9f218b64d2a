"""JSON helpers: timestamps, query parameters and error bodies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import ApiError

_DIGITS = re.compile(r"^-?\d+$")


def iso(ts_ms: int | None) -> str | None:
    """Epoch ms as ISO 8601 UTC with milliseconds, e.g. ``2025-01-31T18:00:00.123Z``."""
    if ts_ms is None:
        return None
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def parse_time(name: str, raw: str) -> int:
    """ISO 8601 (naive means UTC) or epoch milliseconds -> epoch ms; ApiError 400 otherwise."""
    raw = raw.strip()
    if _DIGITS.match(raw):
        return int(raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name}: expected ISO 8601 or epoch milliseconds, got {raw!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]; ApiError 400 naming it otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name}: must be between {lo} and {hi}")
    return value


def choice_param(request: web.Request, name: str, choices: tuple[str, ...], default: str | None
                 ) -> str | None:
    """A query parameter limited to some values; ApiError 400 naming it otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise ApiError(400, "invalid_parameter", f"{name}: must be one of {', '.join(choices)}")
    return raw


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error."""
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An error as a JSON response."""
    return web.json_response(error_body(code, message), status=status, headers=headers)


def dumps(obj: Any) -> str:
    """Compact JSON (UUIDs as strings)."""
    return json.dumps(obj, separators=(",", ":"), default=str)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; ApiError 400 saying what is wrong."""
    text = await request.text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body
