"""The register map and physics of a simulated lamp-cabinet controller (no I/O, no pymodbus).

Addresses are 0-based PDU addresses (Modbus Application Protocol v1.1b3 §4.4). Unmapped
addresses answer exception 2 (ILLEGAL DATA ADDRESS) like a real controller, so a request that
spans a gap fails as a whole. Inside the lamp table (100 .. 100+10N-1) the unused offsets of each
lamp's 10-register stride are reserved: they read 0 and refuse writes, so the whole table can
be read in one request.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

RegisterKind: TypeAlias = Literal["coil", "discrete", "holding", "input"]
KINDS: tuple[RegisterKind, ...] = ("coil", "discrete", "holding", "input")

# Modbus exception codes (Modbus Application Protocol v1.1b3 §7).
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

LAMP_BASE = 100  # holding/input/discrete 100 + 10n: each lamp owns a 10-address slot in every table
LAMP_STRIDE = 10
SCRATCH_BASE = 1000  # holding and coils 1000.. : a free test area for every data type
NOMINAL_DECIVOLTS = 2300
MAX_LAMPS = (SCRATCH_BASE - LAMP_BASE) // LAMP_STRIDE  # 90: the lamp table stops below 1000


@dataclass
class Lamp:
    """One lamp: its setpoint, whether it failed, and its energy counter."""

    setpoint: int = 100
    failed: bool = False
    energy_wh: float = 0.0


def _f32_words(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


class Cabinet:
    """State of one cabinet controller, read and written through its register map."""

    def __init__(
        self,
        lamps: int = 8,
        *,
        rated_w: float = 60.0,
        scratch: int = 16,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        churn: bool = False,
    ) -> None:
        if not 0 <= lamps <= MAX_LAMPS:
            raise ValueError(f"lamps must be 0..{MAX_LAMPS}, got {lamps}")
        self.lamps = [Lamp() for _ in range(lamps)]
        self.rated_w = rated_w
        self.contactor = True
        self.door_open = False
        self.holding_scratch = [0] * scratch
        self.coil_scratch = [False] * scratch
        # Benchmarks: every mapped register and bit answers a new value on every read.
        self.churn = churn
        self._reads = 0
        self._rng = random.Random(seed)
        self._clock = clock
        self._last = clock()

    # -- physics -------------------------------------------------------------------------------

    def level(self, n: int) -> int:
        """Actual level of lamp n in percent (0 when failed or the contactor is off)."""
        lamp = self.lamps[n]
        return 0 if lamp.failed or not self.contactor else lamp.setpoint

    def power_w(self, n: int) -> float:
        """Power of lamp n in watts (linear in level)."""
        return self.rated_w * self.level(n) / 100.0

    def cabinet_power_w(self) -> float:
        """Total active power of the cabinet in watts."""
        return sum(self.power_w(n) for n in range(len(self.lamps)))

    def cabinet_energy_kwh(self) -> float:
        """Total energy of the cabinet in kWh."""
        return sum(lamp.energy_wh for lamp in self.lamps) / 1000.0

    def advance(self) -> None:
        """Integrate energy up to now; call before any change of power and before reads."""
        now = self._clock()
        hours = (now - self._last) / 3600.0
        self._last = now
        if hours <= 0:
            return
        for n, lamp in enumerate(self.lamps):
            lamp.energy_wh += self.power_w(n) * hours

    # -- register map --------------------------------------------------------------------------

    def _lamp_slot(self, address: int) -> tuple[int, int] | None:
        if address < LAMP_BASE:
            return None
        n, off = divmod(address - LAMP_BASE, LAMP_STRIDE)
        return (n, off) if n < len(self.lamps) else None

    def _scratch_index(self, address: int) -> int | None:
        i = address - SCRATCH_BASE
        return i if 0 <= i < len(self.holding_scratch) else None

    def _input(self, address: int) -> int | None:
        if address == 0:
            return NOMINAL_DECIVOLTS + self._rng.randint(-15, 15)
        if 2 <= address <= 3:
            return _f32_words(self.cabinet_energy_kwh())[address - 2]
        if 4 <= address <= 5:
            return _f32_words(self.cabinet_power_w())[address - 4]
        slot = self._lamp_slot(address)
        if slot is None:
            return None
        n, off = slot
        if off == 0:
            return self.level(n)
        if off == 1:
            return round(self.power_w(n) * 10)
        if off in (2, 3):
            wh = int(self.lamps[n].energy_wh) & 0xFFFFFFFF
            return (wh >> 16) if off == 2 else (wh & 0xFFFF)
        return 0  # reserved inside the lamp table: reads 0

    def _holding(self, address: int) -> int | None:
        slot = self._lamp_slot(address)
        if slot is not None:
            return self.lamps[slot[0]].setpoint if slot[1] == 0 else 0  # reserved: reads 0
        i = self._scratch_index(address)
        return None if i is None else self.holding_scratch[i]

    def _discrete(self, address: int) -> bool | None:
        if address == 0:
            return self.door_open
        slot = self._lamp_slot(address)
        if slot is None:
            return None
        return self.lamps[slot[0]].failed if slot[1] == 0 else False  # reserved: reads false

    def _coil(self, address: int) -> bool | None:
        if address == 0:
            return self.contactor
        i = self._scratch_index(address)
        return None if i is None else self.coil_scratch[i]

    def read(self, kind: RegisterKind, address: int, count: int) -> list[int] | list[bool] | int:
        """Values of count registers/bits from address, or a Modbus exception code."""
        self.advance()
        getter = {
            "coil": self._coil,
            "discrete": self._discrete,
            "holding": self._holding,
            "input": self._input,
        }[kind]
        out = []
        for a in range(address, address + count):
            v = getter(a)
            if v is None:
                return ILLEGAL_ADDRESS
            out.append(v)
        if self.churn:
            # Values stay in 0..99 (in range of a percent level) and differ from the last read.
            self._reads += 1
            t = self._reads
            if kind in ("coil", "discrete"):
                return [(t + a) & 1 == 1 for a in range(address, address + count)]
            return [(t + a) % 100 for a in range(address, address + count)]
        return out  # type: ignore[return-value]

    def write(self, kind: RegisterKind, address: int, values: list[int] | list[bool]) -> int | None:
        """Write values from address (all or nothing); a Modbus exception code on refusal."""
        self.advance()
        if kind == "holding":
            return self._write_holding(address, [int(v) for v in values])
        if kind == "coil":
            return self._write_coils(address, [bool(v) for v in values])
        return ILLEGAL_ADDRESS  # inputs and discrete inputs have no write function

    def _write_holding(self, address: int, values: list[int]) -> int | None:
        plan: list[tuple[Lamp | None, int, int]] = []
        for a, v in zip(range(address, address + len(values)), values, strict=True):
            slot = self._lamp_slot(a)
            if slot is not None and slot[1] == 0:
                if not 0 <= v <= 100:
                    return ILLEGAL_VALUE
                plan.append((self.lamps[slot[0]], -1, v))
                continue
            i = self._scratch_index(a)
            if i is None:
                return ILLEGAL_ADDRESS
            plan.append((None, i, v))
        for lamp, i, v in plan:  # all checked: apply
            if lamp is not None:
                lamp.setpoint = v
            else:
                self.holding_scratch[i] = v
        return None

    def _write_coils(self, address: int, values: list[bool]) -> int | None:
        targets: list[int] = []
        for a in range(address, address + len(values)):
            if a != 0 and self._scratch_index(a) is None:
                return ILLEGAL_ADDRESS
            targets.append(a)
        for a, v in zip(targets, values, strict=True):
            if a == 0:
                self.contactor = v
            else:
                self.coil_scratch[a - SCRATCH_BASE] = v
        return None

    def snapshot(self) -> dict[str, object]:
        """Every mapped register and bit, and the lamp states, as plain JSON-able data."""
        self.advance()
        mapped: dict[str, list[int]] = {
            "coil": [0, *range(SCRATCH_BASE, SCRATCH_BASE + len(self.coil_scratch))],
            "discrete": [0, *(LAMP_BASE + LAMP_STRIDE * n for n in range(len(self.lamps)))],
            "holding": [
                *(LAMP_BASE + LAMP_STRIDE * n for n in range(len(self.lamps))),
                *range(SCRATCH_BASE, SCRATCH_BASE + len(self.holding_scratch)),
            ],
            "input": [
                0,
                2,
                3,
                4,
                5,
                *(LAMP_BASE + LAMP_STRIDE * n + k for n in range(len(self.lamps)) for k in range(4)),
            ],
        }
        registers = {}
        for kind, addresses in mapped.items():
            values = {}
            for a in addresses:
                v = self.read(kind, a, 1)  # type: ignore[arg-type]
                assert isinstance(v, list)
                values[str(a)] = v[0]
            registers[kind] = values
        return {
            "contactor": self.contactor,
            "door_open": self.door_open,
            "cabinet_power_w": self.cabinet_power_w(),
            "cabinet_energy_kwh": self.cabinet_energy_kwh(),
            "lamps": [
                {
                    "n": n,
                    "setpoint": lamp.setpoint,
                    "level": self.level(n),
                    "failed": lamp.failed,
                    "power_w": self.power_w(n),
                    "energy_wh": lamp.energy_wh,
                }
                for n, lamp in enumerate(self.lamps)
            ],
            "registers": registers,
        }
