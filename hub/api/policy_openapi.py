"""The lighting-policy paths of the OpenAPI document (merged by openapi.py)."""

from __future__ import annotations

from typing import Any

from .openapi import _id, _op, _q

_SCHEMAS = {
    "profiles": "Profile: {id, name?, steps: [{at: HH:MM|dusk|dawn, offset_min?, level, ramp_min?}]}",
    "calendars": "Calendar: {id, name?, default_profile, rules: [{profile, dates?, weekdays?, "
                 "date_from?, date_to?}]}",
    "zones": "Zone: {id, kind: municipality|district|street, parent?, lighting_class? (streets), "
             "calendar?, presence?}",
    "lamps": "Lamp: {id (its device id), street, lat, lon, rated_w, group?, gateway?, sensors?: "
             "[device ids of presence sensors at it]}",
    "presence-rules": "PresenceRule: {id, level, hold_s, ramp_down_s, reach_m | reach_lamps, "
                      "lookahead_s?, behind_factor?, max_reach_m?}",
}


def policy_paths() -> dict[str, Any]:
    """Paths under /policy (relative to /api/v1)."""
    body = {"type": "object"}
    paths: dict[str, Any] = {
        "/policy": {"get": _op("Policy status: running, problems, plans, commands", "viewer")},
        "/policy/settings": {"put": _op("Replace city settings and default calendar", "admin",
                                        body=body, errors=("422",))},
        "/policy/overrides": {
            "get": _op("List overrides", "viewer"),
            "post": _op("Override a lamp, group or zone (start_ms, expiry_ms or duration_s)", "operator",
                        ok="201", body=body, errors=("409", "422")),
        },
        "/policy/overrides/{id}": {"delete": _op("Clear an override", "operator", ok="204",
                                                 params=[_id("override id")], errors=("404",))},
        "/policy/crisis": {
            "get": _op("List crisis routes", "viewer"),
            "post": _op("Declare a crisis route (streets at 100%)", "operator", ok="201", body=body,
                        errors=("409", "422")),
        },
        "/policy/crisis/{id}": {"delete": _op("Close a crisis route", "operator",
                                              params=[_id("crisis id")], errors=("404", "409"))},
        "/policy/lamps/{id}/explain": {"get": _op(
            "Level of a lamp at an instant and the winning source", "viewer",
            params=[_id("lamp id"), _q("at", "instant (default now): ISO 8601 or epoch ms")],
            errors=("400", "404", "409"))},
        "/policy/energy": {"get": _op("kWh, baseline and saving of a zone over nights", "viewer", params=[
            _q("zone", "zone id (default: the whole city)"),
            _q("from", "first night YYYY-MM-DD (default: last night)"),
            _q("to", "last night YYYY-MM-DD (default: from)"),
        ], errors=("400", "404", "409"))},
    }
    for seg, desc in _SCHEMAS.items():
        item = {"type": "object", "description": desc}
        paths[f"/policy/{seg}"] = {
            "get": _op(f"List {seg}", "viewer"),
            "post": _op(f"Create one of {seg}", "admin", ok="201", body=item, errors=("409", "422")),
        }
        paths[f"/policy/{seg}/{{id}}"] = {
            "get": _op(f"One of {seg}", "viewer", params=[_id("id")], errors=("404",)),
            "put": _op(f"Create or replace one of {seg}", "admin", params=[_id("id")], body=item,
                       errors=("409", "422")),
            "delete": _op(f"Delete one of {seg}", "admin", ok="204", params=[_id("id")],
                          errors=("404", "409")),
        }
    return paths
