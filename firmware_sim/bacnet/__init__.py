"""A simulated BACnet/IP building device (fire, intrusion, doors, HVAC, meter); see docs/bacnet.md."""

from .building import BuildingSim, Layout, object_map
from .ports import free_udp_ports

__all__ = ["BuildingSim", "Layout", "free_udp_ports", "object_map"]
