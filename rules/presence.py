"""Presence: a sensor event raises its lamp and the neighbouring ones, as an immutable state.

Street adjacency comes from lamp coordinates: the lamps of a street are projected on the
street's principal axis (least squares through their positions in a local metric projection),
ordered along it, and a lamp's position is the cumulative distance from the first lamp through
its predecessors (so a gently curved street is measured along its lamps, not as the crow flies).

The presence level of a lamp is the maximum over its holds; a hold is `level` from the event to
`until_ms`, then a linear fade to 0 over `ramp_ms`. Adding a hold can only raise that maximum,
so repeated events extend the light without a dip (no flicker); the final level is
max(schedule, presence), so presence never lowers a lamp.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from rules.model import Lamp, PresenceRule

_EARTH_M = 6_371_000.0


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A presence detection at `lamp` (the lamp carrying or nearest the sensor) at `t_ms`.

    `speed_mps` and `heading_deg` (0 = north, clockwise) when the sensor measures them.
    """

    lamp: str
    t_ms: int
    speed_mps: float | None = None
    heading_deg: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """`level` from `start_ms` to `until_ms`, then fading linearly to 0 over `ramp_ms`."""

    level: float
    start_ms: int
    until_ms: int
    ramp_ms: int

    @property
    def end_ms(self) -> int:
        """The instant the hold has faded to 0."""
        return self.until_ms + self.ramp_ms

    def level_at(self, t_ms: int) -> float:
        """The hold's contribution at `t_ms` (0 outside it)."""
        if t_ms < self.start_ms or t_ms >= self.end_ms:
            return 0.0
        if t_ms <= self.until_ms:
            return self.level
        return self.level * (self.end_ms - t_ms) / self.ramp_ms

    def dominates(self, other: Hold) -> bool:
        """True if this hold is >= `other` at every instant (both fades are linear, so comparing
        the start, level, end of hold and end of fade is enough)."""
        return (
            self.start_ms <= other.start_ms
            and self.level >= other.level
            and self.until_ms >= other.until_ms
            and self.end_ms >= other.end_ms
        )


_EMPTY: Mapping[str, tuple[Hold, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PresenceState:
    """The active presence holds per lamp. Immutable: `apply_event` returns a new state."""

    holds: Mapping[str, tuple[Hold, ...]] = field(default_factory=lambda: _EMPTY)
    #: When faded holds were last dropped from every lamp (apply_event does it every few seconds;
    #: a faded hold left in place contributes 0, so this only bounds the state's size).
    pruned_ms: int = 0

    def level(self, lamp_id: str, t_ms: int) -> float:
        """The presence level of a lamp at `t_ms` (0 if none)."""
        hs = self.holds.get(lamp_id)
        if not hs:
            return 0.0
        return max(h.level_at(t_ms) for h in hs)

    def pruned(self, t_ms: int) -> PresenceState:
        """The same state without holds that have fully faded by `t_ms`."""
        out = {k: kept for k, hs in self.holds.items() if (kept := tuple(h for h in hs if h.end_ms > t_ms))}
        return PresenceState(MappingProxyType(out), t_ms)

    def active_lamps(self, t_ms: int) -> list[str]:
        """Lamps with a non-zero presence level at `t_ms`, sorted."""
        return sorted(k for k, hs in self.holds.items() if any(h.level_at(t_ms) > 0 for h in hs))


@dataclass(frozen=True, slots=True)
class StreetLine:
    """The lamps of one street ordered along it: ids, positions in metres, and the axis bearing."""

    lamp_ids: tuple[str, ...]
    pos_m: tuple[float, ...]
    bearing_deg: float  # direction of increasing position, 0 = north, clockwise

    def index(self) -> dict[str, int]:
        """Lamp id -> index along the street."""
        return {x: i for i, x in enumerate(self.lamp_ids)}


def street_line(lamps: Sequence[Lamp]) -> StreetLine:
    """Order a street's lamps along its principal axis (deterministic: ties broken by id)."""
    if not lamps:
        return StreetLine((), (), 0.0)
    lat0 = sum(x.lat for x in lamps) / len(lamps)
    lon0 = sum(x.lon for x in lamps) / len(lamps)
    k = math.cos(math.radians(lat0))
    xy = [(math.radians(x.lon - lon0) * _EARTH_M * k, math.radians(x.lat - lat0) * _EARTH_M) for x in lamps]
    sxx = sum(x * x for x, _ in xy)
    syy = sum(y * y for _, y in xy)
    sxy = sum(x * y for x, y in xy)
    theta = 0.5 * math.atan2(2 * sxy, sxx - syy)  # principal axis angle from east, counter-clockwise
    ux, uy = math.cos(theta), math.sin(theta)
    order = sorted(range(len(lamps)), key=lambda i: (xy[i][0] * ux + xy[i][1] * uy, lamps[i].id))
    pos = [0.0]
    for a, b in itertools.pairwise(order):
        pos.append(pos[-1] + math.dist(xy[a], xy[b]))
    bearing = (90.0 - math.degrees(theta)) % 360.0
    return StreetLine(tuple(lamps[i].id for i in order), tuple(pos), bearing)


def reach(
    line: StreetLine, lamp_id: str, rule: PresenceRule, speed_mps: float | None, heading_deg: float | None
) -> list[str]:
    """The lamps an event at `lamp_id` raises (itself included), in street order.

    Each side gets `reach_m` metres or `reach_lamps` lamps; with a speed, at least
    speed x `lookahead_s` metres (capped at `max_reach_m`) ahead, or on both sides when the
    heading is unknown; with a heading, the side behind gets `behind_factor` of the base reach.
    """
    i = line.lamp_ids.index(lamp_id)
    base_m = rule.reach_m or 0.0
    base_n = rule.reach_lamps or 0
    fast_m = base_m if speed_mps is None else max(base_m, speed_mps * rule.lookahead_s)
    fast_m = min(fast_m, rule.max_reach_m)
    if heading_deg is None:
        fwd_m = back_m = fast_m
        fwd_n = back_n = base_n
    else:
        ahead_m, behind_m = fast_m, min(base_m, rule.max_reach_m) * rule.behind_factor
        ahead_n, behind_n = base_n, int(base_n * rule.behind_factor)
        # moving towards increasing positions along the street?
        if math.cos(math.radians(heading_deg - line.bearing_deg)) >= 0:
            fwd_m, back_m, fwd_n, back_n = ahead_m, behind_m, ahead_n, behind_n
        else:
            fwd_m, back_m, fwd_n, back_n = behind_m, ahead_m, behind_n, ahead_n
    p = line.pos_m[i]
    return [
        lid
        for j, (lid, q) in enumerate(zip(line.lamp_ids, line.pos_m, strict=True))
        if -back_m <= q - p <= fwd_m or -back_n <= j - i <= fwd_n
    ]


_PRUNE_EVERY_MS = 10_000


def apply_holds(state: PresenceState, lamps: Sequence[str], hold: Hold, t_ms: int) -> PresenceState:
    """Add `hold` to each of `lamps`, dropping holds faded by `t_ms` or dominated by another one.

    Faded holds of the other lamps are dropped at most every 10 s (a full pass costs the number of
    active lamps), so folding in an event costs about the lamps it raises.
    """
    if t_ms - state.pruned_ms >= _PRUNE_EVERY_MS:
        state = state.pruned(t_ms)
    out = dict(state.holds)
    for lid in lamps:
        old = tuple(h for h in out.get(lid, ()) if h.end_ms > t_ms)
        if any(h.dominates(hold) for h in old):
            out[lid] = old
            continue
        out[lid] = (*(h for h in old if not hold.dominates(h)), hold)
    return PresenceState(MappingProxyType(out), state.pruned_ms)
