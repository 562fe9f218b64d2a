"""A simulated DALI bus of control gear behind a Lunatone LUBA RS232 master (see docs/dali.md)."""

from .gear import FADE_TIMES_S, BusStats, Gear, GearBus
from .luba import DaliBusSim, luba_message
from .sensor import OccupancySensor

__all__ = ["FADE_TIMES_S", "BusStats", "DaliBusSim", "Gear", "GearBus", "OccupancySensor", "luba_message"]
