"""The one interface every field-bus driver implements, its config bases and its errors.

A driver owns one physical bus (a TCP connection to a Modbus gateway, a serial line, a BACnet
network port): the edge creates one instance per configured bus and never calls it from two
tasks at once for the same bus without the driver's own lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cnconfig import FieldError
from wire import PointType, Quality, Value

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


# -- errors ------------------------------------------------------------------------------------


class DriverError(Exception):
    """Base of every error a driver raises."""


class DeviceUnavailable(DriverError):
    """The device (or the bus) did not answer: timeout, connection refused, port gone."""


class PointError(DriverError):
    """The device answered but refused this point or value (e.g. Modbus exception code)."""


class ProtocolError(DriverError):
    """A frame was garbled or did not match the request (CRC error, wrong length)."""


# -- config bases ------------------------------------------------------------------------------


class StrictModel(BaseModel):
    """Frozen config model that forbids unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfigBase(StrictModel):
    """Fields every bus has; a driver subclasses this with its transport settings."""

    id: str = Field(pattern=ID_PATTERN)
    driver: str


class PointConfigBase(StrictModel):
    """Fields every point has; a driver subclasses this with its addressing."""

    id: str = Field(pattern=ID_PATTERN)
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    interval_s: float = Field(default=5.0, gt=0, description="poll interval for this point")
    deadband: float = Field(
        default=0.0, ge=0, description="report only changes larger than this (0: every change)"
    )
    alarm: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="bool points: raise an alarm event of this kind while true, clear it when false",
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.alarm is not None and self.value_type() is not PointType.BOOL:
            raise FieldError(
                ("alarm",), f"alarm applies to bool points only, this one is {self.value_type().value}"
            )
        return self

    def value_type(self) -> PointType:
        """The type the point's values have on the wire."""
        return PointType.FLOAT


class DeviceConfigBase(StrictModel):
    """Fields every device has; a driver subclasses this to type ``points`` and add addressing."""

    id: str = Field(pattern=ID_PATTERN)
    bus: str
    kind: str = Field(default="generic", description="lamp, cabinet, meter, door, ...")
    points: Sequence[PointConfigBase] = ()

    def members(self, bus_devices: Sequence[DeviceConfigBase]) -> tuple[str, ...]:
        """The devices of the same bus this device reaches with one frame (none by default).

        A DALI group or broadcast device answers with its gear; the birth carries the list so
        the hub can send one frame instead of one per lamp when they all get the same level.
        """
        return ()


_D = TypeVar("_D", bound=DeviceConfigBase)
_P = TypeVar("_P", bound=PointConfigBase)


def as_device(device: DeviceConfigBase, model: type[_D], driver: str) -> _D:
    """``device`` as the driver's own model; PointError when it was configured for another."""
    if not isinstance(device, model):
        raise PointError(f"device {device.id!r} is not configured for the {driver} driver")
    return device


def as_points(points: Sequence[PointConfigBase], model: type[_P], driver: str) -> Sequence[_P]:
    """``points`` as the driver's own model; PointError naming the first that is not."""
    for p in points:
        if not isinstance(p, model):
            raise PointError(f"point {p.id!r} is not configured for the {driver} driver")
    return points  # type: ignore[return-value]


# -- readings and the protocol -----------------------------------------------------------------


class PointReading(NamedTuple):
    """One point's outcome in a read: a value with good quality, or a quality saying why not.

    A NamedTuple, not a frozen dataclass: the edge builds tens of thousands a second, and a
    frozen dataclass's ``__init__`` costs several times a tuple's.
    """

    point: str
    value: Value
    quality: Quality = Quality.GOOD
    error: str = ""


@dataclass(frozen=True, slots=True)
class PushedUpdate:
    """A value a device pushed without being polled (COV, DALI event frames)."""

    device: str
    reading: PointReading
    ts_ms: int
    # When set, the edge also publishes an event of this kind at once (``active``: the value
    # is truthy), e.g. "presence" for an occupancy sensor; "" updates the point only.
    event: str = ""


@runtime_checkable
class BusDriver(Protocol):
    """An async context manager that reads and writes the points of the devices on one bus."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self, device: DeviceConfigBase, points: Sequence[PointConfigBase]) -> list[PointReading]:
        """Read points of one device, grouped into as few requests as the protocol allows.

        Returns one reading per requested point, in order. Raises DeviceUnavailable when the
        device does not answer at all; per-block errors come back as readings with a quality.
        """
        ...

    async def write(self, device: DeviceConfigBase, point: PointConfigBase, value: Value) -> Value:
        """Write one value (already range-checked) and return the value read back."""
        ...


class PushSource(Protocol):
    """Optional: a driver that also yields pushed updates."""

    def updates(self) -> AsyncIterator[PushedUpdate]:
        """Updates as they arrive; ends when the driver closes."""
        ...


class PointDescriber(Protocol):
    """Optional: a driver that can say what a point is on the device, for event details."""

    def describe(self, device: str, point: PointConfigBase) -> str:
        """E.g. ``binary-input,3 fire-zone-3``; "" when it cannot say. Must not do I/O."""
        ...


@dataclass(frozen=True)
class DriverSpec:
    """How the edge finds a driver: its config models and how to build it for one bus."""

    name: str
    bus_model: type[BusConfigBase]
    device_model: type[DeviceConfigBase]
    factory: Any  # Callable[[bus_config, Sequence[device_config]], BusDriver]
    description: str = ""
    # Optional clash check across the devices of one bus, run by config validation:
    # Callable[[bus_config, list[device_config]], list[(device id, field, message)]].
    check: Any = None
