"""Percent <-> DALI arc power level (0-254), on the logarithmic or the linear dimming curve.

IEC 62386-102 §9.3 (Table 3): arc power level n in 1..254 gives the light output
X(n) = 10 ** ((n - 1) / (253 / 3) - 1) percent, from 0.1 % at n = 1 to 100 % at n = 254;
n = 0 is off. Some LED gear offer a linear curve (IEC 62386-207 SELECT DIMMING CURVE):
X(n) = n / 254 * 100 percent. Operators speak percent; 0 % is off.
"""

from __future__ import annotations

import math
from typing import Literal

Curve = Literal["logarithmic", "linear"]
MAX_ARC = 254
_STEPS_PER_DECADE = 253 / 3
# Reported percentages carry 4 decimals: enough to tell arc 1 (0.1 %) from arc 2 (0.1027 %).
_DECIMALS = 4


def arc_to_percent(arc: int, curve: Curve = "logarithmic") -> float:
    """The light output in percent of arc power level ``arc`` (0 = off, 254 = 100 %)."""
    if not 0 <= arc <= MAX_ARC:
        raise ValueError(f"arc power level {arc} is outside 0..254")
    if arc == 0:
        return 0.0
    if curve == "linear":
        return round(arc * 100 / MAX_ARC, _DECIMALS)
    return round(10 ** ((arc - 1) / _STEPS_PER_DECADE - 1), _DECIMALS)


def percent_to_arc(percent: float, curve: Curve = "logarithmic") -> int:
    """The nearest arc power level for ``percent`` (0..100); any level above 0 % is at least 1."""
    if not 0 <= percent <= 100:  # also rejects NaN
        raise ValueError(f"{percent} % is outside 0..100")
    if percent == 0:
        return 0
    if curve == "linear":
        exact = percent * MAX_ARC / 100
    else:
        exact = 1 + _STEPS_PER_DECADE * (math.log10(percent) + 1)
    return min(MAX_ARC, max(1, round(exact)))
