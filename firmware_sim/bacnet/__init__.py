"""A simulated BACnet/IP building device (fire, intrusion, doors, HVAC, meter); see docs/bacnet.md."""

from .building import BuildingSim, Layout, object_map

__all__ = ["BuildingSim", "Layout", "object_map"]
