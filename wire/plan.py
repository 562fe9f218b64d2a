"""The retained `plan` message: the hub's policy slice for one gateway (see docs/wire.md, docs/policy.md).

The envelope is checked here (types, version format); the plan body itself is the lighting
policy's JSON form (`rules.Plan.to_wire()`), which the edge validates with `rules.Plan.from_wire`
(content version included), so `wire/` stays free of the policy model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import WireError
from .messages import _get, _opt, _pack, _unpack

_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True, slots=True)
class PlanMessage:
    """A versioned plan for one gateway; `plan` is `rules.Plan.to_wire()`.

    `sensors` maps a presence sensor device (on this gateway) to the lamp it stands at; a
    presence event from a lamp device itself needs no entry.
    """

    gateway: str
    version: str
    ts_ms: int
    plan: dict[str, Any]
    sensors: dict[str, str] = field(default_factory=dict)


def encode_plan(m: PlanMessage) -> bytes:
    """Encode a plan message."""
    body: dict[str, Any] = {"gateway": m.gateway, "version": m.version, "ts": m.ts_ms, "plan": m.plan}
    if m.sensors:
        body["sensors"] = dict(m.sensors)
    return _pack(body)


def decode_plan(payload: bytes) -> PlanMessage:
    """Decode a plan message; WireError naming the field if the envelope is malformed."""
    b = _unpack(payload)
    what = "plan"
    gateway = _get(b, "gateway", str, what=what)
    version = _get(b, "version", str, what=what)
    if not _VERSION_RE.match(version):
        raise WireError(f"plan: field 'version' must be 16 hex digits, got {version!r}")
    ts = _get(b, "ts", int, what=what)
    plan = _get(b, "plan", dict, what=what)
    for k in plan:
        if not isinstance(k, str):
            raise WireError(f"plan: field 'plan' has a non-string key {k!r}")
    sensors = _opt(b, "sensors", dict, {}, what=what)
    for k, v in sensors.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise WireError(f"plan: sensors entry {k!r}: expected device id -> lamp id (str -> str)")
    return PlanMessage(gateway=gateway, version=version, ts_ms=ts, plan=plan, sensors=dict(sensors))
