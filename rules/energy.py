"""Energy of a night: kWh per lamp, street, zone and city, and the saving against the baseline.

Power model (`PowerModel`): P = rated_w * (min_fraction + (1 - min_fraction) * level/100) while
lit, rated_w * standby_fraction when off. The policy's energy is integrated over the whole night
(local noon to noon, so standby during the day counts); the baseline is every lamp at 100% from
dusk to dawn (the sun's dark period, same twilight setting) and nothing otherwise. A lamp whose
measured energy for the night is given uses it instead of the model.

The schedule part is integrated exactly (the scheduled level is piecewise linear); the instants
where an override, a crisis or presence changes a lamp's level are sampled every `step_s`
seconds (midpoint rule) and added as the difference to the schedule.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rules.evaluate import Evaluator
from rules.model import PolicyData, PowerModel
from rules.presence import Hold, PresenceEvent, PresenceState, reach
from rules.schedule import Timeline

_H_MS = 3_600_000


def power_w(rated_w: float, level: float, model: PowerModel) -> float:
    """Electrical power (W) of a lamp at `level` percent."""
    if level <= 0:
        return rated_w * model.standby_fraction
    return rated_w * (model.min_fraction + (1 - model.min_fraction) * min(level, 100.0) / 100.0)


def _seg_norm(t0: int, l0: float, t1: int, l1: float, minimum: float, m: PowerModel) -> float:
    """Integral over [t0, t1] (ms) of normalised power (P/rated) for a linear level, class minimum applied."""
    dtm = t1 - t0
    if dtm <= 0:
        return 0.0
    a, b = m.min_fraction, (1 - m.min_fraction) / 100.0
    if l0 <= 0 and l1 <= 0:
        return m.standby_fraction * dtm
    if l0 == l1:
        return (a + b * max(l0, minimum)) * dtm
    # strictly positive inside the segment: the level is max(linear, minimum)
    lo, hi = (l0, l1) if l0 < l1 else (l1, l0)
    if minimum <= lo:
        return (a + b * (l0 + l1) / 2) * dtm
    if minimum >= hi:
        return (a + b * minimum) * dtm
    frac_below = (minimum - lo) / (hi - lo)  # share of the segment where the ramp is under the minimum
    below = dtm * frac_below
    above = dtm - below
    return (a + b * minimum) * below + (a + b * (minimum + hi) / 2) * above


def timeline_norm_ms(
    tl: Timeline, minimum: float, model: PowerModel, a: int | None = None, b: int | None = None
) -> float:
    """Normalised energy (rated-W x ms) of a schedule over [a, b] (default: its night), class minimum
    applied; exact, the scheduled level being piecewise linear."""
    lo = tl.start_ms if a is None else a
    hi = tl.end_ms if b is None else b
    pts = [(min(lo, tl.times[0]), tl.levels[0]), *zip(tl.times, tl.levels, strict=True)]
    pts.append((max(hi, tl.times[-1]), tl.levels[-1]))
    total = 0.0
    for (t0, l0), (t1, l1) in itertools.pairwise(pts):
        if t1 <= lo or t0 >= hi or t1 <= t0:
            continue
        c0, c1 = max(t0, lo), min(t1, hi)
        v0 = l0 + (l1 - l0) * (c0 - t0) / (t1 - t0)
        v1 = l0 + (l1 - l0) * (c1 - t0) / (t1 - t0)
        total += _seg_norm(c0, v0, c1, v1, minimum, model)
    return total


@dataclass(frozen=True, slots=True)
class LampEnergy:
    """One lamp's night: energy (kWh), baseline (kWh), and whether the energy was measured."""

    kwh: float
    baseline_kwh: float
    measured: bool = False


@dataclass(frozen=True)
class EnergyReport:
    """kWh and baseline per lamp, per zone (streets, districts, municipalities) and for the city."""

    night: dt.date
    lamps: dict[str, LampEnergy]
    zones: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (kWh, baseline kWh)

    @property
    def kwh(self) -> float:
        """Total energy of the night (kWh)."""
        return sum(x.kwh for x in self.lamps.values())

    @property
    def baseline_kwh(self) -> float:
        """Total baseline energy: every lamp at 100% from dusk to dawn (kWh)."""
        return sum(x.baseline_kwh for x in self.lamps.values())

    @property
    def saving_pct(self) -> float:
        """Saving against the baseline, in percent (0 if the baseline is 0)."""
        base = self.baseline_kwh
        return 0.0 if base <= 0 else 100.0 * (1 - self.kwh / base)

    def zone_saving_pct(self, zone_id: str) -> float:
        """Saving of one zone against its baseline, in percent."""
        kwh, base = self.zones[zone_id]
        return 0.0 if base <= 0 else 100.0 * (1 - kwh / base)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def presence_holds(policy: PolicyData, events: Iterable[PresenceEvent]) -> dict[str, list[Hold]]:
    """Every hold each event creates, per lamp (unpruned; events on unknown lamps are ignored)."""
    ev = policy.evaluator
    out: dict[str, list[Hold]] = defaultdict(list)
    for e in events:
        lamp = policy.lamp_by_id.get(e.lamp)
        if lamp is None:
            continue
        rid = ev.presence_rule(lamp.street)
        if rid is None:
            continue
        rule = policy.presence_rule_by_id[rid]
        hold = Hold(rule.level, e.t_ms, e.t_ms + int(rule.hold_s * 1000), int(rule.ramp_down_s * 1000))
        for lid in reach(ev.line(lamp.street), lamp.id, rule, e.speed_mps, e.heading_deg):
            out[lid].append(hold)
    return out


def night_energy(
    policy: PolicyData,
    night: dt.date,
    events: Iterable[PresenceEvent] = (),
    measured_wh: Mapping[str, float] | None = None,
    step_s: float = 5.0,
) -> EnergyReport:
    """The energy report of the night of `night` with the given presence events (and measurements)."""
    ev = policy.evaluator
    model = policy.settings.power
    holds = presence_holds(policy, events)
    measured = measured_wh or {}
    step_ms = max(1, int(step_s * 1000))
    lamps: dict[str, LampEnergy] = {}
    for street, ids in ev.street_lamps.items():
        tl = ev.timeline(street, night)
        minimum = ev.minimum[street]
        norm_h = timeline_norm_ms(tl, minimum, model) / _H_MS
        sun = ev.sun(street, night)
        dark_h = 0.0 if sun.dusk_ms is None or sun.dawn_ms is None else (sun.dawn_ms - sun.dusk_ms) / _H_MS
        crises = [
            (max(s, tl.start_ms), min(e if e is not None else tl.end_ms, tl.end_ms))
            for s, e, _ in ev.crises_by_street.get(street, ())
        ]
        for lid in ids:
            rated = policy.lamp_by_id[lid].rated_w
            base_kwh = rated * dark_h / 1000
            if lid in measured:
                lamps[lid] = LampEnergy(measured[lid] / 1000, base_kwh, True)
                continue
            wh = rated * norm_h
            special = list(crises)
            for ov in ev.overrides.get(lid, ()):
                end = ov.expiry_ms if ov.expiry_ms is not None else tl.end_ms
                special.append((max(ov.start_ms, tl.start_ms), min(end, tl.end_ms)))
            hs = holds.get(lid, [])
            if hs and not special and len({(h.level, h.ramp_ms) for h in hs}) == 1:
                # the usual case, presence alone with one rule: exact and fast
                wh += _presence_exact_wh(tl, hs, rated, minimum, model)
                lamps[lid] = LampEnergy(wh / 1000, base_kwh)
                continue
            if hs and tl.dark_from_ms is not None and tl.dark_to_ms is not None:
                for h in hs:
                    special.append((max(h.start_ms, tl.dark_from_ms), min(h.end_ms, tl.dark_to_ms)))
            spans = [(a, b) for a, b in _merge(special) if b > a]
            if spans:
                wh += _correction_wh(ev, lid, street, tl, spans, hs, step_ms, rated, minimum, model)
            lamps[lid] = LampEnergy(wh / 1000, base_kwh)
    zones: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for lid, le in lamps.items():
        for zid in policy.ancestors(policy.lamp_by_id[lid].street):
            zones[zid][0] += le.kwh
            zones[zid][1] += le.baseline_kwh
    return EnergyReport(night, lamps, {k: (v[0], v[1]) for k, v in zones.items()})


def _envelope(holds: list[Hold]) -> list[tuple[int, int, float, float]]:
    """Linear pieces (t0, t1, level0, level1) of the max of holds sharing one level and ramp."""
    level, ramp = holds[0].level, holds[0].ramp_ms
    on: list[list[int]] = []
    for h in sorted(holds, key=lambda h: h.start_ms):
        if on and h.start_ms <= on[-1][1]:
            on[-1][1] = max(on[-1][1], h.until_ms)
        else:
            on.append([h.start_ms, h.until_ms])
    pieces: list[tuple[int, int, float, float]] = []
    for k, (s0, u) in enumerate(on):
        pieces.append((s0, u, level, level))
        if ramp > 0:
            stop = min(u + ramp, on[k + 1][0]) if k + 1 < len(on) else u + ramp
            if stop > u:
                pieces.append((u, stop, level, level * (1 - (stop - u) / ramp)))
    return pieces


def _pos_part_integral(d0: float, d1: float, width: float) -> float:
    """Integral over `width` of max(0, d) for d linear from d0 to d1."""
    if d0 >= 0 and d1 >= 0:
        return (d0 + d1) / 2 * width
    if d0 <= 0 and d1 <= 0:
        return 0.0
    hi = max(d0, d1)
    return hi * width * (hi / (abs(d0) + abs(d1))) / 2


def _presence_exact_wh(tl: Timeline, holds: list[Hold], rated: float, minimum: float, m: PowerModel) -> float:
    """Energy (Wh) presence adds to the schedule: exact where the schedule is constant (almost
    everywhere), sampled every second on the rare schedule ramps under a presence piece."""
    if tl.dark_from_ms is None or tl.dark_to_ms is None:
        return 0.0
    lo_dark, hi_dark = tl.dark_from_ms, tl.dark_to_ms
    k = rated * (1 - m.min_fraction) / 100.0
    total_wms = 0.0  # W x ms
    times, levels = tl.times, tl.levels
    n_t = len(times)
    for t0, t1, p0, p1 in _envelope(holds):
        a, b = max(t0, lo_dark), min(t1, hi_dark)
        if b <= a:
            continue
        slope = (p1 - p0) / (t1 - t0)
        i_a, i_b = bisect.bisect_right(times, a), bisect.bisect_left(times, b)
        cuts = [a, *times[i_a:i_b], b]
        for c0, c1 in itertools.pairwise(cuts):
            if c1 <= c0:
                continue
            i = bisect.bisect_right(times, (c0 + c1) / 2)
            l0 = levels[i - 1] if i > 0 else levels[0]
            l1 = levels[i] if i < n_t else levels[-1]
            if l0 == l1 or i == 0 or i == n_t:
                base = (l0 if l0 > minimum else minimum) if l0 > 0 else 0.0
                q0, q1 = p0 + slope * (c0 - t0), p0 + slope * (c1 - t0)
                if base > 0:
                    if q0 > base or q1 > base:
                        total_wms += k * _pos_part_integral(q0 - base, q1 - base, c1 - c0)
                elif q0 > 0 or q1 > 0:  # off -> lit by presence at max(presence, class minimum)
                    total_wms += (rated * (m.min_fraction - m.standby_fraction)) * (c1 - c0)
                    total_wms += k * (
                        minimum * (c1 - c0) + _pos_part_integral(q0 - minimum, q1 - minimum, c1 - c0)
                    )
            else:
                n = max(1, math.ceil((c1 - c0) / 1000))
                w = (c1 - c0) / n
                for j in range(n):
                    t = c0 + (j + 0.5) * w
                    sched = tl.level_at(int(t))
                    base = max(sched, minimum) if sched > 0 else 0.0
                    p = p0 + slope * (t - t0)
                    total_wms += (power_w(rated, max(base, p), m) - power_w(rated, base, m)) * w
    return total_wms / _H_MS


def _correction_wh(
    ev: Evaluator,
    lid: str,
    street: str,
    tl: Timeline,
    spans: list[tuple[int, int]],
    holds: list[Hold],
    step_ms: int,
    rated: float,
    minimum: float,
    model: PowerModel,
) -> float:
    """Energy (Wh) the arbitrated level adds to (or removes from) the schedule over `spans`."""
    hs = sorted(holds, key=lambda h: h.start_ms)
    total = 0.0
    for a, b in spans:
        n = max(1, math.ceil((b - a) / step_ms))
        width = (b - a) / n
        # only the holds overlapping this span matter
        local = tuple(h for h in hs if h.start_ms < b and h.end_ms > a)
        state = PresenceState({lid: local}) if local else None
        actual_wh = 0.0
        for k in range(n):
            t = int(a + (k + 0.5) * width)
            actual_wh += power_w(rated, ev._decide(lid, street, tl, t, state).level, model)
        # sampled actual minus the exact schedule: exact for constant overrides and crises
        total += actual_wh * width / _H_MS - rated * timeline_norm_ms(tl, minimum, model, a, b) / _H_MS
    return total


def measured_wh(
    samples: Iterable[tuple[int, float]],
    start_ms: int,
    end_ms: int,
    max_gap_ms: int = 15 * 60_000,
    min_coverage: float = 0.9,
) -> float | None:
    """Energy (Wh) over [start_ms, end_ms] from measured power samples `(t_ms, watts)`: trapezoids
    between consecutive samples (a hole is bridged linearly). None when samples at most
    `max_gap_ms` apart cover less than `min_coverage` of the span (or it is not spanned), so
    `night_energy` falls back to the model for that lamp."""
    pts = sorted(samples)
    if end_ms <= start_ms or not pts or pts[0][0] > start_ms + max_gap_ms or pts[-1][0] < end_ms - max_gap_ms:
        return None
    # hold the first/last reading to the span's ends (they are within max_gap_ms)
    pts = [(min(start_ms, pts[0][0]), pts[0][1]), *pts, (max(end_ms, pts[-1][0]), pts[-1][1])]
    total = 0.0
    covered = 0
    for (t0, w0), (t1, w1) in itertools.pairwise(pts):
        if t1 <= start_ms or t0 >= end_ms or t1 == t0:
            continue
        a, b = max(t0, start_ms), min(t1, end_ms)
        wa = w0 + (w1 - w0) * (a - t0) / (t1 - t0)
        wb = w0 + (w1 - w0) * (b - t0) / (t1 - t0)
        total += (wa + wb) / 2 * (b - a) / _H_MS
        if t1 - t0 <= max_gap_ms:
            covered += b - a
    return total if covered >= min_coverage * (end_ms - start_ms) else None
