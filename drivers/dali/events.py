"""Event frames of DALI-2 input devices: occupancy events (IEC 62386-103/303) -> presence updates.

python-dali decodes a 24-bit event in the "device/instance" scheme only when it knows the
instance's type (103 Table 8 carries no type in that scheme): the map is built from the
configured sensors, so no bus scan is needed at start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from dali.device import occupancy
from dali.device.helpers import DeviceInstanceTypeMapper

from drivers.base import PointReading, PushedUpdate

from .config import DaliDeviceConfig

PRESENCE = "presence"


def instance_map(devices: Iterable[DaliDeviceConfig]) -> DeviceInstanceTypeMapper:
    """The (short address, instance) -> instance type map of the configured sensors."""
    mapper = DeviceInstanceTypeMapper()
    for d in devices:
        if d.sensor_address is not None:
            mapper.add_type(
                short_address=d.sensor_address, instance_number=d.instance, instance_type=occupancy
            )
    return mapper


class SensorIndex:
    """Configured occupancy sensors by address, and their last reported state."""

    def __init__(self, devices: Iterable[DaliDeviceConfig]) -> None:
        self.by_address = {(d.sensor_address, d.instance): d for d in devices if d.sensor_address is not None}
        self.occupied: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.by_address)

    def update(self, frame: object) -> list[PushedUpdate]:
        """The updates one received frame makes: one per ``presence`` point of its sensor."""
        if not isinstance(frame, occupancy.OccupancyEvent) or frame.short_address is None:
            return []  # another device's frame, or a scheme that does not name the device
        addr = frame.short_address.address
        dev = self.by_address.get((addr, frame.instance_number if frame.instance_number is not None else 0))
        if dev is None:
            return []
        self.occupied[dev.id] = frame.occupied
        ts = int(time.time() * 1000)
        # A repeat (report timer, 303 §9.6) refreshes the point without a new event.
        kind = "" if frame.repeat else PRESENCE
        return [
            PushedUpdate(dev.id, PointReading(p.id, frame.occupied), ts, kind)
            for p in dev.points
            if p.source == PRESENCE
        ]
