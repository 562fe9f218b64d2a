"""The plain registry of field-bus drivers: a name maps to the module that defines its spec."""

from __future__ import annotations

import importlib

from .base import DriverSpec

# name -> "module:attribute" of its DriverSpec. Imported on first use, never by scanning folders.
_REGISTRY: dict[str, str] = {
    "bacnet": "drivers.bacnet:SPEC",
    "dali": "drivers.dali:SPEC",
    "modbus": "drivers.modbus:SPEC",
}


def known_drivers() -> list[str]:
    """Names of every driver this build knows."""
    return sorted(_REGISTRY)


def get_driver(name: str) -> DriverSpec:
    """The spec of a driver; KeyError with the known names when there is none."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown driver {name!r} (known: {', '.join(known_drivers())})") from None
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    assert isinstance(spec, DriverSpec)
    return spec
