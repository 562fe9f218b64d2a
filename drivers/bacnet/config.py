"""Config models of the BACnet/IP driver: bus (local address), device (address + instance), point (object)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from cnconfig import FieldError
from drivers.base import BusConfigBase, DeviceConfigBase, PointConfigBase
from wire import PointType

DEFAULT_PORT = 47808  # 0xBAC0, ASHRAE 135 Annex J.1
MAX_INSTANCE = 4194302  # 22-bit instance; 4194303 is the wildcard (ASHRAE 135 §12.11.1)

# Object types a point may name (ASHRAE 135 §12), and which of them are commandable: outputs always
# are, values may be (§19.2.1; a value object without a priority array ignores the priority).
OBJECT_TYPES = (
    "analog-input",
    "analog-output",
    "analog-value",
    "binary-input",
    "binary-output",
    "binary-value",
    "multi-state-input",
    "multi-state-output",
    "multi-state-value",
)
COMMANDABLE = frozenset(t for t in OBJECT_TYPES if not t.endswith("-input"))

# Priority for automation. ASHRAE 135 Table 19-1: 1 manual life safety, 2 automatic life safety,
# 5 critical equipment control, 6 minimum on/off, 8 manual operator; the rest are free. A building's
# own controllers and schedules usually command at 16 (and 13-15); the control room's automation
# at 12 outranks them without taking the operator's 8 on site, and leaves 9-11 for the city's
# higher-ranking automation (crisis mode).
DEFAULT_PRIORITY = 12

_ADDRESS = re.compile(r"^(?P<ip>\d{1,3}(?:\.\d{1,3}){3})(?:/(?P<mask>\d{1,2}))?(?::(?P<port>\d{1,5}))?$")
_OBJECT = re.compile(r"^(?P<type>[a-z-]+),(?P<instance>\d+)$")


def parse_address(text: str, *, mask_allowed: bool) -> tuple[str, int | None, int]:
    """``ip[/mask][:port]`` -> (ip, mask, port); ValueError naming what is wrong."""
    m = _ADDRESS.match(text)
    if not m:
        form = "ip[/mask][:port]" if mask_allowed else "ip[:port]"
        raise ValueError(f"{text!r} is not an IPv4 address of the form {form}")
    try:
        ipaddress.IPv4Address(m["ip"])
    except ValueError as err:
        raise ValueError(f"{text!r}: {err}") from None
    mask = int(m["mask"]) if m["mask"] is not None else None
    if mask is not None and (not mask_allowed or not 0 <= mask <= 32):
        raise ValueError(f"{text!r}: " + ("mask must be 0-32" if mask_allowed else "no /mask here"))
    port = int(m["port"]) if m["port"] is not None else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return m["ip"], mask, port


class BacnetBusConfig(BusConfigBase):
    """One BACnet/IP network port of the gateway: its own address and the client's timing."""

    driver: Literal["bacnet"] = "bacnet"
    address: str = Field(description="the gateway's own ip[/mask][:port]; port 47808 if omitted")
    local_instance: int = Field(
        default=4194300, ge=0, le=MAX_INSTANCE, description="device instance of the gateway itself"
    )
    # bacpypes3 defaults to 3 s x (1 + 3 retries) = 12 s per request: far too long for a gateway
    # that polls many devices on one port.
    apdu_timeout_s: float = Field(default=2.0, gt=0, le=60)
    apdu_retries: int = Field(default=1, ge=0, le=5)
    # Devices without an address are found by Who-Is (for their instance) sent here: a
    # broadcast address (the default: the bus subnet's broadcast at 47808) or one device.
    who_is_to: str | None = Field(
        default=None, description="ip[:port] Who-Is goes to for devices without an address"
    )
    who_is_timeout_s: float = Field(default=2.0, gt=0, le=60, description="how long to wait for I-Am")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value, mask_allowed=True)
        return value

    @field_validator("who_is_to")
    @classmethod
    def _who_is_to(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value, mask_allowed=False)
        return value

    def who_is_address(self) -> str:
        """``ip:port`` a Who-Is for an unaddressed device goes to."""
        if self.who_is_to is not None:
            ip, _, port = parse_address(self.who_is_to, mask_allowed=False)
            return f"{ip}:{port}"
        ip, mask, _ = parse_address(self.address, mask_allowed=True)
        if mask is None:
            return f"255.255.255.255:{DEFAULT_PORT}"
        net = ipaddress.IPv4Network(f"{ip}/{mask}", strict=False)
        return f"{net.broadcast_address}:{DEFAULT_PORT}"

    @property
    def port(self) -> int:
        """The UDP port the gateway binds."""
        return parse_address(self.address, mask_allowed=True)[2]

    def bacpypes_address(self) -> str:
        """The address as bacpypes3's IPv4Address wants it, with the port spelled out."""
        ip, mask, port = parse_address(self.address, mask_allowed=True)
        return f"{ip}{'' if mask is None else f'/{mask}'}:{port}"

    def describe(self) -> str:
        """Where the bus is, for logs."""
        return f"bacnet/ip {self.bacpypes_address()}"


class BacnetPointConfig(PointConfigBase):
    """One property of one object: ``object: analog-value,3`` and ``property: present-value``."""

    object: str = Field(description="object type and instance, e.g. analog-value,3")
    # ``property`` in config; the attribute has another name so it does not shadow the builtin.
    prop: str = Field(default="present-value", alias="property", pattern=r"^[a-z][a-z-]*$")
    priority: int = Field(default=DEFAULT_PRIORITY, ge=1, le=16)
    cov: bool = Field(
        default=False, description="subscribe to change of value (still polled at interval_s as well)"
    )

    @field_validator("object")
    @classmethod
    def _object(cls, value: str) -> str:
        m = _OBJECT.match(value)
        if not m:
            raise ValueError(f"{value!r} is not 'type,instance' (e.g. analog-value,3)")
        if m["type"] not in OBJECT_TYPES:
            raise ValueError(f"unknown object type {m['type']!r} (known: {', '.join(OBJECT_TYPES)})")
        if int(m["instance"]) > MAX_INSTANCE:
            raise ValueError(f"instance {m['instance']} is above {MAX_INSTANCE}")
        return value

    @model_validator(mode="after")
    def _priority_needs_commandable(self) -> Self:
        if "priority" in self.model_fields_set and not self.writable:
            raise FieldError(("priority",), "priority applies to writable points only")
        if self.cov and self.prop != "present-value":
            raise FieldError(("cov",), "COV reports present-value and status-flags only")
        return self

    @property
    def object_type(self) -> str:
        """``analog-value`` of ``analog-value,3``."""
        return self.object.partition(",")[0]

    @property
    def commandable(self) -> bool:
        """Whether writes go through the priority array (outputs and values, present-value)."""
        return self.prop == "present-value" and self.object_type in COMMANDABLE

    def value_type(self) -> PointType:
        """bool for binary present-values, int for multi-state, float otherwise."""
        if self.prop == "present-value":
            if self.object_type.startswith("binary-"):
                return PointType.BOOL
            if self.object_type.startswith("multi-state-"):
                return PointType.INT
        return PointType.FLOAT


class BacnetDeviceConfig(DeviceConfigBase):
    """A BACnet device: its instance, and its ``address`` (ip:port) or none (found by Who-Is)."""

    address: str | None = Field(
        default=None, description="ip[:port] of the device; omitted: found by Who-Is for its instance"
    )
    device_instance: int = Field(ge=0, le=MAX_INSTANCE)
    read_multiple: bool = Field(
        default=True, description="use ReadPropertyMultiple (falls back to ReadProperty if rejected)"
    )
    # ASHRAE 135 §13.14.1.1.4: 0 would be "indefinite", which a restarted device forgets
    # silently; a finite lifetime is renewed shortly before it expires.
    cov_lifetime_s: int = Field(
        default=300, ge=5, le=86400, description="COV subscription lifetime, renewed before expiry"
    )
    points: tuple[BacnetPointConfig, ...] = ()

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value, mask_allowed=False)
        return value

    @model_validator(mode="after")
    def _unique_objects(self) -> Self:
        seen: dict[tuple[str, str], str] = {}
        for i, p in enumerate(self.points):
            key = (p.object, p.prop)
            if key in seen:
                raise FieldError(
                    ("points", i), f"points {seen[key]!r} and {p.id!r} both read {p.object} {p.prop}"
                )
            seen[key] = p.id
        return self

    def bacpypes_address(self) -> str | None:
        """``ip:port`` with the port spelled out; None for a device found by Who-Is."""
        if self.address is None:
            return None
        ip, _, port = parse_address(self.address, mask_allowed=False)
        return f"{ip}:{port}"


def check_bus(bus: BacnetBusConfig, devices: list[BacnetDeviceConfig]) -> list[tuple[str, str, str]]:
    """Clashes between the devices of one bus: (device id, field, message) for each.

    Two devices with one instance (device instances are unique on a BACnet internetwork,
    ASHRAE 135 §12.11.1); two devices at one ip:port (BACnet/IP without routing: one address is
    one device); a device at the gateway's own ip:port (on loopback it would answer the gateway
    itself, and the gateway could not bind).
    """
    out: list[tuple[str, str, str]] = []
    gw_ip = parse_address(bus.address, mask_allowed=True)[0]
    gw = f"{gw_ip}:{bus.port}"
    by_instance: dict[int, str] = {}
    by_address: dict[str, str] = {}
    for d in devices:
        if d.device_instance in by_instance:
            out.append(
                (
                    d.id,
                    "device_instance",
                    f"device instance {d.device_instance} is also device {by_instance[d.device_instance]!r} "
                    f"on bus {bus.id!r}: instances must be unique",
                )
            )
        else:
            by_instance[d.device_instance] = d.id
        addr = d.bacpypes_address()
        if addr is None:
            continue
        dev_ip, _, dev_port = addr.rpartition(":")
        # 0.0.0.0 binds every local address: a device on this host at the bus port clashes too
        local = dev_ip.startswith("127.") or dev_ip == gw_ip
        if addr == gw or (gw_ip == "0.0.0.0" and int(dev_port) == bus.port and local):
            out.append(
                (
                    d.id,
                    "address",
                    f"{addr} is the gateway's own address on bus {bus.id!r} "
                    "(give the device or the bus another port)",
                )
            )
        elif addr in by_address:
            out.append((d.id, "address", f"{addr} is also device {by_address[addr]!r} on bus {bus.id!r}"))
        else:
            by_address[addr] = d.id
    return out
