"""DALI-2 occupancy sensors (IEC 62386-103 control devices, instance type 3 of part 303).

A sensor is an input device with its own short address (0-63, a separate address space from
control gear) and an instance number; on a change it sends a 24-bit event frame on the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTANCE_TYPE_OCCUPANCY = 3  # IEC 62386-103 Table 4: part 303

# Event information bits of an occupancy event (IEC 62386-303 Table 4)
MOVEMENT, OCCUPIED, REPEAT, MOVEMENT_SENSOR = 0x1, 0x2, 0x4, 0x8


@dataclass
class OccupancySensor:
    """One occupancy instance of a control device; ``occupied`` is its current state."""

    short_address: int
    instance: int = 0
    occupied: bool = False
    movement_sensor: bool = False  # False: a presence sensor (303 bit 3)
    events_sent: int = 0

    def event_frame(self, *, movement: bool = False, repeat: bool = False) -> bytes:
        """The 24-bit event in the "device/instance" scheme (IEC 62386-103 §9.6.2, Table 8).

        Bit 23 = 0, bits 22-17 the short address, bit 16 = 0, bit 15 = 1, bits 14-10 the
        instance number, bits 9-0 the event information.
        """
        info = (
            (MOVEMENT if movement else 0)
            | (OCCUPIED if self.occupied else 0)
            | (REPEAT if repeat else 0)
            | (MOVEMENT_SENSOR if self.movement_sensor else 0)
        )
        value = self.short_address << 17 | 1 << 15 | self.instance << 10 | info
        return value.to_bytes(3, "big")
