"""Arbitration: which level a lamp should have at an instant, and why.

manual override > crisis > presence (raise only) > schedule. While the schedule has a lamp on
(scheduled level > 0) no result other than an explicit 0 goes under the street's class minimum:
the schedule and a non-zero override are raised to it. Presence applies only in the dark period
(between dusk and dawn of the sun, whatever the profile says), so a street switched off in the
middle of the night lights up on presence, but nothing lights up in daylight.

`Evaluator` memoises per policy: dusk/dawn once per location cell and night, the profile timeline
once per street and night, street adjacency once; everything it holds is derived from the
immutable policy, so results do not depend on the order of calls.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rules.astro import SunNight, cell_centre, cell_of, night_bounds, night_of, sun_night
from rules.model import Override, PolicyData, Twilight
from rules.presence import Hold, PresenceEvent, PresenceState, StreetLine, apply_holds, reach, street_line
from rules.schedule import Timeline, build_timeline

Source = Literal["override", "crisis", "presence", "schedule"]
_NIGHTS_KEPT = 4  # per-night caches kept (tonight, last night, and a couple of look-ups)


@dataclass(frozen=True, slots=True)
class Decision:
    """The level (0-100) a lamp should have, the source that won, and a human explanation."""

    level: float
    source: Source
    detail: str


class Evaluator:
    """Memoised evaluation of one immutable policy (get it as `policy.evaluator`)."""

    def __init__(self, policy: PolicyData) -> None:
        self.policy = policy
        st = policy.settings
        self.tz = st.tz
        self.twilight: Twilight = st.twilight
        self._sun: dict[tuple[tuple[int, int], dt.date], SunNight] = {}
        self._timeline: dict[tuple[str, dt.date], Timeline] = {}
        self._line: dict[str, StreetLine] = {}
        self._presence_rule: dict[str, str | None] = {}
        self._nights: list[dt.date] = []
        streets: dict[str, list[str]] = defaultdict(list)
        for lamp in policy.lamps:
            streets[lamp.street].append(lamp.id)
        self.street_lamps: dict[str, list[str]] = dict(streets)
        self._street_cell: dict[str, tuple[int, int]] = {}
        for sid, ids in self.street_lamps.items():
            lat = sum(policy.lamp_by_id[i].lat for i in ids) / len(ids)
            lon = sum(policy.lamp_by_id[i].lon for i in ids) / len(ids)
            self._street_cell[sid] = cell_of(lat, lon, st.cell_deg)
        self.minimum: dict[str, float] = {
            z.id: policy.class_minimum(z.id) for z in policy.zones if z.kind == "street"
        }
        # zone -> lamps in its subtree, group -> lamps: resolve override targets in O(lamps)
        self._under: dict[str, list[str]] = defaultdict(list)
        self._group: dict[str, list[str]] = defaultdict(list)
        for sid, ids in self.street_lamps.items():
            for zid in policy.ancestors(sid):
                self._under[zid].extend(ids)
        for lamp in policy.lamps:
            if lamp.group is not None:
                self._group[lamp.group].append(lamp.id)
        # overrides resolved to lamps once; per lamp sorted latest first
        by_lamp: dict[str, list[Override]] = defaultdict(list)
        for ov in policy.overrides:
            for lid in self.target_lamps(ov.target.kind, ov.target.id):
                by_lamp[lid].append(ov)
        self.overrides: dict[str, list[Override]] = {
            k: sorted(v, key=lambda o: (o.created_ms, o.id), reverse=True) for k, v in by_lamp.items()
        }
        self.crises_by_street: dict[str, list[tuple[int, int | None, str]]] = defaultdict(list)
        for cr in policy.crises:
            for sid in cr.streets:
                self.crises_by_street[sid].append((cr.start_ms, cr.end_ms, cr.id))

    # ---------------------------------------------------------------- derived structures

    def target_lamps(self, kind: str, target_id: str) -> list[str]:
        """Lamp ids addressed by an override target (lamp, group or zone and its subtree)."""
        p = self.policy
        if kind == "lamp":
            return [target_id] if target_id in p.lamp_by_id else []
        if kind == "group":
            return list(self._group.get(target_id, ()))
        return list(self._under.get(target_id, ()))

    def _touch(self, night: dt.date) -> None:
        """Remember the nights in use; forget the per-night caches of all but the latest few, so a
        long-running hub or edge does not accumulate a year of timelines."""
        if night in self._nights:
            return
        self._nights.append(night)
        if len(self._nights) > _NIGHTS_KEPT:
            self._nights.sort()
            keep = set(self._nights[-_NIGHTS_KEPT:])
            if night not in keep:  # an old night asked for: keep it too, drop the oldest other
                keep = {*sorted(keep)[1:], night}
            self._nights = sorted(keep)
            self._sun = {k: v for k, v in self._sun.items() if k[1] in keep}
            self._timeline = {k: v for k, v in self._timeline.items() if k[1] in keep}

    def sun(self, street_id: str, night: dt.date) -> SunNight:
        """Dusk/dawn for a street's cell on the night of `night` (computed once per cell and night)."""
        cell = self._street_cell.get(street_id) or cell_of(0.0, 0.0, self.policy.settings.cell_deg)
        key = (cell, night)
        s = self._sun.get(key)
        if s is None:
            self._touch(night)
            lat, lon = cell_centre(cell, self.policy.settings.cell_deg)
            s = self._sun[key] = sun_night(lat, lon, night, self.tz, self.twilight)
        return s

    def timeline(self, street_id: str, night: dt.date) -> Timeline:
        """The scheduled levels of a street on the night of `night` (computed once)."""
        key = (street_id, night)
        tl = self._timeline.get(key)
        if tl is None:
            self._touch(night)
            p = self.policy
            cal = p.calendar_by_id[p.calendar_of(street_id)]
            pid, why = cal.profile_for(night)
            tl = self._timeline[key] = build_timeline(
                p.profile_by_id[pid], why, self.sun(street_id, night), self.tz
            )
        return tl

    def presence_rule(self, street_id: str) -> str | None:
        """The presence rule id of a street (memoised `policy.presence_rule_of`)."""
        if street_id not in self._presence_rule:
            self._presence_rule[street_id] = self.policy.presence_rule_of(street_id)
        return self._presence_rule[street_id]

    def line(self, street_id: str) -> StreetLine:
        """A street's lamps ordered along it."""
        ln = self._line.get(street_id)
        if ln is None:
            lamps = [self.policy.lamp_by_id[i] for i in self.street_lamps.get(street_id, [])]
            ln = self._line[street_id] = street_line(lamps)
        return ln

    # ---------------------------------------------------------------- evaluation

    def override_at(self, lamp_id: str, t_ms: int) -> Override | None:
        """The winning active override of a lamp (latest created), or None."""
        for ov in self.overrides.get(lamp_id, ()):
            if ov.active(t_ms):
                return ov
        return None

    def crisis_at(self, street_id: str, t_ms: int) -> str | None:
        """Id of an active crisis covering a street (the first declared), or None."""
        for start, end, cid in self.crises_by_street.get(street_id, ()):
            if start <= t_ms and (end is None or t_ms < end):
                return cid
        return None

    def explain(self, lamp_id: str, t_ms: int, presence: PresenceState | None = None) -> Decision:
        """The level of `lamp_id` at `t_ms`, the winning source and why."""
        lamp = self.policy.lamp_by_id.get(lamp_id)
        if lamp is None:
            raise KeyError(f"unknown lamp {lamp_id!r}")
        tl = self.timeline(lamp.street, night_of(t_ms, self.tz))
        return self._decide(lamp_id, lamp.street, tl, t_ms, presence)

    def _decide(
        self, lamp_id: str, street: str, tl: Timeline, t_ms: int, presence: PresenceState | None
    ) -> Decision:
        sched = tl.level_at(t_ms)
        lit = sched > 0
        minimum = self.minimum[street]
        ov = self.override_at(lamp_id, t_ms) if self.overrides else None
        if ov is not None:
            if lit and 0 < ov.level < minimum:
                return Decision(
                    minimum,
                    "override",
                    f"override {ov.id} {ov.level:g}% raised to class minimum {minimum:g}%",
                )
            return Decision(ov.level, "override", f"override {ov.id} on {ov.target.kind} {ov.target.id}")
        if self.crises_by_street:
            cid = self.crisis_at(street, t_ms)
            if cid is not None:
                return Decision(self.policy.settings.crisis_level, "crisis", f"crisis {cid}")
        base = max(sched, minimum) if lit else 0.0
        if presence is not None and tl.is_dark(t_ms):
            p = presence.level(lamp_id, t_ms)
            if 0 < p < minimum:
                p = minimum  # a lamp lit by presence is lit: never under its class minimum
            if p > base:
                return Decision(p, "presence", f"presence {p:g}% over schedule {base:g}%")
        return Decision(base, "schedule", self._why(tl, t_ms, sched, minimum, lit))

    def _why(self, tl: Timeline, t_ms: int, sched: float, minimum: float, lit: bool) -> str:
        step = tl.step_at(t_ms)
        profile = self.policy.profile_by_id[tl.profile_id]
        at = "day level" if step is None else f"step {step} ({_step_label(profile.steps[step])})"
        s = f"profile {tl.profile_id} [{tl.why}] {at}: {sched:g}%"
        if lit and sched < minimum:
            s += f", raised to class minimum {minimum:g}%"
        return s

    def evaluate_all(
        self, t_ms: int, presence: PresenceState | None = None, lamp_ids: Iterable[str] | None = None
    ) -> dict[str, Decision]:
        """Decisions for every lamp (or `lamp_ids`) at `t_ms`; one schedule lookup per street."""
        night = night_of(t_ms, self.tz)
        out: dict[str, Decision] = {}
        wanted = None if lamp_ids is None else set(lamp_ids)
        quiet = not self.overrides and not self.crises_by_street
        for street, ids in self.street_lamps.items():
            tl = self.timeline(street, night)
            sched = tl.level_at(t_ms)
            minimum = self.minimum[street]
            lit = sched > 0
            shared = Decision(
                max(sched, minimum) if lit else 0.0, "schedule", self._why(tl, t_ms, sched, minimum, lit)
            )
            dark = presence is not None and tl.is_dark(t_ms)
            for lid in ids:
                if wanted is not None and lid not in wanted:
                    continue
                if quiet and not (dark and presence is not None and lid in presence.holds):
                    out[lid] = shared
                else:
                    out[lid] = self._decide(lid, street, tl, t_ms, presence)
        return out

    def levels_all(self, t_ms: int, presence: PresenceState | None = None) -> dict[str, float]:
        """Levels only, for every lamp at `t_ms` (the fast path of `evaluate_all`)."""
        return {k: d.level for k, d in self.evaluate_all(t_ms, presence).items()}

    def next_change(self, t_ms: int, presence: PresenceState | None = None, tick_ms: int = 10_000) -> int:
        """The next instant after `t_ms` at which some lamp's level may change (see `next_change`)."""
        night = night_of(t_ms, self.tz)
        cands: list[int] = [night_bounds(night, self.tz)[1]]  # the next night's timelines
        for street in self.street_lamps:
            tl = self.timeline(street, night)
            k = bisect.bisect_right(tl.times, t_ms)
            if k < len(tl.times):
                cands.append(tl.times[k])
                if 0 < k and tl.levels[k - 1] != tl.levels[k]:
                    cands.append(t_ms + tick_ms)  # inside a ramp
            cands += [x for x in (tl.dark_from_ms, tl.dark_to_ms) if x is not None and x > t_ms]
        for ov in self.policy.overrides:
            cands += [x for x in (ov.start_ms, ov.expiry_ms) if x is not None and x > t_ms]
        for cr in self.policy.crises:
            cands += [x for x in (cr.start_ms, cr.end_ms) if x is not None and x > t_ms]
        if presence is not None:
            for holds in presence.holds.values():
                for h in holds:
                    cands += [x for x in (h.start_ms, h.until_ms, h.end_ms) if x > t_ms]
                    if h.until_ms <= t_ms < h.end_ms:
                        cands.append(t_ms + min(tick_ms, 1_000))  # inside a fade
        return min(cands)

    def apply_event(self, state: PresenceState, event: PresenceEvent, t_ms: int) -> PresenceState:
        """The presence state after `event` (see `rules.apply_event`)."""
        lamp = self.policy.lamp_by_id.get(event.lamp)
        if lamp is None:
            raise KeyError(f"presence event for unknown lamp {event.lamp!r}")
        rid = self.presence_rule(lamp.street)
        if rid is None:
            return state
        rule = self.policy.presence_rule_by_id[rid]
        lamps = reach(self.line(lamp.street), lamp.id, rule, event.speed_mps, event.heading_deg)
        until = event.t_ms + int(rule.hold_s * 1000)
        hold = Hold(rule.level, event.t_ms, until, int(rule.ramp_down_s * 1000))
        return apply_holds(state, lamps, hold, t_ms)


def _step_label(step: object) -> str:
    at = getattr(step, "at", "")
    off = getattr(step, "offset_min", 0)
    return f"{at}{off:+d}min" if off else str(at)


# ------------------------------------------------------------------- the public functions


def explain(policy: PolicyData, lamp_id: str, t_ms: int, presence: PresenceState | None = None) -> Decision:
    """What level lamp `lamp_id` should have at `t_ms` (epoch ms) and why. Raises KeyError if unknown."""
    return policy.evaluator.explain(lamp_id, t_ms, presence)


def evaluate_all(
    policy: PolicyData,
    t_ms: int,
    presence: PresenceState | None = None,
    lamp_ids: Iterable[str] | None = None,
) -> dict[str, Decision]:
    """`explain` for every lamp of the policy (or those in `lamp_ids`) at `t_ms`, fast."""
    return policy.evaluator.evaluate_all(t_ms, presence, lamp_ids)


def apply_event(state: PresenceState, event: PresenceEvent, policy: PolicyData, t_ms: int) -> PresenceState:
    """A new presence state: `event` raises its lamp and its street neighbours per the street's
    presence rule (the same state if the street has none); `t_ms` is now, for dropping faded
    holds. KeyError: unknown lamp."""
    return policy.evaluator.apply_event(state, event, t_ms)


def next_change(
    policy: PolicyData, t_ms: int, presence: PresenceState | None = None, tick_ms: int = 10_000
) -> int:
    """The next instant (epoch ms, > t_ms) at which some lamp's level may change, for a runner
    that sleeps until then: the next schedule breakpoint of any street, dusk/dawn (presence
    gating), the night's end, override and crisis starts and ends, presence holds starting,
    ending and fading out. Inside a schedule ramp: `t_ms + tick_ms`; inside a presence fade:
    `t_ms + min(tick_ms, 1 s)`. New presence events and policy changes are the runner's to watch."""
    return policy.evaluator.next_change(t_ms, presence, tick_ms)
