"""Message types of the edge <-> hub contract and their msgpack codec.

Every payload is a msgpack map with ``"v"`` (the schema version) and the fields below.
Samples travel as 5-element arrays ``[device, point, ts_ms, value, quality]`` to keep the
hot path small. ``decode_*`` raise :class:`WireError` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import msgpack

from .errors import WireError

SCHEMA_VERSION = 1

Value: TypeAlias = float | int | bool | None
# (device, point, ts_ms, value, quality)
Sample: TypeAlias = tuple[str, str, int, Value, str]


class Quality(StrEnum):
    """How far a sample can be trusted."""

    GOOD = "good"
    STALE = "stale"  # last good value, not refreshed within its interval
    COMM_ERROR = "comm_error"  # the device did not answer or the frame was bad
    DEVICE_ERROR = "device_error"  # the device answered with an error (e.g. Modbus exception)
    OUT_OF_RANGE = "out_of_range"  # read fine, but outside the configured min/max


QUALITIES = frozenset(q.value for q in Quality)


class AckStatus(StrEnum):
    """Outcome of a command at the edge."""

    OK = "ok"
    REJECTED = "rejected"  # refused before touching the field (unknown point, read-only, range)
    FAILED = "failed"  # tried, the field device did not take it
    EXPIRED = "expired"  # arrived after its expires_at


class CommandAction(StrEnum):
    """What a command asks of its point: write ``value`` (default), or hand control back."""

    SET = "set"
    RELINQUISH = "relinquish"  # BACnet: write NULL at the priority; ``value`` is ignored (None)


class PointType(StrEnum):
    """Value types a point may carry."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


@dataclass(frozen=True, slots=True)
class Status:
    """Retained gateway (or hub) presence; the offline form is the MQTT last will."""

    online: bool
    session: int = 0
    ts_ms: int = 0


@dataclass(frozen=True, slots=True)
class PointInfo:
    """A point as the hub learns it from a birth message."""

    id: str
    type: PointType
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A field device and its points."""

    id: str
    kind: str
    driver: str
    points: tuple[PointInfo, ...] = ()
    #: For a device that addresses several others with one frame (a DALI group or broadcast):
    #: the ids of the devices it reaches. The hub merges equal commands to them into one.
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Birth:
    """Retained description of a gateway: software, config hash, devices and points."""

    session: int
    software_version: str
    config_hash: str
    ts_ms: int
    devices: tuple[DeviceInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Data:
    """A batch of samples; ``seq`` is the gateway's persistent message counter."""

    seq: int
    samples: list[Sample]
    historical: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: alarm raised/cleared, presence, door, lamp failure."""

    seq: int
    ts_ms: int
    device: str
    kind: str
    active: bool = True  # raised (True) or cleared (False)
    severity: str = "info"  # info | warning | alarm
    point: str = ""
    detail: str = ""
    historical: bool = False  # replayed from the edge's buffer after an outage (wire: ``hist``)


@dataclass(frozen=True, slots=True)
class Command:
    """A write the hub asks a gateway to apply to one point."""

    id: str
    device: str
    point: str
    value: Value
    expires_at_ms: int
    priority: int = 8
    source: str = ""
    action: CommandAction = CommandAction.SET


@dataclass(frozen=True, slots=True)
class Ack:
    """The edge's answer to a command; ``value`` is the read-back when there is one."""

    id: str
    status: AckStatus
    detail: str = ""
    ts_ms: int = 0
    value: Value = None
    extra: dict[str, Any] = field(default_factory=dict)


_SEVERITIES = frozenset({"info", "warning", "alarm"})


# -- encoding -----------------------------------------------------------------------------------


def _pack(body: dict[str, Any]) -> bytes:
    body["v"] = SCHEMA_VERSION
    return msgpack.packb(body, use_bin_type=True)


def encode_status(m: Status) -> bytes:
    """Encode a gateway or hub status."""
    return _pack({"online": m.online, "session": m.session, "ts": m.ts_ms})


def encode_birth(m: Birth) -> bytes:
    """Encode a birth message."""
    devices = [
        {
            "id": d.id,
            "kind": d.kind,
            "driver": d.driver,
            "points": [
                {
                    "id": p.id,
                    "type": p.type.value,
                    "unit": p.unit,
                    "min": p.min,
                    "max": p.max,
                    "writable": p.writable,
                }
                for p in d.points
            ],
            **({"members": list(d.members)} if d.members else {}),
        }
        for d in m.devices
    ]
    return _pack(
        {
            "session": m.session,
            "sw": m.software_version,
            "config_hash": m.config_hash,
            "ts": m.ts_ms,
            "devices": devices,
        }
    )


def encode_data(m: Data) -> bytes:
    """Encode a batch of samples."""
    body: dict[str, Any] = {"seq": m.seq, "samples": m.samples}
    if m.historical:
        body["hist"] = True
    return _pack(body)


def encode_event(m: Event) -> bytes:
    """Encode an event."""
    body: dict[str, Any] = {
        "seq": m.seq,
        "ts": m.ts_ms,
        "device": m.device,
        "kind": m.kind,
        "active": m.active,
        "severity": m.severity,
        "point": m.point,
        "detail": m.detail,
    }
    if m.historical:
        body["hist"] = True
    return _pack(body)


def encode_command(m: Command) -> bytes:
    """Encode a command (``action`` only when it is not the default ``set``)."""
    body: dict[str, Any] = {
        "id": m.id,
        "device": m.device,
        "point": m.point,
        "value": m.value,
        "expires_at": m.expires_at_ms,
        "priority": m.priority,
        "source": m.source,
    }
    if m.action is not CommandAction.SET:
        body["action"] = m.action.value
    return _pack(body)


def encode_ack(m: Ack) -> bytes:
    """Encode a command acknowledgement."""
    body: dict[str, Any] = {
        "id": m.id,
        "status": m.status.value,
        "detail": m.detail,
        "ts": m.ts_ms,
        "value": m.value,
    }
    if m.extra:
        body["extra"] = m.extra
    return _pack(body)


# -- decoding -----------------------------------------------------------------------------------


def _unpack(payload: bytes, use_list: bool = True) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=use_list)
    except Exception as err:  # msgpack raises several unrelated types
        raise WireError(f"payload is not valid msgpack ({type(err).__name__}: {err})") from None
    if not isinstance(body, dict):
        raise WireError(f"payload is a msgpack {type(body).__name__}, expected a map")
    version = body.get("v")
    if version != SCHEMA_VERSION:
        raise WireError(f"unsupported schema version {version!r} (this build speaks {SCHEMA_VERSION})")
    return body


def _get(body: dict[str, Any], key: str, types: type | tuple[type, ...], *, what: str) -> Any:
    try:
        value = body[key]
    except KeyError:
        raise WireError(f"{what}: missing field {key!r}") from None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise WireError(f"{what}: field {key!r} has type {type(value).__name__}")
    return value


def _opt(body: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any, *, what: str) -> Any:
    if key not in body or body[key] is None:
        return default
    return _get(body, key, types, what=what)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _is_value(v: object) -> bool:
    return v is None or isinstance(v, (bool, int, float))


def _decode_members(d: dict[str, Any], where: str) -> tuple[str, ...]:
    members = _opt(d, "members", list, [], what=where)
    for k, m in enumerate(members):
        if not isinstance(m, str):
            raise WireError(f"{where}.members[{k}]: expected a device id (str), got {type(m).__name__}")
    return tuple(members)


def decode_status(payload: bytes) -> Status:
    """Decode a gateway or hub status."""
    b = _unpack(payload)
    return Status(
        online=_get(b, "online", bool, what="status"),
        session=_opt(b, "session", int, 0, what="status"),
        ts_ms=_opt(b, "ts", int, 0, what="status"),
    )


def _decode_point(p: Any, where: str) -> PointInfo:
    if not isinstance(p, dict):
        raise WireError(f"{where}: expected a map")
    try:
        ptype = PointType(_get(p, "type", str, what=where))
    except ValueError:
        raise WireError(f"{where}: unknown point type {p.get('type')!r}") from None
    return PointInfo(
        id=_get(p, "id", str, what=where),
        type=ptype,
        unit=_opt(p, "unit", str, "", what=where),
        min=_opt(p, "min", (int, float), None, what=where),
        max=_opt(p, "max", (int, float), None, what=where),
        writable=_opt(p, "writable", bool, False, what=where),
    )


def decode_birth(payload: bytes) -> Birth:
    """Decode a birth message."""
    b = _unpack(payload)
    devices = []
    for i, d in enumerate(_get(b, "devices", list, what="birth")):
        where = f"birth.devices[{i}]"
        if not isinstance(d, dict):
            raise WireError(f"{where}: expected a map")
        points = tuple(
            _decode_point(p, f"{where}.points[{j}]")
            for j, p in enumerate(_get(d, "points", list, what=where))
        )
        devices.append(
            DeviceInfo(
                id=_get(d, "id", str, what=where),
                kind=_opt(d, "kind", str, "", what=where),
                driver=_opt(d, "driver", str, "", what=where),
                points=points,
                members=_decode_members(d, where),
            )
        )
    return Birth(
        session=_get(b, "session", int, what="birth"),
        software_version=_opt(b, "sw", str, "", what="birth"),
        config_hash=_opt(b, "config_hash", str, "", what="birth"),
        ts_ms=_opt(b, "ts", int, 0, what="birth"),
        devices=tuple(devices),
    )


_VALUE_TYPES = frozenset({bool, int, float, type(None)})


def decode_data(payload: bytes) -> Data:
    """Decode a batch of samples, checking every sample's shape and types."""
    # Arrays as tuples: each sample arrives as the tuple the hub keeps, without a copy. This is
    # the hub's hot path: checks are inlined, exact types (msgpack makes no subclasses).
    b = _unpack(payload, use_list=False)
    seq = _get(b, "seq", int, what="data")
    if seq < 0:
        raise WireError(f"data: negative seq {seq}")
    raw = _get(b, "samples", tuple, what="data")
    qualities = QUALITIES
    values = _VALUE_TYPES
    for i, s in enumerate(raw):
        if (
            type(s) is not tuple
            or len(s) != 5
            or type(s[0]) is not str
            or type(s[1]) is not str
            or type(s[2]) is not int
            or type(s[3]) not in values
            or type(s[4]) is not str  # before the set lookup: a map or array is unhashable
            or s[4] not in qualities
        ):
            raise WireError(f"data seq {seq}: sample {i} is not [device, point, ts_ms, value, quality]")
    return Data(seq=seq, samples=list(raw), historical=_opt(b, "hist", bool, False, what="data"))


def decode_event(payload: bytes) -> Event:
    """Decode an event."""
    b = _unpack(payload)
    severity = _opt(b, "severity", str, "info", what="event")
    if severity not in _SEVERITIES:
        raise WireError(f"event: unknown severity {severity!r}")
    return Event(
        seq=_get(b, "seq", int, what="event"),
        ts_ms=_get(b, "ts", int, what="event"),
        device=_get(b, "device", str, what="event"),
        kind=_get(b, "kind", str, what="event"),
        active=_opt(b, "active", bool, True, what="event"),
        severity=severity,
        point=_opt(b, "point", str, "", what="event"),
        detail=_opt(b, "detail", str, "", what="event"),
        historical=_opt(b, "hist", bool, False, what="event"),
    )


def decode_command(payload: bytes) -> Command:
    """Decode a command."""
    b = _unpack(payload)
    value = b.get("value")
    if not _is_value(value):
        raise WireError(f"cmd: field 'value' has type {type(value).__name__}")
    return Command(
        id=_get(b, "id", str, what="cmd"),
        device=_get(b, "device", str, what="cmd"),
        point=_get(b, "point", str, what="cmd"),
        value=value,
        expires_at_ms=_get(b, "expires_at", int, what="cmd"),
        priority=_opt(b, "priority", int, 8, what="cmd"),
        source=_opt(b, "source", str, "", what="cmd"),
        action=_command_action(_opt(b, "action", str, "set", what="cmd")),
    )


def _command_action(text: str) -> CommandAction:
    try:
        return CommandAction(text)
    except ValueError:
        known = ", ".join(a.value for a in CommandAction)
        raise WireError(f"cmd: unknown action {text!r} (known: {known})") from None


def decode_ack(payload: bytes) -> Ack:
    """Decode a command acknowledgement."""
    b = _unpack(payload)
    try:
        status = AckStatus(_get(b, "status", str, what="ack"))
    except ValueError:
        raise WireError(f"ack: unknown status {b.get('status')!r}") from None
    value = b.get("value")
    if not _is_value(value):
        raise WireError(f"ack: field 'value' has type {type(value).__name__}")
    return Ack(
        id=_get(b, "id", str, what="ack"),
        status=status,
        detail=_opt(b, "detail", str, "", what="ack"),
        ts_ms=_opt(b, "ts", int, 0, what="ack"),
        value=value,
        extra=_opt(b, "extra", dict, {}, what="ack"),
    )
