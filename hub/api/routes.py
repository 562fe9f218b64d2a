"""The ``/api/v1`` handlers."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from wire import CommandAction

from ..commands import STATUSES, command_action
from ..errors import ApiError
from ..keys import COUNTERS, DISPATCHER, LINK, REGISTRY, SETTINGS, STORAGE, WRITER
from ..registry import DeviceState, GatewayState, PointState
from ..storage import quality_name
from ..tokens import ROLES, create_token
from .jsonutil import choice_param, int_param, iso, parse_time, read_json
from .middleware import TOKEN, auth_mw, errors_mw, needs
from .openapi import openapi_document

API_PREFIX = "/api/v1"
TELEMETRY_DEFAULT_LIMIT = 1000
TELEMETRY_MAX_LIMIT = 10000
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
DEFAULT_WINDOW_MS = 24 * 3600 * 1000

routes = web.RouteTableDef()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# -- representations ----------------------------------------------------------------------------


GAPS_LISTED = 50
REPLAY_ACTIVE_MS = 10_000


def gateway_json(gw: GatewayState, devices: int, now_ms: int, skew_max_ms: int) -> dict[str, Any]:
    """A gateway as JSON (the list's summary; the detail adds ranges, see gateway_detail)."""
    t = gw.track
    open_gaps = t.open_gaps()
    offset = t.clock_offset_ms(now_ms)
    return {
        "id": gw.name, "online": gw.online, "session": gw.session,
        "last_seen": iso(gw.last_seen_ms), "last_seen_ms": gw.last_seen_ms,
        "sw_version": gw.sw_version, "config_hash": gw.config_hash, "last_seq": gw.last_seq,
        "devices": devices,
        "open_gaps": len(open_gaps), "missing": sum(g.size for g in open_gaps),
        "replaying": t.hist_last_rx_ms is not None and now_ms - t.hist_last_rx_ms < REPLAY_ACTIVE_MS,
        "clock_offset_ms": offset,
        "clock_skew": offset is not None and abs(offset) > skew_max_ms,
    }


def gateway_detail(gw: GatewayState, devices: list[str], now_ms: int, skew_max_ms: int) -> dict[str, Any]:
    """One gateway with its seq gaps, replay progress and clock."""
    t = gw.track
    open_gaps = t.open_gaps()
    return {
        **gateway_json(gw, len(devices), now_ms, skew_max_ms),
        "device_ids": devices,
        "gaps": [{"from_seq": g.lo, "to_seq": g.hi, "missing": g.size, "opened": iso(g.opened_ms),
                  "opened_ms": g.opened_ms} for g in open_gaps[-GAPS_LISTED:]],
        "restart_skips": sum(g.restart for g in t.gaps),
        "gaps_forgotten": t.forgotten,
        "replay": {
            "messages_total": t.hist_total,
            "messages_recent": t.historical_recent(now_ms),
            "newest_ts": iso(t.hist_newest_ts_ms), "newest_ts_ms": t.hist_newest_ts_ms,
            "last_received": iso(t.hist_last_rx_ms), "last_received_ms": t.hist_last_rx_ms,
        },
        "clock_skew_max_ms": skew_max_ms,
    }


def point_json(pt: PointState) -> dict[str, Any]:
    """A point and its latest value as JSON."""
    return {
        "id": pt.name, "type": pt.type, "unit": pt.unit, "min": pt.min, "max": pt.max,
        "writable": pt.writable, "declared": pt.declared, "value": pt.typed(pt.value),
        "ts": iso(pt.ts_ms), "ts_ms": pt.ts_ms, "quality": quality_name(pt.quality),
    }


def device_json(dev: DeviceState, gateway: str, with_points: bool) -> dict[str, Any]:
    """A device as JSON."""
    out: dict[str, Any] = {
        "id": dev.name, "gateway": gateway, "kind": dev.kind, "driver": dev.driver,
        "declared": dev.declared,
        **({"members": list(dev.members)} if dev.members else {}),
    }
    if with_points:
        out["points"] = [point_json(p) for p in dev.points.values()]
    else:
        out["point_count"] = len(dev.points)
    return out


def command_json(c: dict[str, Any]) -> dict[str, Any]:
    """A stored command as JSON."""
    action, value = command_action(c["value"])
    return {
        "id": str(c["id"]), "gateway": c["gateway__name"], "device": c["device"],
        "point": c["point"], "value": value, "action": action,
        "status": c["status"], "detail": c["detail"],
        "readback": c["readback"], "source": c["source"],
        "created": iso(c["created_ms"]), "created_ms": c["created_ms"],
        "expires": iso(c["expires_ms"]), "expires_ms": c["expires_ms"],
        "acked": iso(c["acked_ms"]), "acked_ms": c["acked_ms"],
    }


def _device(request: web.Request) -> DeviceState:
    name = request.match_info["id"]
    dev = request.app[REGISTRY].devices.get(name)
    if dev is None:
        raise ApiError(404, "unknown_device", f"no device {name!r}")
    return dev


def _range(request: web.Request) -> tuple[int, int]:
    to_raw, from_raw = request.query.get("to"), request.query.get("from")
    end = parse_time("to", to_raw) + 1 if to_raw else _now_ms() + 1
    start = parse_time("from", from_raw) if from_raw else end - 1 - DEFAULT_WINDOW_MS
    if start >= end:
        raise ApiError(400, "invalid_parameter", "from: must not be after to")
    return start, end


# -- public -------------------------------------------------------------------------------------


@routes.get(API_PREFIX + "/health")
async def health(request: web.Request) -> web.Response:
    """Liveness and broker connection; no secrets, no counters."""
    link = request.app[LINK]
    connected = link.connected.is_set()
    return _json({"status": "ok" if connected else "degraded", "broker_connected": connected,
                  "time": iso(_now_ms())})


@routes.get(API_PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API."""
    return _json(openapi_document())


# -- viewer -------------------------------------------------------------------------------------


@routes.get(API_PREFIX + "/stats")
@needs("viewer")
async def stats(request: web.Request) -> web.Response:
    """Ingest and command counters."""
    app = request.app
    link = app[LINK]
    return _json({
        "counters": app[COUNTERS].snapshot(),
        "ingest_queue": link.backlog,
        "ingest_queue_peak": link.backlog_peak,
        "ingest_queue_bound": link.backlog_bound,
        "mqtt_reader_paused": link.paused,
        "batches": app[WRITER].batches,
    })


@routes.get(API_PREFIX + "/gateways")
@needs("viewer")
async def gateways(request: web.Request) -> web.Response:
    """Every gateway."""
    reg = request.app[REGISTRY]
    counts: dict[int, int] = {}
    for d in reg.devices.values():
        counts[d.gateway_id] = counts.get(d.gateway_id, 0) + 1
    now, skew = _now_ms(), request.app[SETTINGS].ingest.clock_skew_max_ms
    return _json({"items": [gateway_json(g, counts.get(g.id, 0), now, skew)
                            for g in reg.gateways.values()]})


@routes.get(API_PREFIX + "/gateways/{id}")
@needs("viewer")
async def gateway(request: web.Request) -> web.Response:
    """One gateway with its devices, seq gaps, replay progress and clock offset."""
    reg = request.app[REGISTRY]
    name = request.match_info["id"]
    gw = reg.gateways.get(name)
    if gw is None:
        raise ApiError(404, "unknown_gateway", f"no gateway {name!r}")
    devs = sorted(d.name for d in reg.devices.values() if d.gateway_id == gw.id)
    return _json(gateway_detail(gw, devs, _now_ms(), request.app[SETTINGS].ingest.clock_skew_max_ms))


@routes.get(API_PREFIX + "/devices")
@needs("viewer")
async def devices(request: web.Request) -> web.Response:
    """Devices, optionally of one gateway or kind."""
    reg = request.app[REGISTRY]
    gw_name, kind = request.query.get("gateway"), request.query.get("kind")
    items = []
    for d in reg.devices.values():
        g = reg.gateway_of(d)
        if (gw_name is None or g.name == gw_name) and (kind is None or d.kind == kind):
            items.append(device_json(d, g.name, with_points=False))
    return _json({"items": items})


@routes.get(API_PREFIX + "/devices/{id}")
@needs("viewer")
async def device(request: web.Request) -> web.Response:
    """One device with its points and their latest values."""
    dev = _device(request)
    return _json(device_json(dev, request.app[REGISTRY].gateway_of(dev).name, with_points=True))


@routes.get(API_PREFIX + "/devices/{id}/points")
@needs("viewer")
async def device_points(request: web.Request) -> web.Response:
    """The points of a device with latest value, unit, timestamp and quality."""
    dev = _device(request)
    return _json({"items": [point_json(p) for p in dev.points.values()]})


@routes.get(API_PREFIX + "/telemetry")
@needs("viewer")
async def telemetry(request: web.Request) -> web.Response:
    """History of one point in a time range."""
    q = request.query
    for name in ("device", "point"):
        if not q.get(name):
            raise ApiError(400, "invalid_parameter", f"{name}: required")
    dev = request.app[REGISTRY].devices.get(q["device"])
    if dev is None:
        raise ApiError(404, "unknown_device", f"no device {q['device']!r}")
    pt = dev.points.get(q["point"])
    if pt is None:
        raise ApiError(404, "unknown_point", f"device {dev.name} has no point {q['point']!r}")
    start, end = _range(request)
    limit = int_param(request, "limit", TELEMETRY_DEFAULT_LIMIT, 1, TELEMETRY_MAX_LIMIT)
    order = choice_param(request, "order", ("desc", "asc"), "desc")
    rows = await request.app[STORAGE].history(pt.id, start, end, limit, order == "desc")
    return _json({
        "device": dev.name, "point": pt.name, "unit": pt.unit, "type": pt.type, "order": order,
        "items": [
            {"ts": iso(ts), "ts_ms": ts, "value": pt.typed(v), "quality": quality_name(qc)}
            for ts, v, qc in rows
        ],
    })


@routes.get(API_PREFIX + "/events")
@needs("viewer")
async def events(request: web.Request) -> web.Response:
    """Events newest first."""
    start, end = _range(request)
    limit = int_param(request, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT)
    rows = await request.app[STORAGE].events(request.query.get("device"), start, end, limit)
    return _json({"items": [
        {"id": r["id"], "gateway": r["gateway__name"], "device": r["device"], "kind": r["kind"],
         "active": r["active"], "severity": r["severity"], "point": r["point"],
         "detail": r["detail"], "seq": r["seq"], "ts": iso(r["ts_ms"]), "ts_ms": r["ts_ms"]}
        for r in rows
    ]})


@routes.get(API_PREFIX + "/commands")
@needs("viewer")
async def commands(request: web.Request) -> web.Response:
    """Commands newest first."""
    status = choice_param(request, "status", STATUSES, None)
    limit = int_param(request, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT)
    rows = await request.app[STORAGE].list_commands(request.query.get("device"), status, limit)
    return _json({"items": [command_json(r) for r in rows]})


@routes.get(API_PREFIX + "/commands/{id}")
@needs("viewer")
async def command(request: web.Request) -> web.Response:
    """One command and its outcome."""
    raw = request.match_info["id"]
    try:
        cid = uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "unknown_command", f"no command {raw!r}") from None
    row = await request.app[STORAGE].get_command(cid)
    if row is None:
        raise ApiError(404, "unknown_command", f"no command {raw!r}")
    return _json(command_json(row))


# -- operator -----------------------------------------------------------------------------------


@routes.post(API_PREFIX + "/commands")
@needs("operator")
async def post_command(request: web.Request) -> web.Response:
    """Send a write to a device's point; tracked to ack, failure or expiry."""
    body = await read_json(request)
    unknown = set(body) - {"device", "point", "value", "ttl_s", "action"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(sorted(unknown))}")
    for name in ("device", "point"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ApiError(400, "invalid_body", f"{name}: required string")
    try:
        action = CommandAction(body.get("action", "set"))
    except (ValueError, TypeError):
        known = ", ".join(a.value for a in CommandAction)
        raise ApiError(400, "invalid_body", f"action: one of {known}") from None
    if action is CommandAction.SET and "value" not in body:
        raise ApiError(400, "invalid_body", "value: required")
    if action is CommandAction.RELINQUISH and body.get("value") is not None:
        raise ApiError(400, "invalid_body", "value: a relinquish takes no value")
    ttl = body.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise ApiError(400, "invalid_body", "ttl_s: must be a number of seconds")
    stored, gw = await request.app[DISPATCHER].submit(
        body["device"], body["point"], body.get("value"), ttl, request[TOKEN]["name"], action
    )
    out = command_json(stored)
    out["gateway_online"] = gw.online
    if not gw.online:
        out["warning"] = (f"gateway {gw.name} is offline; the command is delivered if it "
                          "reconnects before expiry")
    return _json(out, status=202)


# -- admin --------------------------------------------------------------------------------------


def _token_json(t: dict[str, Any]) -> dict[str, Any]:
    return {"id": t["id"], "name": t["name"], "role": t["role"],
            "created": iso(t["created_ms"]), "revoked": iso(t["revoked_ms"])}


@routes.get(API_PREFIX + "/tokens")
@needs("admin")
async def tokens(request: web.Request) -> web.Response:
    """Every API token (never the secret)."""
    return _json({"items": [_token_json(t) for t in await request.app[STORAGE].list_tokens()]})


@routes.post(API_PREFIX + "/tokens")
@needs("admin")
async def post_token(request: web.Request) -> web.Response:
    """Create a token; the secret is in this response only."""
    body = await read_json(request)
    name, role = body.get("name"), body.get("role")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ApiError(400, "invalid_body", "name: required string of 1-64 characters")
    if role not in ROLES:
        raise ApiError(400, "invalid_body", f"role: one of {', '.join(ROLES)}")
    storage = request.app[STORAGE]
    if await storage.token_name_taken(name):
        raise ApiError(409, "token_name_taken", f"a token named {name!r} already exists")
    tid, token = await create_token(storage, name, role)
    return _json({"id": tid, "name": name, "role": role, "token": token}, status=201)


@routes.delete(API_PREFIX + "/tokens/{id}")
@needs("admin")
async def delete_token(request: web.Request) -> web.Response:
    """Revoke a token."""
    raw = request.match_info["id"]
    if not raw.isdigit() or not await request.app[STORAGE].revoke_token(int(raw), _now_ms()):
        raise ApiError(404, "unknown_token", f"no live token {raw!r}")
    return web.Response(status=204)


def setup_api(app: web.Application) -> None:
    """Add the API routes and middlewares to an application."""
    from .policy_routes import policy_routes

    app.middlewares.extend([errors_mw, auth_mw])
    app.add_routes(routes)
    app.add_routes(policy_routes)
