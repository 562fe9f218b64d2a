"""The OpenAPI 3.1 document of ``/api/v1`` (a test checks it matches the router)."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}


def _q(name: str, desc: str, schema: dict[str, Any] | None = None,
       required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": desc,
            "schema": schema or {"type": "string"}}


def _id(desc: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": desc,
            "schema": {"type": "string"}}


def _op(summary: str, role: str | None, ok: str = "200", params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, errors: tuple[str, ...] = (),
        schema: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "x-required-role": role or "public",
        "parameters": params or [],
        "responses": {ok: {"description": "success",
                           **({} if ok == "204" else
                              {"content": {"application/json": {
                                  "schema": schema or {"type": "object"}}}})}},
    }
    if role is None:
        op["security"] = []
    else:
        op["responses"].update({"401": _ERR, "403": _ERR})
    for e in errors:
        op["responses"][e] = _ERR
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    return op


_TIME = {"type": "string", "description": "ISO 8601 (UTC if no offset) or epoch milliseconds"}
_ISO = {"type": ["string", "null"], "format": "date-time"}
_MS = {"type": ["integer", "null"], "description": "epoch milliseconds"}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


_GATEWAY = _obj({
    "id": {"type": "string"}, "online": {"type": "boolean", "description": "from its status messages"},
    "session": {"type": "integer"}, "last_seen": _ISO,
    "last_seen_ms": {**_MS, "description": "hub time of the last message of any kind"},
    "sw_version": {"type": "string"}, "config_hash": {"type": "string"},
    "last_seq": {"type": ["integer", "null"], "description": "highest seq stored"},
    "devices": {"type": "integer"},
    "open_gaps": {"type": "integer",
                  "description": "ranges of seq never received (restart block skips excluded)"},
    "missing": {"type": "integer", "description": "seq numbers in the open gaps"},
    "replaying": {"type": "boolean", "description": "a historical message arrived in the last 10 s"},
    "clock_offset_ms": {"type": ["integer", "null"], "description":
                        "gateway clock minus hub clock, from live messages of the last 1-2 min"},
    "clock_skew": {"type": "boolean", "description": "|clock_offset_ms| > ingest.clock_skew_max_ms"},
})
_GATEWAY_DETAIL = {
    "allOf": [_GATEWAY, _obj({
        "device_ids": {"type": "array", "items": {"type": "string"}},
        "gaps": {"type": "array", "description": "the newest 50 open gaps, oldest first",
                 "items": _obj({"from_seq": {"type": "integer"}, "to_seq": {"type": "integer"},
                                "missing": {"type": "integer"}, "opened": _ISO, "opened_ms": _MS})},
        "restart_skips": {"type": "integer",
                          "description": "seq ranges skipped at a gateway restart (never used)"},
        "gaps_forgotten": {"type": "integer", "description": "oldest gaps dropped beyond 1000 per gateway"},
        "replay": _obj({
            "messages_total": {"type": "integer", "description": "historical messages since hub start"},
            "messages_recent": {"type": "integer", "description": "... in the last 1-2 minutes"},
            "newest_ts": _ISO, "newest_ts_ms": {**_MS, "description": "newest sample time replayed"},
            "last_received": _ISO, "last_received_ms": _MS}),
        "clock_skew_max_ms": {"type": "integer"},
    })],
}
_LIMIT = {"type": "integer", "minimum": 1}


def openapi_document() -> dict[str, Any]:
    """Build the document (no state; cheap enough per request)."""
    from .policy_openapi import policy_paths

    range_params = [_q("from", "start, inclusive (default: to - 24 h)", _TIME),
                    _q("to", "end, inclusive (default: now)", _TIME)]
    return {
        "openapi": "3.1.0",
        "info": {"title": "citynerve hub API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                                         "properties": {"code": {"type": "string"},
                                                        "message": {"type": "string"}}}}}},
            "responses": {"Error": {"description": "error",
                                    "content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
        "paths": {
            "/health": {"get": _op("Liveness and broker connection", None)},
            "/openapi.json": {"get": _op("This document", None)},
            "/stats": {"get": _op("Ingest and command counters", "viewer", schema=_obj({
                "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
                "ingest_queue": {"type": "integer", "description": "messages received, not yet taken"},
                "ingest_queue_peak": {"type": "integer"}, "ingest_queue_bound": {"type": "integer"},
                "mqtt_reader_paused": {"type": "boolean"}, "batches": {"type": "integer"}}))},
            "/gateways": {"get": _op("List gateways: presence, seq gaps, replay, clock", "viewer",
                                     schema=_obj({"items": {"type": "array", "items": _GATEWAY}}))},
            "/gateways/{id}": {"get": _op("One gateway with its gaps, replay progress and clock",
                                          "viewer", params=[_id("gateway id")], errors=("404",),
                                          schema=_GATEWAY_DETAIL)},
            "/devices": {"get": _op("List devices", "viewer", params=[
                _q("gateway", "only devices of this gateway"), _q("kind", "only this kind")])},
            "/devices/{id}": {"get": _op("One device with its points", "viewer",
                                         params=[_id("device id")], errors=("404",))},
            "/devices/{id}/points": {"get": _op("Points with latest values", "viewer",
                                                params=[_id("device id")], errors=("404",))},
            "/telemetry": {"get": _op("History of one point", "viewer", params=[
                _q("device", "device id", required=True), _q("point", "point id", required=True),
                *range_params,
                _q("limit", "max samples (default 1000, max 10000)", {**_LIMIT, "maximum": 10000}),
                _q("order", "desc (newest first, default) or asc",
                   {"type": "string", "enum": ["desc", "asc"]}),
            ], errors=("400", "404"))},
            "/events": {"get": _op("Events, newest first", "viewer", params=[
                _q("device", "device id"), *range_params,
                _q("limit", "max events (default 100, max 1000)", {**_LIMIT, "maximum": 1000}),
            ], errors=("400",))},
            "/commands": {
                "get": _op("Commands, newest first", "viewer", params=[
                    _q("device", "device id"),
                    _q("status", "command status", {"type": "string", "enum": [
                        "pending", "acknowledged", "rejected", "failed", "expired"]}),
                    _q("limit", "max commands (default 100, max 1000)",
                       {**_LIMIT, "maximum": 1000}),
                ], errors=("400",)),
                "post": _op("Write a value to a device point, or relinquish it", "operator",
                            ok="202", body={
                    "type": "object", "required": ["device", "point"],
                    "additionalProperties": False,
                    "properties": {"device": {"type": "string"}, "point": {"type": "string"},
                                   "value": {"type": ["number", "boolean", "null"],
                                             "description": "required for action set"},
                                   "action": {"type": "string", "enum": ["set", "relinquish"],
                                              "default": "set",
                                              "description": "relinquish: hand the point back "
                                              "(BACnet: NULL at its priority); no value"},
                                   "ttl_s": {"type": "number", "exclusiveMinimum": 0}},
                }, errors=("400", "404", "409", "422", "503")),
            },
            "/commands/{id}": {"get": _op("One command", "viewer", params=[_id("command uuid")],
                                          errors=("404",))},
            "/tokens": {
                "get": _op("List API tokens", "admin"),
                "post": _op("Create an API token (returned once)", "admin", ok="201", body={
                    "type": "object", "required": ["name", "role"],
                    "properties": {"name": {"type": "string", "maxLength": 64},
                                   "role": {"type": "string",
                                            "enum": ["viewer", "operator", "admin"]}},
                }, errors=("400", "409")),
            },
            "/tokens/{id}": {"delete": _op("Revoke a token", "admin", ok="204",
                                           params=[_id("token id")], errors=("404",))},
            **policy_paths(),
        },
    }
