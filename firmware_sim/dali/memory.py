"""Memory banks of a simulated control gear: bank 0 and the D4i banks 202, 205 and 206.

IEC 62386-102 §9.10: a bank is read with DTR1 = bank, DTR0 = location, READ MEMORY LOCATION
(which increments DTR0); a location that is not implemented gives no answer. Every bank but 0
starts with its last address (0x00), an indicator byte (0x01), the lock byte (0x02) and its
version (0x03). The D4i layouts are DiiA Part 252 (energy reporting, bank 202) and DiiA Part
253 (diagnostics and maintenance, banks 205 and 206), MSB first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gear import Gear

BANK_ENERGY, BANK_GEAR_DIAG, BANK_LAMP_DIAG = 202, 205, 206
LAST_ADDRESS = {BANK_ENERGY: 0x0F, BANK_GEAR_DIAG: 0x1C, BANK_LAMP_DIAG: 0x20}
LOCK_BYTE = 0xFF  # not locked, not latched

# (bank, first location) -> (length in bytes, the value's bytes at a time). A multi-byte value is
# captured when its first byte is read, so a value read over several frames is consistent
# (what latching gives on real gear).
Getter = Callable[["Gear", float], bytes]


def _scaled(scale: int, value: float, n: int) -> bytes:
    """A scale byte (a signed power of ten) and the value in that unit over n bytes."""
    return bytes([scale & 0xFF]) + round(value / 10**scale).to_bytes(n, "big")


def _counter(n: int, value: float) -> bytes:
    # counters saturate below TMASK/MASK (DiiA Part 253: valid 0..MASK-2)
    return min(int(value), 256**n - 3).to_bytes(n, "big")


VALUES: dict[tuple[int, int], tuple[int, Getter]] = {
    # DiiA Part 252: active energy (scale + 6 bytes, Wh) and active power (scale + 4 bytes, W)
    (BANK_ENERGY, 0x04): (7, lambda g, now: _scaled(g.energy_scale, g.energy_wh(now), 6)),
    (BANK_ENERGY, 0x0B): (5, lambda g, now: _scaled(g.power_scale, g.power_w(now), 4)),
    # DiiA Part 253 bank 205: control gear operating time (s), control gear start counter
    (BANK_GEAR_DIAG, 0x04): (4, lambda g, now: _counter(4, g.operating_s(now))),
    (BANK_GEAR_DIAG, 0x08): (3, lambda g, now: _counter(3, g.gear_starts)),
    # bank 206: light source start counter (resettable, total), on time (resettable, total; s)
    (BANK_LAMP_DIAG, 0x04): (3, lambda g, now: _counter(3, g.lamp_starts)),
    (BANK_LAMP_DIAG, 0x07): (3, lambda g, now: _counter(3, g.lamp_starts)),
    (BANK_LAMP_DIAG, 0x0A): (4, lambda g, now: _counter(4, g.lamp_on_s(now))),
    (BANK_LAMP_DIAG, 0x0E): (4, lambda g, now: _counter(4, g.lamp_on_s(now))),
}
_BY_LOCATION = {
    (bank, first + i): (first, length) for (bank, first), (length, _) in VALUES.items() for i in range(length)
}


def banks(g: Gear) -> tuple[int, ...]:
    """The D4i banks gear ``g`` implements."""
    return ((BANK_ENERGY,) if g.d4i else ()) + ((BANK_GEAR_DIAG, BANK_LAMP_DIAG) if g.diagnostics else ())


def read(g: Gear, bank: int, loc: int, now: float) -> int | None:
    """One byte of a bank; None where not implemented (READ MEMORY LOCATION gets no answer)."""
    implemented = banks(g)
    if bank == 0:  # IEC 62386-102 §9.10.6: last address, reserved, last accessible bank
        last = max(implemented, default=0)
        return (0x02, 0x00, last)[loc] if loc <= 0x02 else None
    if bank not in implemented or loc > LAST_ADDRESS[bank]:
        return None
    if loc <= 0x03:
        return (LAST_ADDRESS[bank], 0x00, LOCK_BYTE, 0x01)[loc]
    where = _BY_LOCATION.get((bank, loc))
    if where is None:
        return None  # e.g. supply voltage, temperatures: not simulated
    first, _ = where
    if loc == first:
        g.latched[(bank, first)] = VALUES[(bank, first)][1](g, now)
    value = g.latched.get((bank, first))
    if value is None:
        value = VALUES[(bank, first)][1](g, now)
    return value[loc - first]
