"""The BACnet/IP driver (registered as "bacnet"); see docs/bacnet.md."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.base import DriverSpec

from .config import (
    COMMANDABLE,
    DEFAULT_PRIORITY,
    OBJECT_TYPES,
    BacnetBusConfig,
    BacnetDeviceConfig,
    BacnetPointConfig,
    check_bus,
)
from .driver import UNIT_SYMBOLS, BacnetDriver, error_text, status_quality


def create_driver(bus: BacnetBusConfig, devices: Sequence[BacnetDeviceConfig]) -> BacnetDriver:
    """Build the driver of one bus (the spec's factory)."""
    return BacnetDriver(bus, devices)


SPEC = DriverSpec(
    name="bacnet",
    bus_model=BacnetBusConfig,
    device_model=BacnetDeviceConfig,
    factory=create_driver,
    description="BACnet/IP (analog, binary and multi-state inputs, outputs and values; priorities)",
    check=check_bus,
)

__all__ = [
    "COMMANDABLE",
    "DEFAULT_PRIORITY",
    "OBJECT_TYPES",
    "SPEC",
    "UNIT_SYMBOLS",
    "BacnetBusConfig",
    "BacnetDeviceConfig",
    "BacnetDriver",
    "BacnetPointConfig",
    "create_driver",
    "error_text",
    "status_quality",
]
