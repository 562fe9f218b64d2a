"""Tortoise models of the registry, events, commands and API tokens.

The two hot tables (``sample`` and ``ingested_msg``) are not ORM models: they are written with
``executemany`` on the raw connection and created from ``hub.storage.schema`` (see docs/hub.md).
Timestamps are epoch milliseconds (``*_ms``) everywhere, like the wire.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

# Column widths of names the gateways choose; ingest refuses longer ones as malformed
# (hub/ingest.py) instead of letting the database refuse a whole batch.
NAME_MAX = 64
HASH_MAX = 128
UNIT_MAX = 32
SEVERITY_MAX = 16


class Gateway(Model):
    """A cabinet gateway as last reported by its status and birth."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=NAME_MAX, unique=True)
    online = fields.BooleanField(default=False)
    session = fields.BigIntField(default=0)
    last_seen_ms = fields.BigIntField(null=True)
    sw_version = fields.CharField(max_length=NAME_MAX, default="")
    config_hash = fields.CharField(max_length=HASH_MAX, default="")
    last_seq = fields.BigIntField(null=True)

    class Meta:
        table = "gateway"


class Device(Model):
    """A field device; its name is unique city-wide ("lamp L-0003")."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=NAME_MAX, unique=True)
    gateway: fields.ForeignKeyRelation[Gateway] = fields.ForeignKeyField(
        "models.Gateway", related_name="devices", on_delete=fields.CASCADE
    )
    kind = fields.CharField(max_length=NAME_MAX, default="")
    driver = fields.CharField(max_length=NAME_MAX, default="")
    declared = fields.BooleanField(default=True)

    class Meta:
        table = "device"


class Point(Model):
    """A point of a device, with its latest value (written through per ingest batch)."""

    id = fields.IntField(primary_key=True)
    device: fields.ForeignKeyRelation[Device] = fields.ForeignKeyField(
        "models.Device", related_name="points", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=NAME_MAX)
    type = fields.CharField(max_length=8, default="float")
    unit = fields.CharField(max_length=UNIT_MAX, default="")
    min = fields.FloatField(null=True)
    max = fields.FloatField(null=True)
    writable = fields.BooleanField(default=False)
    declared = fields.BooleanField(default=True)
    value = fields.FloatField(null=True)
    ts_ms = fields.BigIntField(null=True)
    quality = fields.SmallIntField(null=True)

    class Meta:
        table = "point"
        unique_together = (("device", "name"),)


class EventRecord(Model):
    """An event from a gateway (alarm raised/cleared, presence, door, lamp failure)."""

    id = fields.IntField(primary_key=True)
    gateway: fields.ForeignKeyRelation[Gateway] = fields.ForeignKeyField(
        "models.Gateway", related_name="events", on_delete=fields.CASCADE
    )
    device = fields.CharField(max_length=NAME_MAX)
    kind = fields.CharField(max_length=NAME_MAX)
    active = fields.BooleanField(default=True)
    severity = fields.CharField(max_length=SEVERITY_MAX, default="info")
    point = fields.CharField(max_length=NAME_MAX, default="")
    detail = fields.TextField(default="")
    ts_ms = fields.BigIntField(db_index=True)
    seq = fields.BigIntField()

    class Meta:
        table = "event"


class CommandRecord(Model):
    """A write sent to a gateway and tracked to ack, failure or expiry."""

    id = fields.UUIDField(primary_key=True)
    gateway: fields.ForeignKeyRelation[Gateway] = fields.ForeignKeyField(
        "models.Gateway", related_name="commands", on_delete=fields.CASCADE
    )
    device = fields.CharField(max_length=64, db_index=True)
    point = fields.CharField(max_length=64)
    value = fields.JSONField[object](null=True)
    status = fields.CharField(max_length=16, db_index=True)
    detail = fields.TextField(default="")
    created_ms = fields.BigIntField()
    expires_ms = fields.BigIntField()
    acked_ms = fields.BigIntField(null=True)
    readback = fields.JSONField[object](null=True)
    source = fields.CharField(max_length=64, default="")

    class Meta:
        table = "command"


class ApiToken(Model):
    """A REST API bearer token; only its SHA-256 is stored."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=64, unique=True)
    role = fields.CharField(max_length=16)
    token_hash = fields.CharField(max_length=64, unique=True)
    created_ms = fields.BigIntField()
    revoked_ms = fields.BigIntField(null=True)

    class Meta:
        table = "api_token"
