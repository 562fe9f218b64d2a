"""DALI control gear (IEC 62386-102) on one bus: addressing, levels, fades, status, answers.

Pure logic with an injected clock: ``GearBus.forward(frame, now)`` applies one 16-bit forward
frame and returns the backward frames the gear would send. The LUBA emulation in ``luba.py``
puts it on a pty with the bus's timing. Commissioning (random addresses, the search, PROGRAM
SHORT ADDRESS) follows 102 §9.14; memory banks are in ``memory.py``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from . import memory

MASK = 0xFF
YES = 0xFF
GARBLED = -1  # an answer that reaches the master as a framing error
# IEC 62386-102 §9.5.2 Table 5: fade time N (1..15) lasts 0.5 * sqrt(2**N) seconds; 0: no fade.
FADE_TIMES_S: tuple[float, ...] = (0.0, *(0.5 * math.sqrt(2**n) for n in range(1, 16)))
# Table 6: fade rate N (1..15) is 506 / sqrt(2**N) steps per second (UP/DOWN run for 200 ms).
FADE_RATES: tuple[float, ...] = (0.0, *(506 / math.sqrt(2**n) for n in range(1, 16)))
UP_DOWN_S = 0.2
# Send-twice configuration commands take effect only when repeated within 100 ms
# (IEC 62386-102 §9.3 / 101 §9.4).
SEND_TWICE_WINDOW_S = 0.1
INITIALISE_S = 15 * 60  # the initialisation state lasts 15 minutes (102 §9.14.2)
IDENTIFY_S = 10.0  # IDENTIFY DEVICE: the identification procedure runs ~10 s (102 §11.4.?)

# Standard commands (IEC 62386-102 §11, Table 15), selector bit set.
OFF, UP, DOWN, STEP_UP, STEP_DOWN, RECALL_MAX, RECALL_MIN = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
GO_TO_SCENE = 0x10  # 0x10..0x1F
RESET, STORE_ACTUAL_IN_DTR0, IDENTIFY_DEVICE = 0x20, 0x21, 0x25
SET_MAX, SET_MIN, SET_SYSTEM_FAILURE, SET_POWER_ON = 0x2A, 0x2B, 0x2C, 0x2D
SET_FADE_TIME, SET_FADE_RATE = 0x2E, 0x2F
SET_SCENE, REMOVE_FROM_SCENE = 0x40, 0x50
ADD_TO_GROUP, REMOVE_FROM_GROUP, SET_SHORT_ADDRESS = 0x60, 0x70, 0x80
CONFIG_FIRST, CONFIG_LAST = 0x20, 0x81  # configuration commands: send twice
Q_STATUS, Q_GEAR_PRESENT, Q_LAMP_FAILURE, Q_LAMP_POWER_ON = 0x90, 0x91, 0x92, 0x93
Q_LIMIT_ERROR, Q_RESET_STATE, Q_MISSING_SHORT, Q_VERSION, Q_DTR0 = 0x94, 0x95, 0x96, 0x97, 0x98
Q_DEVICE_TYPE, Q_PHYSICAL_MIN, Q_POWER_FAILURE = 0x99, 0x9A, 0x9B
Q_ACTUAL, Q_MAX, Q_MIN, Q_POWER_ON, Q_SYSTEM_FAILURE, Q_FADE = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5
Q_GEAR_FAILURE = 0xAA
Q_SCENE = 0xB0  # 0xB0..0xBF
Q_GROUPS_0_7, Q_GROUPS_8_15 = 0xC0, 0xC1
Q_RANDOM_H, Q_RANDOM_M, Q_RANDOM_L = 0xC2, 0xC3, 0xC4
READ_MEMORY_LOCATION = 0xC5
# Special commands (address byte 101xxxx1 / 110xxxx1, IEC 62386-102 Table 16).
TERMINATE, SPECIAL_DTR0, INITIALISE, RANDOMISE, COMPARE, WITHDRAW = 0xA1, 0xA3, 0xA5, 0xA7, 0xA9, 0xAB
SEARCH_H, SEARCH_M, SEARCH_L = 0xB1, 0xB3, 0xB5
PROGRAM_SHORT_ADDRESS, VERIFY_SHORT_ADDRESS, QUERY_SHORT_ADDRESS = 0xB7, 0xB9, 0xBB
ENABLE_DEVICE_TYPE, SPECIAL_DTR1, SPECIAL_DTR2 = 0xC1, 0xC3, 0xC5
_SPECIAL_TWICE = frozenset({INITIALISE, RANDOMISE})
VERSION_DALI2 = 8  # version 2.0 encoded as 0b000010_00 (IEC 62386-102 §11.3.7)
VERSION_DALI1 = 1
DEVICE_TYPE_LED = 6  # IEC 62386-207
DEVICE_TYPE_COLOUR = 8  # IEC 62386-209 (DT8); here only colour temperature Tc
# DT8 application extended commands (IEC 62386-209 Table 10), after ENABLE DEVICE TYPE 8
DT8_ACTIVATE, DT8_SET_TEMPORARY_TC = 0xE2, 0xE7
DT8_QUERY_COLOUR_STATUS, DT8_QUERY_TYPE_FEATURES, DT8_QUERY_COLOUR_VALUE = 0xF8, 0xF9, 0xFA
DT8_COLOUR_VALUE_TC = 2  # QUERY COLOUR VALUE selector (209 Table 11): colour temperature
DT8_COLOUR_VALUE_COOLEST, DT8_COLOUR_VALUE_WARMEST = 128, 130
BANK_ENERGY = memory.BANK_ENERGY
_FADE_STEP_S = 0.01  # integration step of the energy over a running fade


def light_percent(level: int) -> float:
    """Light output in % of arc power level ``level`` on the log curve (IEC 62386-102 §9.3)."""
    return 0.0 if level == 0 else 10 ** ((level - 1) / (253 / 3) - 1)


def _short(data: int) -> int | None:
    """The short address in a 0AAAAAA1 byte; None for anything else."""
    return data >> 1 if data & 0x81 == 0x01 else None


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
    fade_rate: int = 7
    dtr0: int = 0
    scenes: list[int] = field(default_factory=lambda: [MASK] * 16)
    lamp_failure: bool = False
    gear_failure: bool = False
    power_cycle_seen: bool = True  # "power failure" bit: set at power-on, cleared by an arc command
    limit_error: bool = False
    reset_state: bool = False
    connected: bool = True  # False: the gear never answers (wire cut, gear dead)
    version: int = VERSION_DALI2  # VERSION_DALI1: no IDENTIFY DEVICE
    garble: int = 0  # answers still to come out garbled (framing error); -1: all of them
    dtr1: int = 0
    dtr2: int = 0
    # commissioning (102 §9.14): 24-bit random address, the search address every gear keeps
    random_address: int = 0xFFFFFF
    search_address: int = 0xFFFFFF
    initialised_until: float = -1.0
    withdrawn: bool = False
    identify_until: float = -1.0
    # DT8 colour temperature (IEC 62386-209): mirek = 1e6 / kelvin
    colour_tc: bool = False
    tc_mirek: int = 250  # 4000 K
    tc_coolest: int = 153  # 6536 K
    tc_warmest: int = 370  # 2703 K
    temporary_tc: int | None = None
    # D4i (memory bank 202): power follows light output (an LED driver, standby power ignored)
    d4i: bool = True
    rated_w: float = 60.0
    energy_scale: int = -1  # 10**-1 Wh resolution
    power_scale: int = -1
    # D4i diagnostics (banks 205/206): counted from the simulator's start plus these offsets
    diagnostics: bool = True
    gear_starts: int = 1  # power cycles of the gear's supply, this one included
    lamp_starts: int = 0  # 0 -> 1 transitions of lampOn
    _operating_s: float = 0.0
    _lamp_on_s: float = 0.0
    _energy_wh: float = 0.0
    _energy_t: float = 0.0  # energy and times are integrated up to this time
    latched: dict[tuple[int, int], bytes] = field(default_factory=dict)  # memory.py's captures
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

    def lamp_on(self, now: float) -> bool:
        """Status bit 2: the lamp gives light."""
        return self.level_at(now) > 0 and not self.lamp_failure

    def power_w(self, now: float) -> float:
        """Active power at ``now``: the rated power times the light output."""
        if self.lamp_failure:
            return 0.0
        return self.rated_w * light_percent(self.level_at(now)) / 100

    def integrate(self, now: float) -> None:
        """Add the energy and times since the last call (exact outside fades, 10 ms steps in them)."""
        t = self._energy_t
        while t < now:
            step = min(_FADE_STEP_S, now - t) if t < self._t1 else now - t
            mid = t + step / 2
            self._energy_wh += self.power_w(mid) * step / 3600
            self._operating_s += step
            if self.lamp_on(mid):
                self._lamp_on_s += step
            t += step
        self._energy_t = max(self._energy_t, now)

    def energy_wh(self, now: float) -> float:
        """Active energy used up to ``now`` in Wh."""
        self.integrate(now)
        return self._energy_wh

    def operating_s(self, now: float) -> float:
        """Control gear operating time up to ``now`` in seconds (powered, lamp on or not)."""
        self.integrate(now)
        return self._operating_s

    def lamp_on_s(self, now: float) -> float:
        """Light source on time up to ``now`` in seconds."""
        self.integrate(now)
        return self._lamp_on_s

    def start(self, now: float) -> None:
        """Power the gear up at ``now``: energy and times count from here."""
        self._energy_t = now

    def set_energy(self, wh: float, now: float) -> None:
        """Set the energy counter (e.g. a lamp that has run for years)."""
        self.integrate(now)
        self._energy_wh = wh

    def set_times(
        self, now: float, *, operating_s: float | None = None, lamp_on_s: float | None = None
    ) -> None:
        """Set the diagnostics time counters (a gear that has run for years)."""
        self.integrate(now)
        if operating_s is not None:
            self._operating_s = operating_s
        if lamp_on_s is not None:
            self._lamp_on_s = lamp_on_s

    def memory(self, bank: int, loc: int, now: float) -> int | None:
        """One byte of a memory bank; None where not implemented (READ MEMORY LOCATION: NO)."""
        return memory.read(self, bank, loc, now)

    def go_to(self, level: int, now: float, *, fade: bool, duration: float | None = None) -> None:
        """Start going to ``level`` (0: off), clamped to MIN..MAX with the limit error set."""
        self.integrate(now)
        was_on = self.lamp_on(now)
        self.limit_error = False
        if level != 0:
            if level < self.min_level:
                level, self.limit_error = self.min_level, True
            elif level > self.max_level:
                level, self.limit_error = self.max_level, True
        self._start = float(self.level_at(now))
        self._target = level
        self._t0 = now
        if duration is None:
            duration = FADE_TIMES_S[self.fade_time] if fade else 0.0
        self._t1 = now + duration
        self.power_cycle_seen = False
        self.identify_until = -1.0  # a level command ends the identification (102 §9.14.3)
        if level and not was_on and not self.lamp_failure:
            self.lamp_starts += 1

    def stop_fade(self, now: float) -> None:
        """DAPC MASK: stop a running fade where it is."""
        self.go_to(self.level_at(now), now, fade=False)

    def step(self, op: int, now: float) -> None:
        """UP/DOWN (200 ms at the fade rate) and STEP UP/DOWN (one step), on a lit lamp only."""
        level = self.level_at(now)
        if level == 0:
            return  # these never switch a lamp on or off (102 §11.3.1)
        if op in (UP, DOWN):
            steps = max(1, round(FADE_RATES[self.fade_rate] * UP_DOWN_S))
            target = level + steps if op == UP else level - steps
            self.go_to(min(max(target, self.min_level), self.max_level), now, fade=True, duration=UP_DOWN_S)
        else:
            target = level + 1 if op == STEP_UP else level - 1
            self.go_to(min(max(target, self.min_level), self.max_level), now, fade=False)

    def power_cycle(self, now: float) -> None:
        """The gear's mains supply went off and came back: power-on level, power failure bit."""
        self.integrate(now)
        self.gear_starts += 1
        self.initialised_until, self.withdrawn = -1.0, False
        self.go_to(self.power_on_level, now, fade=False)
        self.power_cycle_seen = True

    def initialised(self, now: float) -> bool:
        """Whether the gear is in its initialisation state (addressing commands apply)."""
        return now < self.initialised_until

    def identifying(self, now: float) -> bool:
        """Whether the gear is running its identification procedure (blinking)."""
        return now < self.identify_until

    def status(self, now: float) -> int:
        """The QUERY STATUS byte (IEC 62386-102 §11.5.2, Table 17)."""
        bits = (
            self.gear_failure,  # bit 0: control gear failure
            self.lamp_failure,  # bit 1: lamp failure
            self.lamp_on(now),  # bit 2: lamp on
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
    garbled: int = 0  # single answers that reached the master garbled (framing error)
    ignored_config: int = 0  # send-twice commands not repeated within 100 ms
    by_opcode: dict[str, int] = field(default_factory=dict)
    dapc_by_target: dict[str, int] = field(default_factory=dict)  # DAPC frames: short / group / broadcast


# Gear variables RESET leaves alone: addressing, faults, the simulation's knobs and the D4i
# counters (non-volatile, DiiA Part 252/253).
_KEPT_BY_RESET = (
    "short_address", "lamp_failure", "gear_failure", "connected", "physical_min", "version",
    "garble", "random_address", "search_address", "initialised_until", "withdrawn",
    "colour_tc", "tc_mirek", "tc_coolest", "tc_warmest",
    "d4i", "rated_w", "energy_scale", "power_scale", "diagnostics", "gear_starts", "lamp_starts",
    "_operating_s", "_lamp_on_s", "_energy_wh", "_energy_t",
)  # fmt: skip


class GearBus:
    """Control gear sharing one DALI bus; applies forward frames and computes the answers.

    An answer of ``GARBLED`` reaches the master as a framing error, as several answers do.
    """

    def __init__(self, gear: list[Gear], seed: int | None = None) -> None:
        self.gear = gear
        self.stats = BusStats()
        self._last_config: tuple[bytes, float] | None = None
        self._rng = random.Random(seed)
        self._enabled_dt = 0  # ENABLE DEVICE TYPE: applies to the next frame only

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

    def _first_of_two(self, frame: bytes, now: float) -> bool:
        """The send-twice rule: True when ``frame`` must wait for its repeat (ignore it now).

        A configuration command takes effect on the second of two identical frames within
        100 ms with no other frame between them (IEC 62386-102 §9.3); anything else cancels a
        pending first frame.
        """
        addr, data = frame
        special = addr >> 5 in (0b101, 0b110)
        twice = addr in _SPECIAL_TWICE if special else bool(addr & 1) and CONFIG_FIRST <= data <= CONFIG_LAST
        last, self._last_config = self._last_config, None
        repeat = twice and last is not None and last[0] == frame and now - last[1] <= SEND_TWICE_WINDOW_S
        if last is not None and not repeat:
            self.stats.ignored_config += 1  # a first frame that never got its repeat
        if not twice or repeat:
            return False
        self._last_config = (frame, now)
        return True

    def forward(self, frame: bytes, now: float) -> list[int]:
        """Apply one forward frame at ``now``; the backward frames of every gear that answers."""
        self.stats.forward_frames += 1
        if len(frame) != 2:
            self._last_config = None
            return []  # 24-bit frames address control devices (part 103), not gear
        if self._first_of_two(frame, now):
            return []
        addr, data = frame
        device_type, self._enabled_dt = self._enabled_dt, 0
        if addr & 0x01 == 0:  # selector bit 0: DAPC (IEC 62386-102 §11.2.1)
            self._count("DAPC")
            # IEC 62386-102 §7.2.2: 0AAAAAAS short address, 100GGGGS group, 111111xS broadcast
            target = "short" if addr & 0x80 == 0 else "group" if addr >> 5 == 0b100 else "broadcast"
            self.stats.dapc_by_target[target] = self.stats.dapc_by_target.get(target, 0) + 1
            for g in self._addressed(addr):
                if data == MASK:
                    g.stop_fade(now)
                else:
                    g.go_to(data, now, fade=True)
            return []
        if addr >> 5 in (0b101, 0b110):  # special commands: every gear listens
            self._count(f"special 0x{addr:02X}")
            return self._special(addr, data, now)
        self._count(f"0x{data:02X}")
        answers = []
        for g in self._addressed(addr):
            if data >= 0xE0:  # application extended commands: only for the enabled device type
                answer = self._colour(g, data) if device_type == DEVICE_TYPE_COLOUR and g.colour_tc else None
            else:
                answer = self._apply(g, data, now)
            if answer is not None:
                answers.append(self._garbled(g, answer))
        return answers

    def _garbled(self, g: Gear, answer: int) -> int:
        if g.garble:
            g.garble = max(g.garble - 1, -1) if g.garble > 0 else -1
            return GARBLED
        return answer

    def _special(self, addr: int, data: int, now: float) -> list[int]:
        """A special command (102 §11.4, Table 16): data registers and commissioning."""
        present = [g for g in self.gear if g.connected]
        selected = [g for g in present if g.initialised(now)]
        answers: list[int] = []
        if addr == SPECIAL_DTR0:
            for g in self.gear:
                g.dtr0 = data
        elif addr == SPECIAL_DTR1:
            for g in self.gear:
                g.dtr1 = data
        elif addr == SPECIAL_DTR2:
            for g in self.gear:
                g.dtr2 = data
        elif addr == TERMINATE:
            for g in present:
                g.initialised_until, g.withdrawn = -1.0, False
        elif addr == INITIALISE:
            for g in present:
                if (
                    data == 0x00
                    or (data == MASK and g.short_address is None)
                    or (_short(data) is not None and _short(data) == g.short_address)
                ):
                    g.initialised_until, g.withdrawn = now + INITIALISE_S, False
        elif addr == RANDOMISE:
            for g in selected:
                g.random_address = self._rng.getrandbits(24)
        elif addr in (SEARCH_H, SEARCH_M, SEARCH_L):
            shift = {SEARCH_H: 16, SEARCH_M: 8, SEARCH_L: 0}[addr]
            for g in present:
                g.search_address = g.search_address & ~(0xFF << shift) | data << shift
        elif addr == COMPARE:
            answers = [YES for g in selected if not g.withdrawn and g.random_address <= g.search_address]
        elif addr == WITHDRAW:
            for g in selected:
                if g.random_address == g.search_address:
                    g.withdrawn = True
        elif addr == PROGRAM_SHORT_ADDRESS:
            for g in selected:
                if g.random_address == g.search_address and (data == MASK or _short(data) is not None):
                    g.short_address = _short(data)
        elif addr == VERIFY_SHORT_ADDRESS:
            answers = [
                YES for g in selected if g.short_address is not None and g.short_address == _short(data)
            ]
        elif addr == QUERY_SHORT_ADDRESS:
            answers = [
                MASK if g.short_address is None else g.short_address << 1 | 1
                for g in selected
                if g.random_address == g.search_address and not g.withdrawn
            ]
        elif addr == ENABLE_DEVICE_TYPE:
            self._enabled_dt = data
        # the memory writes are not simulated
        return answers

    def _colour(self, g: Gear, op: int) -> int | None:
        """A DT8 command on colour-temperature gear (IEC 62386-209 §11); others are ignored."""
        if op == DT8_SET_TEMPORARY_TC:
            g.temporary_tc = g.dtr1 << 8 | g.dtr0
        elif op == DT8_ACTIVATE:
            if g.temporary_tc is not None:  # clamped to the gear's physical limits
                g.tc_mirek = min(max(g.temporary_tc, g.tc_coolest), g.tc_warmest)
                g.temporary_tc = None
        elif op == DT8_QUERY_COLOUR_STATUS:
            return 0x20  # bit 5: colour temperature Tc active
        elif op == DT8_QUERY_TYPE_FEATURES:
            return 0x02  # bit 1: colour temperature Tc capable
        elif op == DT8_QUERY_COLOUR_VALUE:
            value = {
                DT8_COLOUR_VALUE_TC: g.tc_mirek,
                DT8_COLOUR_VALUE_COOLEST: g.tc_coolest,
                DT8_COLOUR_VALUE_WARMEST: g.tc_warmest,
            }.get(g.dtr0, 0xFFFF)
            g.dtr0 = value & 0xFF  # the LSB, for QUERY CONTENT DTR0
            return value >> 8
        return None

    def _count(self, name: str) -> None:
        self.stats.by_opcode[name] = self.stats.by_opcode.get(name, 0) + 1

    def _apply(self, g: Gear, op: int, now: float) -> int | None:
        """One standard command on one gear; its answer (None: no answer, i.e. NO)."""
        if op == OFF:
            g.go_to(0, now, fade=False)
        elif op in (UP, DOWN, STEP_UP, STEP_DOWN):
            g.step(op, now)
        elif op == RECALL_MAX:
            g.go_to(g.max_level, now, fade=False)
        elif op == RECALL_MIN:
            g.go_to(g.min_level, now, fade=False)
        elif GO_TO_SCENE <= op <= GO_TO_SCENE + 15:
            level = g.scenes[op - GO_TO_SCENE]
            if level != MASK:
                g.go_to(level, now, fade=True)
        elif op == RESET:
            g.integrate(now)
            fresh = Gear(short_address=g.short_address, min_level=g.physical_min)
            for name in (*_KEPT_BY_RESET, "_start", "_target", "_t0", "_t1"):
                setattr(fresh, name, getattr(g, name))
            fresh.go_to(254, now, fade=False)  # from where it is now: counts a lamp start if off
            fresh.reset_state = True
            vars(g).update(vars(fresh))
        elif op == STORE_ACTUAL_IN_DTR0:
            g.dtr0 = g.level_at(now)
        elif op == IDENTIFY_DEVICE:
            if g.version >= VERSION_DALI2:  # a DALI-1 gear does not know the command
                g.identify_until = now + IDENTIFY_S
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
        elif op == SET_FADE_RATE:
            g.fade_rate = min(max(g.dtr0, 1), 15)
        elif SET_SCENE <= op <= SET_SCENE + 15:  # STORE DTR AS SCENE
            g.scenes[op - SET_SCENE] = g.dtr0
        elif REMOVE_FROM_SCENE <= op <= REMOVE_FROM_SCENE + 15:
            g.scenes[op - REMOVE_FROM_SCENE] = MASK
        elif ADD_TO_GROUP <= op <= ADD_TO_GROUP + 15:
            g.groups |= 1 << (op - ADD_TO_GROUP)
        elif REMOVE_FROM_GROUP <= op <= REMOVE_FROM_GROUP + 15:
            g.groups &= ~(1 << (op - REMOVE_FROM_GROUP))
        elif op == SET_SHORT_ADDRESS:
            d = g.dtr0
            g.short_address = None if d == MASK else (_short(d) if _short(d) is not None else g.short_address)
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
            return g.version
        if op == Q_DTR0:
            return g.dtr0
        if op == Q_DEVICE_TYPE:
            return DEVICE_TYPE_COLOUR if g.colour_tc else DEVICE_TYPE_LED
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
            return g.fade_time << 4 | g.fade_rate
        if op in (Q_RANDOM_H, Q_RANDOM_M, Q_RANDOM_L):
            return g.random_address >> (8 * (Q_RANDOM_L - op)) & 0xFF
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
