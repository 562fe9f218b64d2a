"""Field protocols behind one small async interface (see drivers.base.BusDriver)."""

from .base import (
    BusConfigBase,
    BusDriver,
    DeviceConfigBase,
    DeviceUnavailable,
    DriverError,
    DriverSpec,
    PointConfigBase,
    PointError,
    PointReading,
    ProtocolError,
    PushedUpdate,
    StrictModel,
)
from .registry import get_driver, known_drivers

__all__ = [
    "BusConfigBase",
    "BusDriver",
    "DeviceConfigBase",
    "DeviceUnavailable",
    "DriverError",
    "DriverSpec",
    "PointConfigBase",
    "PointError",
    "PointReading",
    "ProtocolError",
    "PushedUpdate",
    "StrictModel",
    "get_driver",
    "known_drivers",
]
