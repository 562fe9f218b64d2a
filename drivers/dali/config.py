"""Config models of the DALI driver: bus (a serial DALI master), device (gear address), point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from cnconfig import FieldError
from drivers.base import BusConfigBase, DeviceConfigBase, PointConfigBase
from wire import PointType

from .curve import Curve

# What a point reports; a point whose id is one of these takes it as its source by default.
Source = Literal[
    "level",
    "actual_level",
    "lamp_failure",
    "gear_failure",
    "power_failure",
    "missing_short_address",
    "status",
    "energy",
    "power",
    "operating_time",
    "gear_starts",
    "lamp_on_time",
    "lamp_starts",
    "scene",
    "colour_temperature",
    "presence",
]
SOURCES: tuple[str, ...] = Source.__args__  # type: ignore[attr-defined]
# QUERY STATUS bits that are faults: each point raises and clears an alarm event of its own
# name unless the point says otherwise (``alarm: null`` for none).
ALARM_SOURCES = frozenset({"lamp_failure", "gear_failure", "power_failure", "missing_short_address"})
_BOOL_SOURCES = ALARM_SOURCES | {"presence"}
_PERCENT_SOURCES = frozenset({"level", "actual_level"})
# D4i diagnostics (DiiA Part 253, banks 205/206): counters and times in seconds
_INT_SOURCES = frozenset(
    {"status", "operating_time", "gear_starts", "lamp_on_time", "lamp_starts", "scene", "colour_temperature"}
)
_WRITABLE_SOURCES = frozenset({"level", "scene", "colour_temperature"})
# Sources a group or broadcast device may have: one frame to every member; a broadcast device
# also asks whether any gear without a short address is on the bus (a replaced lamp).
_GROUP_SOURCES = frozenset({"level", "scene", "colour_temperature"})
_BROADCAST_SOURCES = frozenset({"level", "scene", "colour_temperature", "missing_short_address"})
# The points of a gear configured without any (``address`` and no ``points``): its level and
# its fault bits, each fault an alarm.
DEFAULT_GEAR_POINTS: tuple[dict[str, Any], ...] = (
    {"id": "level", "unit": "%", "writable": True, "min": 0, "max": 100, "interval_s": 30},
    {"id": "lamp_failure", "interval_s": 60},
    {"id": "gear_failure", "interval_s": 60},
    {"id": "power_failure", "interval_s": 60},
)


def _either(names: list[str]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class DaliBusConfig(BusConfigBase):
    """One DALI bus behind a serial master interface (Lunatone LUBA RS232 today)."""

    driver: Literal["dali"] = "dali"
    interface: Literal["luba232"] = "luba232"
    serial_port: str = Field(min_length=1)
    bus_power: bool = Field(
        default=False, description="switch on the interface's integrated bus power supply"
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=5, description="queries repeated when no answer came back")

    def describe(self) -> str:
        """Where the bus goes, for logs and python-dali: ``luba232:/dev/ttyS1``."""
        return f"{self.interface}:{self.serial_port}"


class DaliPointConfig(PointConfigBase):
    """One value of a control gear: its level in percent, a status bit, or the status byte."""

    source: Source

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" not in data:
            pid = data.get("id")
            if pid not in SOURCES:
                raise FieldError(
                    ("id",),
                    f"{pid!r} is not a DALI point: use one of {', '.join(SOURCES)} as the id, "
                    "or set 'source' to one of them",
                )
            data = {**data, "source": pid}
        if isinstance(data, dict) and data.get("source") in ALARM_SOURCES and "alarm" not in data:
            data = {**data, "alarm": data["source"]}
        if isinstance(data, dict) and data.get("source") == "scene":
            # GO TO SCENE 0-15: the edge rejects other numbers before anything is sent
            data = {"min": 0, "max": 15, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.writable and self.source not in _WRITABLE_SOURCES:
            raise FieldError(
                ("writable",),
                f"source {self.source} is read-only: only level, scene and colour_temperature are writable",
            )
        if self.source == "scene":
            for key, bound in (("min", self.min), ("max", self.max)):
                if bound is not None and not 0 <= bound <= 15:
                    raise FieldError((key,), f"a scene is 0..15, {key} {bound} is outside")
        if self.source in _PERCENT_SOURCES:
            for key, bound in (("min", self.min), ("max", self.max)):
                if bound is not None and not 0 <= bound <= 100:
                    raise FieldError((key,), f"a level is 0..100 %, {key} {bound} is outside")
        return self

    def value_type(self) -> PointType:
        """float percent for levels, bool for failure bits, int for the raw status byte."""
        if self.source in _BOOL_SOURCES:
            return PointType.BOOL
        if self.source in _INT_SOURCES:
            return PointType.INT
        return PointType.FLOAT


class DaliDeviceConfig(DeviceConfigBase):
    """A control gear (``address`` 0-63), every gear of a ``group`` (0-15) or of the bus, or an
    occupancy sensor (``sensor_address`` 0-63 and ``instance`` 0-31, IEC 62386-103/303).

    Group and broadcast devices are written with one frame and cannot be queried (several gear
    would answer at once), so they may only have ``level`` points (and a broadcast device a
    ``missing_short_address`` point). Sensors report through their event frames, so they may
    only have ``presence`` points. A gear without ``points`` gets ``DEFAULT_GEAR_POINTS``.
    """

    address: int | None = Field(default=None, ge=0, le=63)
    group: int | None = Field(default=None, ge=0, le=15)
    broadcast: bool = False
    sensor_address: int | None = Field(
        default=None, ge=0, le=63, description="short address of a control device (part 103)"
    )
    instance: int = Field(default=0, ge=0, le=31, description="the sensor's occupancy instance number")
    groups: tuple[Annotated[int, Field(ge=0, le=15)], ...] = Field(
        default=(), description="the DALI groups (0-15) this gear is a member of (commissioning sets them)"
    )
    curve: Curve = "logarithmic"
    points: tuple[DaliPointConfig, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_points(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("address") is not None and "points" not in data:
            return {**data, "points": DEFAULT_GEAR_POINTS}
        return data

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        given = [k for k in ("address", "group", "sensor_address") if getattr(self, k) is not None]
        if self.broadcast:
            given.append("broadcast")
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(
                f"set exactly one of 'address', 'group', 'broadcast: true' or 'sensor_address' (got {what})"
            )
        if self.groups and self.address is None:
            raise FieldError(("groups",), "only a gear with a short 'address' can be a member of groups")
        for i, p in enumerate(self.points):
            if (p.source == "presence") != (self.sensor_address is not None):
                raise FieldError(
                    ("points", i, "source"),
                    "an occupancy sensor (sensor_address) has only 'presence' points"
                    if self.sensor_address is not None
                    else "'presence' comes from an occupancy sensor: set 'sensor_address'",
                )
        if self.address is None and self.sensor_address is None:
            allowed = _BROADCAST_SOURCES if self.broadcast else _GROUP_SOURCES
            for i, p in enumerate(self.points):
                if p.source not in allowed:
                    raise FieldError(
                        ("points", i, "source"),
                        f"a {given[0]} device can only have {_either(sorted(allowed))} points: "
                        f"{p.source} needs one gear's answer (use 'address')",
                    )
        return self

    def members(self, bus_devices: Sequence[DeviceConfigBase]) -> tuple[str, ...]:
        """The gear a group (by their ``groups``) or broadcast device reaches."""
        if self.group is None and not self.broadcast:
            return ()
        return tuple(
            d.id
            for d in bus_devices
            if isinstance(d, DaliDeviceConfig)
            and d.address is not None
            and (self.broadcast or self.group in d.groups)
        )

    def target(self) -> str:
        """The address for logs: ``A12``, ``G3``, ``broadcast`` or ``D4.I0`` (a sensor)."""
        if self.address is not None:
            return f"A{self.address}"
        if self.group is not None:
            return f"G{self.group}"
        if self.sensor_address is not None:
            return f"D{self.sensor_address}.I{self.instance}"
        return "broadcast"
