"""Config models of the Modbus driver: bus (TCP or RTU), device (unit id) and point (register)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from cnconfig import FieldError
from drivers.base import BusConfigBase, DeviceConfigBase, PointConfigBase
from wire import PointType

RegisterKind = Literal["coil", "discrete", "input", "holding"]
DataType = Literal["bool", "u16", "i16", "u32", "i32", "f32"]

# registers (16-bit words) per data type; bool occupies one bit
WIDTH: dict[str, int] = {"bool": 1, "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
INTEGER_TYPES = frozenset({"u16", "i16", "u32", "i32"})
# raw integer range of each integer type
RAW_RANGE: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
}
_SERIAL_KEYS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")
_TCP_KEYS = ("host", "port")


class ModbusBusConfig(BusConfigBase):
    """One Modbus bus: a TCP connection (to a device or gateway) or an RTU serial line."""

    driver: Literal["modbus"] = "modbus"
    transport: Literal["tcp", "rtu"]
    # tcp
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    # rtu (defaults per Modbus over Serial Line v1.02 §2.5.1: 8 data bits, even parity, 1 stop)
    serial_port: str | None = None
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    # common
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=10)
    max_block_registers: int = Field(default=125, ge=1, le=125)  # FC3/FC4 limit, spec §6.3
    max_block_bits: int = Field(default=2000, ge=1, le=2000)  # FC1/FC2 limit, spec §6.1
    max_gap: int = Field(default=0, ge=0, le=124)
    inter_request_delay_ms: float = Field(default=0.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        given = self.model_fields_set
        if self.transport == "tcp":
            if not self.host:
                raise ValueError("transport tcp requires 'host'")
            if stray := [k for k in _SERIAL_KEYS if k in given]:
                raise ValueError(f"{', '.join(map(repr, stray))} only apply to transport rtu")
        else:
            if not self.serial_port:
                raise ValueError("transport rtu requires 'serial_port'")
            if stray := [k for k in _TCP_KEYS if k in given]:
                raise ValueError(f"{', '.join(map(repr, stray))} only apply to transport tcp")
        return self

    def describe(self) -> str:
        """Where the bus goes, for logs: ``tcp 10.0.0.5:502`` or ``rtu /dev/ttyS1@9600 8E1``."""
        if self.transport == "tcp":
            return f"tcp {self.host}:{self.port}"
        return f"rtu {self.serial_port}@{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class ModbusPointConfig(PointConfigBase):
    """One value at a register address; engineering value = raw * scale + offset."""

    # ``register`` in config; the attribute has another name because pydantic models are ABCs
    # and ``register`` would shadow ABCMeta.register.
    register_kind: RegisterKind = Field(alias="register")
    address: int = Field(ge=0, le=65535)
    type: DataType = "u16"  # bool is filled in for coil/discrete when omitted
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "type" not in data
            and data.get("register")
            in (
                "coil",
                "discrete",
            )
        ):
            return {**data, "type": "bool"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        bits = self.register_kind in ("coil", "discrete")
        if bits and self.type != "bool":
            raise FieldError(
                ("type",), f"register {self.register_kind} holds bits: type must be bool, not {self.type}"
            )
        if not bits and self.type == "bool":
            raise FieldError(
                ("type",), f"type bool needs register coil or discrete, not {self.register_kind}"
            )
        if self.writable and self.register_kind not in ("coil", "holding"):
            raise FieldError(
                ("writable",), f"register {self.register_kind} is read-only: writable needs coil or holding"
            )
        if self.address + WIDTH[self.type] - 1 > 65535:
            raise FieldError(("address",), f"{self.type} at address {self.address} runs past 65535")
        if self.type == "bool" and (self.scale != 1 or self.offset != 0):
            raise FieldError(("type",), "scale and offset do not apply to type bool")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError("scale must be finite and non-zero, offset finite")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return WIDTH[self.type]

    def value_type(self) -> PointType:
        """bool for bits, int for unscaled integers, float otherwise."""
        if self.type == "bool":
            return PointType.BOOL
        if self.type in INTEGER_TYPES and self.scale == 1 and self.offset == 0:
            return PointType.INT
        return PointType.FLOAT


def overlaps(points: Sequence[ModbusPointConfig]) -> list[str]:
    """Descriptions of every pair of points sharing a register or bit (empty: none)."""
    return [msg for _, msg in _overlaps(points)]


def _overlaps(points: Sequence[ModbusPointConfig]) -> list[tuple[int, str]]:
    """(index of the later point, description) of every overlapping pair."""
    found: list[tuple[int, str]] = []
    by_kind: dict[str, list[tuple[int, ModbusPointConfig]]] = {}
    for i, p in enumerate(points):
        by_kind.setdefault(p.register_kind, []).append((i, p))
    for kind, group in by_kind.items():
        group.sort(key=lambda ip: ip[1].address)
        reach: ModbusPointConfig | None = None  # the point reaching furthest so far
        for i, p in group:
            if reach is not None and p.address <= reach.address + reach.width - 1:
                found.append((i, f"points {reach.id!r} and {p.id!r} overlap at {kind} {p.address}"))
            if reach is None or p.address + p.width > reach.address + reach.width:
                reach = p
    return found


class ModbusDeviceConfig(DeviceConfigBase):
    """A Modbus device on a bus, addressed by its unit id."""

    unit: int = Field(ge=1, le=247)  # 0 is broadcast (no answers), 248-255 reserved: spec MBSL §2.2
    points: tuple[ModbusPointConfig, ...] = ()

    @model_validator(mode="after")
    def _no_overlaps(self) -> Self:
        if problems := _overlaps(self.points):
            # Blame the first overlapping point so the error carries its line in the file.
            index = problems[0][0]
            raise FieldError(("points", index), "; ".join(msg for _, msg in problems))
        return self
