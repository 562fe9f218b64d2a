"""The lighting-policy part of ``/api/v1``: CRUD of profiles, calendars, zones/streets, lamps and
presence rules (admin), overrides and crisis routes (operator), explain and energy (viewer).

Bodies are validated with the pydantic models of `rules.model`; an error names the field by its
path (``steps.2.level: Input should be less than or equal to 100``) in ``message`` and lists each
problem in ``details``. A write that would break a reference (a calendar naming a missing
profile, deleting a profile a calendar uses) is refused the same way. See docs/policy.md.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from rules import night_energy, night_of
from rules.model import Loc

from ..errors import ApiError
from ..policy import MODELS, POLICY, PolicyInvalid, PolicyRunner, validation_errors
from .jsonutil import iso, parse_time, read_json
from .middleware import needs

PREFIX = "/api/v1/policy"
#: URL segment -> policy list name (the admin-managed parts).
SEGMENTS = {
    "profiles": "profiles",
    "calendars": "calendars",
    "zones": "zones",
    "lamps": "lamps",
    "presence-rules": "presence_rules",
}
ENERGY_MAX_NIGHTS = 62

policy_routes = web.RouteTableDef()


def _runner(request: web.Request) -> PolicyRunner:
    return request.app[POLICY]


def _loc(loc: Loc) -> str:
    return ".".join(str(x) for x in loc) or "body"


def invalid(errors: list[tuple[Loc, str]], status: int = 422, code: str = "invalid_policy") -> web.Response:
    """A 4xx whose message names every field in error and whose details list them."""
    message = "; ".join(f"{_loc(loc)}: {msg}" for loc, msg in errors)
    return web.json_response(
        {"error": {"code": code, "message": message,
                   "details": [{"loc": list(loc), "message": msg} for loc, msg in errors]}},
        status=status,
    )


def _validate(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body as the model dumps it (defaults filled); PolicyInvalid naming the fields."""
    try:
        return dict(MODELS[kind].model_validate(body).model_dump(mode="json"))
    except ValidationError as err:
        raise PolicyInvalid(validation_errors(err)) from None


async def _write(runner: PolicyRunner, kind: str, body: dict[str, Any], **kw: Any) -> web.Response | None:
    try:
        await runner.write(kind, body, **kw)
    except PolicyInvalid as err:
        return invalid(err.errors, err.status, "policy_conflict" if err.status == 409 else "invalid_policy")
    return None


async def _create(
    r: PolicyRunner,
    kind: str,
    body: dict[str, Any],
    what: str,
    hint: str = "",
    check: Callable[[dict[str, Any]], None] | None = None,
    **kw: Any,
) -> web.Response:
    """Validate and store a new object: 201 with it, 422 with every problem, 409 if its id exists."""
    try:
        item = _validate(kind, body)
    except PolicyInvalid as err:
        return invalid(err.errors)
    if check is not None:
        check(item)
    if r.get(kind, item["id"]) is not None:
        raise ApiError(409, "exists", f"{what} {item['id']!r} exists{hint}")
    bad = await _write(r, kind, item, **kw)
    return bad or web.json_response(item, status=201)


def _kind(request: web.Request) -> str:
    return SEGMENTS[_seg(request)]


def _seg(request: web.Request) -> str:
    return request.path[len(PREFIX) + 1 :].split("/")[0]


def _sensors(body: dict[str, Any]) -> list[str] | None:
    sensors = body.pop("sensors", None)
    ok = isinstance(sensors, list) and all(isinstance(s, str) for s in sensors)
    if sensors is not None and not ok:
        raise ApiError(422, "invalid_policy", "sensors: expected a list of device ids")
    return sensors


# -- status and settings ------------------------------------------------------------------------


@policy_routes.get(PREFIX)
@needs("viewer")
async def policy_status(request: web.Request) -> web.Response:
    """Whether the policy runs, what stops it, the plans published and the commands sent."""
    r = _runner(request)
    return web.json_response({
        "running": r.city is not None,
        "problems": [{"loc": list(loc), "message": msg} for loc, msg in r.problems],
        "default_calendar": r.raw["default_calendar"], "settings": r.raw["settings"],
        "counts": {k: len(r.raw[k]) for k in MODELS},
        "plans": r.plan_versions, "evaluations": r.evaluations, "commands_sent": r.commands_sent,
        "now": iso(r.clock()), "now_ms": r.clock(),
    })


@policy_routes.put(PREFIX + "/settings")
@needs("admin")
async def put_settings(request: web.Request) -> web.Response:
    """Replace the city settings (time zone, twilight, class minimums ...) and default calendar."""
    body = await read_json(request)
    unknown = set(body) - {"settings", "default_calendar"}
    if unknown:
        raise ApiError(422, "invalid_policy", f"unknown field(s): {', '.join(sorted(unknown))}")
    settings, default = body.get("settings", {}), body.get("default_calendar", "default")
    if not isinstance(settings, dict) or not isinstance(default, str) or not default:
        raise ApiError(422, "invalid_policy", "settings: object; default_calendar: calendar id")
    try:
        await _runner(request).write_settings(settings, default)
    except PolicyInvalid as err:
        return invalid(err.errors)
    return await policy_status(request)  # type: ignore[return-value]


# -- profiles, calendars, zones, lamps, presence rules ------------------------------------------


@needs("viewer")
async def list_items(request: web.Request) -> web.Response:
    """Every object of one kind."""
    r, kind = _runner(request), _kind(request)
    items = r.raw[kind]
    if kind == "lamps":
        items = [{**x, "sensors": r.sensors.get(x["id"], [])} for x in items]
    return web.json_response({"items": items})


@needs("viewer")
async def get_item(request: web.Request) -> web.Response:
    """One object by id."""
    r, kind, item_id = _runner(request), _kind(request), request.match_info["id"]
    item = r.get(kind, item_id)
    if item is None:
        raise ApiError(404, "not_found", f"no {_seg(request)} item {item_id!r}")
    if kind == "lamps":
        item = {**item, "sensors": r.sensors.get(item_id, [])}
    return web.json_response(item)


@needs("admin")
async def post_item(request: web.Request) -> web.Response:
    """Create an object (its id in the body); 409 if the id exists."""
    r, kind = _runner(request), _kind(request)
    body = await read_json(request)
    sensors = _sensors(body) if kind == "lamps" else None
    return await _create(r, kind, body, _seg(request), "; PUT replaces it", sensors=sensors)


@needs("admin")
async def put_item(request: web.Request) -> web.Response:
    """Create or replace an object by id."""
    r, kind, item_id = _runner(request), _kind(request), request.match_info["id"]
    body = await read_json(request)
    sensors = _sensors(body) if kind == "lamps" else None
    if body.setdefault("id", item_id) != item_id:
        return invalid([(("id",), f"does not match the URL's id {item_id!r}")])
    try:
        item = _validate(kind, body)
    except PolicyInvalid as err:
        return invalid(err.errors)
    existed = r.get(kind, item_id) is not None
    bad = await _write(r, kind, item, sensors=sensors)
    return bad or web.json_response(item, status=200 if existed else 201)


@needs("admin")
async def delete_item(request: web.Request) -> web.Response:
    """Delete an object; 409 naming what still uses it."""
    r, kind, item_id = _runner(request), _kind(request), request.match_info["id"]
    if r.get(kind, item_id) is None:
        raise ApiError(404, "not_found", f"no {_seg(request)} item {item_id!r}")
    bad = await _write(r, kind, {"id": item_id}, delete=True)
    return bad or web.Response(status=204)


# -- overrides and crisis (operators) -----------------------------------------------------------


@policy_routes.get(PREFIX + "/overrides")
@needs("viewer")
async def list_overrides(request: web.Request) -> web.Response:
    """Every override (active, future and expired until cleared)."""
    return web.json_response({"items": _runner(request).raw["overrides"]})


def _check_target(r: PolicyRunner, target: dict[str, Any]) -> None:
    city = r.city
    if city is None:
        raise ApiError(409, "policy_incomplete", "the policy is not complete yet (see GET /policy)")
    if not city.evaluator.target_lamps(target["kind"], target["id"]):
        raise ApiError(422, "invalid_policy", f"target.id: no {target['kind']} {target['id']!r} with lamps")


@policy_routes.post(PREFIX + "/overrides")
@needs("operator")
async def post_override(request: web.Request) -> web.Response:
    """Override a lamp, group or zone from start_ms (default now) to expiry_ms or for duration_s."""
    r = _runner(request)
    body = await read_json(request)
    now = r.clock()
    duration = body.pop("duration_s", None)
    body.setdefault("start_ms", now)
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            return invalid([(("duration_s",), "must be a positive number of seconds")])
        if "expiry_ms" in body:
            return invalid([(("duration_s",), "give expiry_ms or duration_s, not both")])
        body["expiry_ms"] = int(body["start_ms"]) + int(duration * 1000)
    body.setdefault("id", "ov-" + uuid.uuid4().hex[:10])
    body["created_ms"] = now
    return await _create(
        r, "overrides", body, "override", check=lambda item: _check_target(r, item["target"])
    )


@policy_routes.delete(PREFIX + "/overrides/{id}")
@needs("operator")
async def delete_override(request: web.Request) -> web.Response:
    """Clear an override: its lamps return to the programme."""
    r, oid = _runner(request), request.match_info["id"]
    if r.get("overrides", oid) is None:
        raise ApiError(404, "unknown_override", f"no override {oid!r}")
    bad = await _write(r, "overrides", {"id": oid}, delete=True)
    return bad or web.Response(status=204)


@policy_routes.get(PREFIX + "/crisis")
@needs("viewer")
async def list_crises(request: web.Request) -> web.Response:
    """Every crisis route, open and closed."""
    return web.json_response({"items": _runner(request).raw["crises"]})


@policy_routes.post(PREFIX + "/crisis")
@needs("operator")
async def post_crisis(request: web.Request) -> web.Response:
    """Declare an emergency route: every lamp on `streets` at the crisis level until closed."""
    r = _runner(request)
    body = await read_json(request)
    body.setdefault("start_ms", r.clock())
    body.setdefault("id", "crisis-" + uuid.uuid4().hex[:10])
    return await _create(r, "crises", body, "crisis")


@policy_routes.delete(PREFIX + "/crisis/{id}")
@needs("operator")
async def close_crisis(request: web.Request) -> web.Response:
    """Close a crisis (kept, with its end, for the energy report)."""
    r, cid = _runner(request), request.match_info["id"]
    item = r.get("crises", cid)
    if item is None:
        raise ApiError(404, "unknown_crisis", f"no crisis {cid!r}")
    if item.get("end_ms") is not None:
        raise ApiError(409, "crisis_closed", f"crisis {cid!r} is already closed")
    closed = {**item, "end_ms": max(r.clock(), int(item["start_ms"]) + 1)}
    bad = await _write(r, "crises", closed)
    return bad or web.json_response(closed)


# -- explain and energy -------------------------------------------------------------------------


@policy_routes.get(PREFIX + "/lamps/{id}/explain")
@needs("viewer")
async def explain_lamp(request: web.Request) -> web.Response:
    """The level a lamp should have at `at` (default now), the winning source and why."""
    r, lamp = _runner(request), request.match_info["id"]
    city = r.city
    if city is None:
        raise ApiError(409, "policy_incomplete", "the policy is not complete yet (see GET /policy)")
    if lamp not in city.lamp_by_id:
        raise ApiError(404, "unknown_lamp", f"no lamp {lamp!r} in the policy")
    raw = request.query.get("at")
    t = parse_time("at", raw) if raw else r.clock()
    d = city.evaluator.explain(lamp, t, r.presence)
    out: dict[str, Any] = {"lamp": lamp, "at": iso(t), "at_ms": t, "level": d.level, "source": d.source,
                           "detail": d.detail}
    if r.sent.get(lamp) is not None:
        out["last_commanded"] = r.sent[lamp]
    return web.json_response(out)


def _night(name: str, raw: str | None, default: dt.date) -> dt.date:
    if raw is None:
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name}: expected a night's date YYYY-MM-DD, got {raw!r}"
        ) from None


@policy_routes.get(PREFIX + "/energy")
@needs("viewer")
async def energy(request: web.Request) -> web.Response:
    """kWh, all-night-100% baseline and saving of a zone (or the city) over nights from..to."""
    r = _runner(request)
    city = r.city
    if city is None:
        raise ApiError(409, "policy_incomplete", "the policy is not complete yet (see GET /policy)")
    q = request.query
    last = night_of(r.clock(), city.settings.tz) - dt.timedelta(days=1)
    start = _night("from", q.get("from"), last)
    end = _night("to", q.get("to"), start)
    if end < start:
        raise ApiError(400, "invalid_parameter", "from: must not be after to")
    if (end - start).days + 1 > ENERGY_MAX_NIGHTS:
        raise ApiError(400, "invalid_parameter", f"at most {ENERGY_MAX_NIGHTS} nights per request")
    zone = q.get("zone")
    if zone is not None and zone not in city.zone_by_id:
        raise ApiError(404, "unknown_zone", f"no zone {zone!r}")
    nights = []
    total_kwh = total_base = 0.0
    day = start
    while day <= end:
        rep = night_energy(city, day)
        kwh, base = rep.zones.get(zone, (0.0, 0.0)) if zone else (rep.kwh, rep.baseline_kwh)
        nights.append({"night": day.isoformat(), "kwh": round(kwh, 4), "baseline_kwh": round(base, 4),
                       "saving_pct": round(_saving(kwh, base), 2)})
        total_kwh += kwh
        total_base += base
        day += dt.timedelta(days=1)
    return web.json_response({
        "zone": zone, "from": start.isoformat(), "to": end.isoformat(), "nights": nights,
        "kwh": round(total_kwh, 4), "baseline_kwh": round(total_base, 4),
        "saving_pct": round(_saving(total_kwh, total_base), 2),
    })


def _saving(kwh: float, base: float) -> float:
    return 0.0 if base <= 0 else 100.0 * (1 - kwh / base)


for _seg_name in SEGMENTS:
    policy_routes.get(f"{PREFIX}/{_seg_name}")(list_items)
    policy_routes.post(f"{PREFIX}/{_seg_name}")(post_item)
    policy_routes.get(f"{PREFIX}/{_seg_name}/{{id}}")(get_item)
    policy_routes.put(f"{PREFIX}/{_seg_name}/{{id}}")(put_item)
    policy_routes.delete(f"{PREFIX}/{_seg_name}/{{id}}")(delete_item)
