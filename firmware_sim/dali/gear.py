"""DALI control gear (IEC 62386-102) on one bus: addressing, levels, fades, status, answers.

Pure logic with an injected clock: ``GearBus.forward(frame, now)`` applies one 16-bit forward
frame and returns the backward frames the gear would send. The LUBA emulation in ``luba.py``
puts it on a pty with the bus's timing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MASK = 0xFF
# IEC 62386-102 §9.5.2 Table 5: fade time N (1..15) lasts 0.5 * sqrt(2**N) seconds; 0: no fade.
FADE_TIMES_S: tuple[float, ...] = (0.0, *(0.5 * math.sqrt(2**n) for n in range(1, 16)))
# Send-twice configuration commands take effect only when repeated within 100 ms
# (IEC 62386-102 §9.3 / 101 §9.4).
SEND_TWICE_WINDOW_S = 0.1

# Standard commands (IEC 62386-102 §11, Table 15), selector bit set.
OFF, RECALL_MAX, RECALL_MIN = 0x00, 0x05, 0x06
GO_TO_SCENE = 0x10  # 0x10..0x1F
RESET, STORE_ACTUAL_IN_DTR0 = 0x20, 0x21
SET_MAX, SET_MIN, SET_SYSTEM_FAILURE, SET_POWER_ON, SET_FADE_TIME = 0x2A, 0x2B, 0x2C, 0x2D, 0x2E
SET_SCENE, REMOVE_FROM_SCENE = 0x40, 0x50
ADD_TO_GROUP, REMOVE_FROM_GROUP, SET_SHORT_ADDRESS = 0x60, 0x70, 0x80
Q_STATUS, Q_GEAR_PRESENT, Q_LAMP_FAILURE, Q_LAMP_POWER_ON = 0x90, 0x91, 0x92, 0x93
Q_LIMIT_ERROR, Q_RESET_STATE, Q_MISSING_SHORT, Q_VERSION, Q_DTR0 = 0x94, 0x95, 0x96, 0x97, 0x98
Q_DEVICE_TYPE, Q_PHYSICAL_MIN, Q_POWER_FAILURE = 0x99, 0x9A, 0x9B
Q_ACTUAL, Q_MAX, Q_MIN, Q_POWER_ON, Q_SYSTEM_FAILURE, Q_FADE = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5
Q_GEAR_FAILURE = 0xAA
Q_SCENE = 0xB0  # 0xB0..0xBF
Q_GROUPS_0_7, Q_GROUPS_8_15 = 0xC0, 0xC1
READ_MEMORY_LOCATION = 0xC5
# Special commands (address byte 101xxxx1 / 110xxxx1, IEC 62386-102 Table 16).
SPECIAL_DTR0, SPECIAL_DTR1 = 0xA3, 0xC3
VERSION_DALI2 = 8  # version 2.0 encoded as 0b000010_00 (IEC 62386-102 §11.3.7)
DEVICE_TYPE_LED = 6  # IEC 62386-207
# D4i energy reporting (DiiA Part 252, memory bank 202): active energy at locations 0x04 (scale,
# a signed power of ten) and 0x05-0x0A (Wh, MSB first), active power at 0x0B (scale) and
# 0x0C-0x0F (W).
BANK_ENERGY = 202
_FADE_STEP_S = 0.01  # integration step of the energy over a running fade


def light_percent(level: int) -> float:
    """Light output in % of arc power level ``level`` on the log curve (IEC 62386-102 §9.3)."""
    return 0.0 if level == 0 else 10 ** ((level - 1) / (253 / 3) - 1)


@dataclass
class Gear:
    """One control gear (an LED driver) with its variables (IEC 62386-102 Table 14)."""

    short_address: int | None
    groups: int = 0  # bit n: member of group n
    min_level: int = 1
    max_level: int = 254
    physical_min: int = 1
    power_on_level: int = 254
    system_failure_level: int = 254
    fade_time: int = 0
    dtr0: int = 0
    scenes: list[int] = field(default_factory=lambda: [MASK] * 16)
    lamp_failure: bool = False
    gear_failure: bool = False
    power_cycle_seen: bool = True  # "power failure" bit: set at power-on, cleared by an arc command
    limit_error: bool = False
    reset_state: bool = False
    connected: bool = True  # False: the gear never answers (wire cut, gear dead)
    dtr1: int = 0
    # D4i (memory bank 202): power follows light output (an LED driver, standby power ignored)
    d4i: bool = True
    rated_w: float = 60.0
    energy_scale: int = -1  # 10**-1 Wh resolution
    power_scale: int = -1
    _energy_wh: float = 0.0
    _energy_t: float = 0.0  # the energy is integrated up to this time
    _latched: dict[int, bytes] = field(default_factory=dict)  # value's first location -> bytes
    # fade state: the level goes linearly in arc steps from start to target over [t0, t1]
    _start: float = 254.0
    _target: int = 254
    _t0: float = 0.0
    _t1: float = 0.0

    def level_at(self, now: float) -> int:
        """The actual arc power level at ``now`` (0 = off), ignoring lamp failure."""
        if now >= self._t1 or self._t1 <= self._t0:
            return self._target
        frac = (now - self._t0) / (self._t1 - self._t0)
        return round(self._start + (self._target - self._start) * frac)

    def fading(self, now: float) -> bool:
        """Whether a fade is running at ``now``."""
        return now < self._t1 and self.level_at(now) != self._target

    def power_w(self, now: float) -> float:
        """Active power at ``now``: the rated power times the light output."""
        if self.lamp_failure:
            return 0.0
        return self.rated_w * light_percent(self.level_at(now)) / 100

    def integrate(self, now: float) -> None:
        """Add the energy used since the last call (exact outside fades, 10 ms steps in them)."""
        t = self._energy_t
        while t < now:
            step = min(_FADE_STEP_S, now - t) if t < self._t1 else now - t
            self._energy_wh += self.power_w(t + step / 2) * step / 3600
            t += step
        self._energy_t = max(self._energy_t, now)

    def energy_wh(self, now: float) -> float:
        """Active energy used up to ``now`` in Wh."""
        self.integrate(now)
        return self._energy_wh

    def set_energy(self, wh: float, now: float) -> None:
        """Set the energy counter (e.g. a lamp that has run for years)."""
        self.integrate(now)
        self._energy_wh = wh

    def memory(self, bank: int, loc: int, now: float) -> int | None:
        """One byte of a memory bank; None where not implemented (READ MEMORY LOCATION: NO).

        A multi-byte value is captured when its first byte (the scale) is read, so that a
        value read over several frames is consistent (what latching gives on real gear).
        """
        if bank == 0:  # IEC 62386-102 §9.10.6: last address, reserved, last accessible bank
            return (0x02, 0x00, BANK_ENERGY if self.d4i else 0x00)[loc] if loc <= 0x02 else None
        if bank != BANK_ENERGY or not self.d4i or loc > 0x0F:
            return None
        if loc == 0x04:
            raw = round(self.energy_wh(now) / 10**self.energy_scale)
            self._latched[0x04] = bytes([self.energy_scale & 0xFF]) + raw.to_bytes(6, "big")
        elif loc == 0x0B:
            raw = round(self.power_w(now) / 10**self.power_scale)
            self._latched[0x0B] = bytes([self.power_scale & 0xFF]) + raw.to_bytes(4, "big")
        if 0x04 <= loc <= 0x0A:
            return self._latched.get(0x04, bytes(7))[loc - 0x04]
        if 0x0B <= loc <= 0x0F:
            return self._latched.get(0x0B, bytes(5))[loc - 0x0B]
        return (0x0F, 0x00, 0xFF, 0x01)[loc]  # last address, indicator, lock byte, version

    def go_to(self, level: int, now: float, *, fade: bool) -> None:
        """Start going to ``level`` (0: off), clamped to MIN..MAX with the limit error set."""
        self.integrate(now)
        self.limit_error = False
        if level != 0:
            if level < self.min_level:
                level, self.limit_error = self.min_level, True
            elif level > self.max_level:
                level, self.limit_error = self.max_level, True
        self._start = float(self.level_at(now))
        self._target = level
        self._t0 = now
        self._t1 = now + (FADE_TIMES_S[self.fade_time] if fade else 0.0)
        self.power_cycle_seen = False

    def stop_fade(self, now: float) -> None:
        """DAPC MASK: stop a running fade where it is."""
        self.go_to(self.level_at(now), now, fade=False)

    def status(self, now: float) -> int:
        """The QUERY STATUS byte (IEC 62386-102 §11.5.2, Table 17)."""
        level = self.level_at(now)
        bits = (
            self.gear_failure,  # bit 0: control gear failure
            self.lamp_failure,  # bit 1: lamp failure
            level > 0 and not self.lamp_failure,  # bit 2: lamp on
            self.limit_error,  # bit 3: limit error
            self.fading(now),  # bit 4: fade running
            self.reset_state,  # bit 5: reset state
            self.short_address is None,  # bit 6: missing short address
            self.power_cycle_seen,  # bit 7: power failure (power cycle seen)
        )
        return sum(1 << i for i, on in enumerate(bits) if on)


@dataclass
class BusStats:
    """Frame counters of one bus, for tests and benchmarks."""

    forward_frames: int = 0  # every 16/24-bit frame the master put on the bus
    backward_frames: int = 0  # answers that reached the master intact
    collisions: int = 0  # queries answered by more than one gear at once
    by_opcode: dict[str, int] = field(default_factory=dict)


class GearBus:
    """Control gear sharing one DALI bus; applies forward frames and computes the answers."""

    def __init__(self, gear: list[Gear]) -> None:
        self.gear = gear
        self.stats = BusStats()
        self._last_config: tuple[bytes, float] | None = None

    def _addressed(self, addr: int) -> list[Gear]:
        """Gear selected by the address byte (IEC 62386-102 §7.2.2, Table 1)."""
        a = addr >> 1
        if a == 0x7F:  # 1111111S broadcast
            return [g for g in self.gear if g.connected]
        if a == 0x7E:  # 1111110S broadcast unaddressed
            return [g for g in self.gear if g.connected and g.short_address is None]
        if a & 0x40 == 0:  # 0AAAAAAS short address
            return [g for g in self.gear if g.connected and g.short_address == a]
        if a & 0x70 == 0x40:  # 100GGGGS group
            n = a & 0x0F
            return [g for g in self.gear if g.connected and g.groups >> n & 1]
        return []

    def forward(self, frame: bytes, now: float) -> list[int]:
        """Apply one forward frame at ``now``; the backward frames of every gear that answers."""
        self.stats.forward_frames += 1
        if len(frame) != 2:
            return []  # 24-bit frames address control devices (part 103), not gear
        addr, data = frame
        if addr & 0x01 == 0:  # selector bit 0: DAPC (IEC 62386-102 §11.2.1)
            self._count("DAPC")
            for g in self._addressed(addr):
                if data == MASK:
                    g.stop_fade(now)
                else:
                    g.go_to(data, now, fade=True)
            return []
        if addr >> 5 in (0b101, 0b110):  # special commands: every gear listens
            self._count(f"special 0x{addr:02X}")
            if addr == SPECIAL_DTR0:
                for g in self.gear:
                    g.dtr0 = data
            elif addr == SPECIAL_DTR1:
                for g in self.gear:
                    g.dtr1 = data
            return []
        targets = self._addressed(addr)
        self._count(f"0x{data:02X}")
        if 0x20 <= data <= 0x81:  # configuration: needs the repeat within 100 ms
            first = self._last_config is None or (
                self._last_config[0] != frame or now - self._last_config[1] > SEND_TWICE_WINDOW_S
            )
            self._last_config = None if not first else (frame, now)
            if first:
                return []
        else:
            self._last_config = None
        answers = [a for g in targets if (a := self._apply(g, data, now)) is not None]
        return answers

    def _count(self, name: str) -> None:
        self.stats.by_opcode[name] = self.stats.by_opcode.get(name, 0) + 1

    def _apply(self, g: Gear, op: int, now: float) -> int | None:
        """One standard command on one gear; its answer (None: no answer, i.e. NO)."""
        if op == OFF:
            g.go_to(0, now, fade=False)
        elif op == RECALL_MAX:
            g.go_to(g.max_level, now, fade=False)
        elif op == RECALL_MIN:
            g.go_to(g.min_level, now, fade=False)
        elif GO_TO_SCENE <= op <= GO_TO_SCENE + 15:
            level = g.scenes[op - GO_TO_SCENE]
            if level != MASK:
                g.go_to(level, now, fade=True)
        elif op == RESET:
            keep = (g.short_address, g.lamp_failure, g.gear_failure, g.connected, g.physical_min)
            fresh = Gear(short_address=keep[0], physical_min=keep[4], min_level=keep[4])
            fresh.lamp_failure, fresh.gear_failure, fresh.connected = keep[1:4]
            # the D4i energy counter is not a variable RESET touches (DiiA Part 252)
            fresh.d4i, fresh.rated_w = g.d4i, g.rated_w
            fresh.energy_scale, fresh.power_scale = g.energy_scale, g.power_scale
            fresh.set_energy(g.energy_wh(now), now)
            fresh.reset_state, fresh.power_cycle_seen = True, False
            fresh.go_to(254, now, fade=False)
            vars(g).update(vars(fresh))
        elif op == STORE_ACTUAL_IN_DTR0:
            g.dtr0 = g.level_at(now)
        elif op == SET_MAX:
            g.max_level = max(g.min_level, min(254, g.dtr0))
        elif op == SET_MIN:
            g.min_level = max(g.physical_min, min(g.max_level, g.dtr0))
        elif op == SET_SYSTEM_FAILURE:
            g.system_failure_level = g.dtr0
        elif op == SET_POWER_ON:
            g.power_on_level = g.dtr0
        elif op == SET_FADE_TIME:
            g.fade_time = min(g.dtr0, 15)
        elif SET_SCENE <= op <= SET_SCENE + 15:
            g.scenes[op - SET_SCENE] = g.dtr0
        elif REMOVE_FROM_SCENE <= op <= REMOVE_FROM_SCENE + 15:
            g.scenes[op - REMOVE_FROM_SCENE] = MASK
        elif ADD_TO_GROUP <= op <= ADD_TO_GROUP + 15:
            g.groups |= 1 << (op - ADD_TO_GROUP)
        elif REMOVE_FROM_GROUP <= op <= REMOVE_FROM_GROUP + 15:
            g.groups &= ~(1 << (op - REMOVE_FROM_GROUP))
        elif op == SET_SHORT_ADDRESS:
            d = g.dtr0
            g.short_address = None if d == MASK else (d >> 1 if d & 0x81 == 0x01 else g.short_address)
        else:
            return self._query(g, op, now)
        return None

    def _query(self, g: Gear, op: int, now: float) -> int | None:
        """A query's answer: a byte, 0xFF for YES, None for NO (no backward frame)."""
        yes = MASK
        if op == Q_STATUS:
            return g.status(now)
        if op == Q_GEAR_PRESENT:
            return yes
        if op == Q_LAMP_FAILURE:
            return yes if g.lamp_failure else None
        if op == Q_LAMP_POWER_ON:
            return yes if g.level_at(now) > 0 and not g.lamp_failure else None
        if op == Q_LIMIT_ERROR:
            return yes if g.limit_error else None
        if op == Q_RESET_STATE:
            return yes if g.reset_state else None
        if op == Q_MISSING_SHORT:
            return yes if g.short_address is None else None
        if op == Q_POWER_FAILURE:
            return yes if g.power_cycle_seen else None
        if op == Q_GEAR_FAILURE:
            return yes if g.gear_failure else None
        if op == Q_VERSION:
            return VERSION_DALI2
        if op == Q_DTR0:
            return g.dtr0
        if op == Q_DEVICE_TYPE:
            return DEVICE_TYPE_LED
        if op == Q_PHYSICAL_MIN:
            return g.physical_min
        if op == Q_ACTUAL:
            # A failed lamp answers MASK (IEC 62386-102 §11.5.? "actualLevel" during lamp failure).
            return MASK if g.lamp_failure else g.level_at(now)
        if op == Q_MAX:
            return g.max_level
        if op == Q_MIN:
            return g.min_level
        if op == Q_POWER_ON:
            return g.power_on_level
        if op == Q_SYSTEM_FAILURE:
            return g.system_failure_level
        if op == Q_FADE:
            return g.fade_time << 4 | 7  # fade rate 7 (default)
        if op == READ_MEMORY_LOCATION:
            value = g.memory(g.dtr1, g.dtr0, now)
            if value is not None and g.dtr0 < 0xFF:
                g.dtr0 += 1
            return value
        if Q_SCENE <= op <= Q_SCENE + 15:
            return g.scenes[op - Q_SCENE]
        if op == Q_GROUPS_0_7:
            return g.groups & 0xFF
        if op == Q_GROUPS_8_15:
            return g.groups >> 8 & 0xFF
        return None
