"""Block planning and value coding for Modbus points: pure functions, no I/O."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.base import PointError
from wire import Value

from .config import INTEGER_TYPES, RAW_RANGE, ModbusPointConfig, RegisterKind

# Modbus Application Protocol v1.1b3 §7 (4 and 6 keep their traditional "slave" names).
EXCEPTION_NAMES: dict[int, str] = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SLAVE DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SLAVE DEVICE BUSY",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}
F32_MAX = 3.4028234663852886e38
_HH = struct.Struct(">HH")
_F = struct.Struct(">f")

Decoder = Callable[[Sequence[int], int], Value]


def exception_text(code: int, where: str) -> str:
    """``exception 2 ILLEGAL DATA ADDRESS at holding 100-109``."""
    return f"exception {code} {EXCEPTION_NAMES.get(code, 'UNKNOWN')} at {where}"


@dataclass(frozen=True, slots=True)
class Item:
    """Where one requested point sits in a block's answer, and how to decode it."""

    index: int  # position in the caller's point list
    offset: int  # registers (or bits) from the block start
    point: ModbusPointConfig
    decode: Decoder
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: a register kind, a start address and a count, and what is in it."""

    register: RegisterKind
    start: int
    count: int
    items: tuple[Item, ...]

    @property
    def label(self) -> str:
        """``holding 100-109`` for messages."""
        return f"{self.register} {self.start}-{self.start + self.count - 1}"


def _raw_decoder(p: ModbusPointConfig) -> Decoder:
    t = p.type
    if t == "bool":
        return lambda r, o: bool(r[o])
    if t == "u16":
        return lambda r, o: r[o]
    if t == "i16":
        return lambda r, o: r[o] - 0x10000 if r[o] & 0x8000 else r[o]
    # 32-bit: which register carries the high word
    hi, lo = (0, 1) if p.word_order == "big" else (1, 0)
    if t == "u32":
        return lambda r, o: (r[o + hi] << 16) | r[o + lo]
    if t == "i32":

        def i32(r: Sequence[int], o: int) -> int:
            v = (r[o + hi] << 16) | r[o + lo]
            return v - 0x1_0000_0000 if v & 0x8000_0000 else v

        return i32
    return lambda r, o: _F.unpack(_HH.pack(r[o + hi], r[o + lo]))[0]


def decoder(p: ModbusPointConfig) -> Decoder:
    """raw registers/bits at an offset -> engineering value."""
    raw = _raw_decoder(p)
    if p.scale == 1 and p.offset == 0:
        return raw
    scale, offset = p.scale, p.offset
    return lambda r, o: raw(r, o) * scale + offset  # type: ignore[operator]


def plan_blocks(
    points: Sequence[ModbusPointConfig], *, max_registers: int, max_bits: int, max_gap: int
) -> tuple[Block, ...]:
    """Group points into the fewest requests that respect the size limits and the gap limit."""
    by_kind: dict[RegisterKind, list[tuple[int, ModbusPointConfig]]] = {}
    for i, p in enumerate(points):
        by_kind.setdefault(p.register_kind, []).append((i, p))
    blocks: list[Block] = []
    for kind in ("coil", "discrete", "holding", "input"):
        group = sorted(by_kind.get(kind, ()), key=lambda ip: ip[1].address)  # type: ignore[arg-type]
        limit = max_bits if kind in ("coil", "discrete") else max_registers
        current: list[tuple[int, ModbusPointConfig]] = []
        start = end = 0
        for i, p in group:
            a, w = p.address, p.width
            if current and a - end <= max_gap and max(end, a + w) - start <= limit:
                current.append((i, p))
                end = max(end, a + w)
                continue
            if current:
                blocks.append(_block(kind, start, end, current))  # type: ignore[arg-type]
            current, start, end = [(i, p)], a, a + w
        if current:
            blocks.append(_block(kind, start, end, current))  # type: ignore[arg-type]
    return tuple(blocks)


def _block(kind: RegisterKind, start: int, end: int, members: list[tuple[int, ModbusPointConfig]]) -> Block:
    items = tuple(Item(i, p.address - start, p, decoder(p), p.min, p.max) for i, p in members)
    return Block(kind, start, end - start, items)


def encode(p: ModbusPointConfig, value: Value) -> bool | list[int]:
    """Engineering value -> the coil state or the registers to write; PointError if it can't."""
    if p.type == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise PointError(f"point {p.id!r} is a bool, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PointError(f"point {p.id!r} takes a number, got {value!r}")
    if not math.isfinite(value):
        raise PointError(f"point {p.id!r}: {value!r} is not a finite number")
    raw = (value - p.offset) / p.scale
    if p.type in INTEGER_TYPES:
        n = round(raw)
        lo, hi = RAW_RANGE[p.type]
        if not lo <= n <= hi:
            raise PointError(f"point {p.id!r}: {value!r} is raw {n}, outside {p.type} range {lo}..{hi}")
        n &= 0xFFFF_FFFF if p.width == 2 else 0xFFFF
        words = [n] if p.width == 1 else [n >> 16, n & 0xFFFF]
    else:
        if abs(raw) > F32_MAX:
            raise PointError(f"point {p.id!r}: {value!r} does not fit a float32")
        words = list(_HH.unpack(_F.pack(raw)))
    if p.word_order == "little" and len(words) == 2:
        words.reverse()
    return words
