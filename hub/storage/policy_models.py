"""Tortoise models of the lighting policy: one row per profile, calendar, zone, lamp, presence
rule, override and crisis (the validated pydantic body as JSON), the city settings, and the
latest decision per lamp (why each lamp has its level).

The bodies are `rules.model` objects dumped with `model_dump(mode="json")`; the hub validates
them with the same models before storing, so a row always loads back.
"""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model

ID_MAX = 128


class PolicyConfig(Model):
    """The city-wide policy settings and default calendar (one row, id 1)."""

    id = fields.IntField(primary_key=True)
    settings: Any = fields.JSONField(default=dict)
    default_calendar = fields.CharField(max_length=ID_MAX, default="default")

    class Meta:
        table = "policy_config"


class _Item(Model):
    """A policy object by id, its JSON body and when it was last written."""

    id = fields.CharField(max_length=ID_MAX, primary_key=True)
    body: Any = fields.JSONField()
    updated_ms = fields.BigIntField(default=0)

    class Meta:
        abstract = True


class PolicyProfile(_Item):
    """A lighting profile (ordered switch points)."""

    class Meta:
        table = "policy_profile"


class PolicyCalendar(_Item):
    """A calendar: default profile and ordered rules."""

    class Meta:
        table = "policy_calendar"


class PolicyZone(_Item):
    """A municipality, district or street."""

    class Meta:
        table = "policy_zone"


class PolicyLamp(_Item):
    """A lamp of the policy (id = its device id) and the presence sensors standing at it."""

    sensors: Any = fields.JSONField(default=list)

    class Meta:
        table = "policy_lamp"


class PolicyPresenceRule(_Item):
    """A presence rule (level, hold, reach)."""

    class Meta:
        table = "policy_presence_rule"


class PolicyOverride(_Item):
    """A manual override on a lamp, group or zone."""

    class Meta:
        table = "policy_override"


class PolicyCrisis(_Item):
    """An emergency route; closing it sets its end."""

    class Meta:
        table = "policy_crisis"


class PolicyDecision(Model):
    """The last decision the hub runner made for a lamp: level, winning source and why."""

    lamp = fields.CharField(max_length=ID_MAX, primary_key=True)
    level = fields.FloatField()
    source = fields.CharField(max_length=16)
    detail = fields.TextField()
    at_ms = fields.BigIntField()
    sent_ms = fields.BigIntField(null=True)

    class Meta:
        table = "policy_decision"
