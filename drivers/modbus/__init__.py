"""The Modbus TCP/RTU driver (registered as "modbus"); see docs/modbus.md."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.base import DriverSpec

from .codec import EXCEPTION_NAMES, Block, encode, exception_text, plan_blocks
from .config import ModbusBusConfig, ModbusDeviceConfig, ModbusPointConfig, overlaps
from .driver import ModbusDriver


def create_driver(bus: ModbusBusConfig, devices: Sequence[ModbusDeviceConfig]) -> ModbusDriver:
    """Build the driver of one bus (the spec's factory)."""
    return ModbusDriver(bus, devices)


SPEC = DriverSpec(
    name="modbus",
    bus_model=ModbusBusConfig,
    device_model=ModbusDeviceConfig,
    factory=create_driver,
    description="Modbus TCP and RTU (coils, discrete inputs, input and holding registers)",
)

__all__ = [
    "EXCEPTION_NAMES",
    "SPEC",
    "Block",
    "ModbusBusConfig",
    "ModbusDeviceConfig",
    "ModbusDriver",
    "ModbusPointConfig",
    "create_driver",
    "encode",
    "exception_text",
    "overlaps",
    "plan_blocks",
]
