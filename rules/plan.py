"""A gateway's plan: the slice of the city's policy that concerns its lamps, versioned by content.

The hub publishes `Plan.to_wire()` retained on `cn/v1/gw/{gw}/plan`; the edge rebuilds it with
`Plan.from_wire()` and evaluates its own lamps with the same functions as the hub.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import Field, model_validator

from rules.model import Crisis, Id, Override, PolicyData

PLAN_SCHEMA = 1


def content_version(policy: PolicyData) -> str:
    """A version derived from the policy content only: 16 hex digits of SHA-256 of canonical JSON."""
    body = policy.model_dump(mode="json", include=set(PolicyData.model_fields))
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Plan(PolicyData):
    """A policy slice for one gateway, with its content-derived `version`.

    Build it with `plan_for`; `version` must match the content (checked on validation, so a
    corrupted or hand-edited plan is refused rather than run).
    """

    gateway: Id | None = None
    version: str = Field(pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _version(self) -> Plan:
        expect = content_version(self)
        if self.version != expect:
            raise ValueError(f"version {self.version} does not match the plan's content ({expect})")
        return self

    def to_wire(self) -> dict[str, Any]:
        """Plain dicts/lists/str/int/float (msgpack-ready), with a schema number."""
        return {"schema": PLAN_SCHEMA, **self.model_dump(mode="json")}

    @classmethod
    def from_wire(cls, data: Any) -> Plan:
        """Rebuild a plan from `to_wire()` output; ValueError (pydantic ValidationError) if invalid."""
        if not isinstance(data, dict):
            raise ValueError(f"plan: expected a map, got {type(data).__name__}")
        body = dict(data)
        schema = body.pop("schema", None)
        if schema != PLAN_SCHEMA:
            raise ValueError(f"plan: unsupported schema {schema!r} (expected {PLAN_SCHEMA})")
        return cls.model_validate(body)


def plan_for(city: PolicyData, lamp_ids: Iterable[str], gateway: str | None = None) -> Plan:
    """The subset of `city` that concerns `lamp_ids`: their lamps, streets and ancestor zones, the
    calendars, profiles and presence rules those use, the overrides that target any of them, and
    the crises on their streets (each crisis keeping only those streets). Unknown ids: KeyError."""
    ids = sorted(set(lamp_ids))
    lamps = [city.lamp_by_id[i] for i in ids]  # KeyError names the unknown lamp
    zone_ids: set[str] = set()
    for lamp in lamps:
        zone_ids.update(city.ancestors(lamp.street))
    zones = [z for z in city.zones if z.id in zone_ids]
    streets = {z.id for z in zones if z.kind == "street"}
    cal_ids = {city.default_calendar} | {z.calendar for z in zones if z.calendar}
    calendars = [c for c in city.calendars if c.id in cal_ids]
    prof_ids = {c.default_profile for c in calendars} | {r.profile for c in calendars for r in c.rules}
    rule_ids = {z.presence for z in zones if z.presence}
    groups = {lamp.group for lamp in lamps if lamp.group}
    lamp_set = set(ids)
    overrides: list[Override] = []
    for ov in city.overrides:
        k, t = ov.target.kind, ov.target.id
        if (
            (k == "lamp" and t in lamp_set)
            or (k == "group" and t in groups)
            or (k == "zone" and t in zone_ids)
        ):
            overrides.append(ov)
    crises: list[Crisis] = []
    for cr in city.crises:
        mine = [s for s in cr.streets if s in streets]
        if mine:
            crises.append(cr.model_copy(update={"streets": mine}))
    content = PolicyData(
        settings=city.settings,
        default_calendar=city.default_calendar,
        profiles=[p for p in city.profiles if p.id in prof_ids],
        calendars=calendars,
        zones=zones,
        lamps=lamps,
        presence_rules=[r for r in city.presence_rules if r.id in rule_ids],
        overrides=overrides,
        crises=crises,
    )
    fields = {k: getattr(content, k) for k in PolicyData.model_fields}
    return Plan(**fields, gateway=gateway, version=content_version(content))
