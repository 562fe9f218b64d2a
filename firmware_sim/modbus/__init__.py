"""A simulated lamp-cabinet controller speaking Modbus TCP and RTU (see docs/modbus.md)."""

from .cabinet import Cabinet, Lamp
from .control import ControlServer, create_control_app
from .server import FAULT_MODES, CabinetSim, Fault

__all__ = [
    "FAULT_MODES",
    "Cabinet",
    "CabinetSim",
    "ControlServer",
    "Fault",
    "Lamp",
    "create_control_app",
]
