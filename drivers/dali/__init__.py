"""The DALI driver (registered as "dali"): control gear behind a serial master; see docs/dali.md."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.base import DriverSpec

from .config import SOURCES, DaliBusConfig, DaliDeviceConfig, DaliPointConfig
from .curve import arc_to_percent, percent_to_arc
from .driver import DaliDriver


def create_driver(bus: DaliBusConfig, devices: Sequence[DaliDeviceConfig]) -> DaliDriver:
    """Build the driver of one bus (the spec's factory)."""
    return DaliDriver(bus, devices)


SPEC = DriverSpec(
    name="dali",
    bus_model=DaliBusConfig,
    device_model=DaliDeviceConfig,
    factory=create_driver,
    description="DALI (IEC 62386) control gear behind a Lunatone LUBA RS232 master",
)

__all__ = [
    "SOURCES",
    "SPEC",
    "DaliBusConfig",
    "DaliDeviceConfig",
    "DaliDriver",
    "DaliPointConfig",
    "arc_to_percent",
    "create_driver",
    "percent_to_arc",
]
