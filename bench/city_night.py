"""Simulated city nights: energy saving per profile set, policy evaluations/s, commands per step.

A synthetic Dijon-like metropolis (23 municipalities, districts, ~34,000 lamps on streets of
EN 13201 classes M/C/P at realistic spacing and wattage, presence sensors on some residential
streets and footpaths with traffic by street type and hour) runs through `rules`:

1. energy: for each candidate profile set, the nights of the 15th of every month (weighted by
   the month's length) with simulated presence traffic -> kWh and saving against the
   all-night-100% baseline (dusk to dawn); the city's target is 65%;
2. speed: `evaluate_all` for the whole city (cold: first call of a night, computing dusk/dawn per
   cell and the street timelines; warm; and with presence holds), against two per-lamp loops
   measured in the same run: `explain()` per lamp, and a trivial loop copying one level per lamp;
3. commands: at each schedule step of a night, the commands `diff_commands` emits with and
   without DALI group merging (groups of 8 consecutive lamps of a street on one gateway).

`--quick` runs a ~2,000-lamp city on two nights (a few seconds).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import msgpack

from rules import (
    City,
    Plan,
    PresenceEvent,
    PresenceState,
    apply_event,
    diff_commands,
    evaluate_all,
    explain,
    night_bounds,
    night_energy,
    plan_for,
)

CENTRE = (47.3220, 5.0415)
# name, population (2020s, rounded): lamps are shared out by population ** 0.8
MUNICIPALITIES = [
    ("Dijon", 159_000), ("Chenôve", 14_000), ("Talant", 11_500), ("Chevigny-Saint-Sauveur", 11_000),
    ("Quetigny", 9_800), ("Fontaine-lès-Dijon", 9_000), ("Longvic", 9_000), ("Saint-Apollinaire", 7_500),
    ("Marsannay-la-Côte", 5_200), ("Plombières-lès-Dijon", 2_900), ("Neuilly-Crimolois", 2_700),
    ("Sennecey-lès-Dijon", 2_300), ("Perrigny-lès-Dijon", 1_800), ("Ouges", 1_400), ("Daix", 1_500),
    ("Ahuy", 1_300), ("Hauteville-lès-Dijon", 1_200), ("Fénay", 1_200), ("Bressey-sur-Tille", 1_000),
    ("Bretenière", 900), ("Magny-sur-Tille", 800), ("Corcelles-les-Monts", 650), ("Flavignerot", 180),
]  # fmt: skip


@dataclass(frozen=True)
class StreetType:
    """A kind of street: its classes, length in lamps, spacing, wattage, share of lamps, sensors."""

    name: str
    classes: tuple[tuple[str, float], ...]  # (class, weight)
    lamps: tuple[int, int]
    spacing_m: float
    rated_w: float
    share: float  # of the city's lamps
    sensor_share: float  # of its streets that have presence sensors
    users: tuple[tuple[str, float, float, float], ...] = ()  # (kind, weight, speed lo, hi m/s)


TYPES = [
    StreetType("arterial", (("M2", 0.3), ("M3", 0.7)), (25, 60), 32, 120, 0.15, 0.0),
    StreetType("collector", (("M4", 0.6), ("M5", 0.4)), (15, 40), 30, 70, 0.20, 0.0),
    StreetType("square", (("C2", 0.2), ("C3", 0.5), ("C4", 0.3)), (6, 16), 20, 80, 0.05, 0.0),
    StreetType(
        "residential", (("P3", 0.3), ("P4", 0.5), ("P5", 0.2)), (8, 30), 27, 40, 0.48, 0.4,
        (("car", 0.5, 7.0, 12.0), ("walker", 0.35, 1.1, 1.7), ("cyclist", 0.15, 4.0, 6.5)),
    ),
    StreetType(
        "footpath", (("P5", 0.5), ("P6", 0.5)), (6, 20), 25, 25, 0.12, 0.6,
        (("walker", 0.8, 1.1, 1.7), ("cyclist", 0.2, 3.5, 6.0)),
    ),
]  # fmt: skip
TYPE_BY_NAME = {t.name: t for t in TYPES}

# passages per hour on a residential street with sensors, by local hour (footpaths: x 0.6)
TRAFFIC_PER_H = {16: 20, 17: 20, 18: 20, 19: 12, 20: 12, 21: 6, 22: 6, 23: 3, 0: 2, 1: 0.8, 2: 0.5,
                 3: 0.5, 4: 0.8, 5: 3, 6: 10, 7: 20, 8: 20, 9: 20}  # fmt: skip
SENSOR_EVERY = 4  # one sensor every 4th lamp
GROUP_SIZE = 8  # DALI group: 8 consecutive lamps of a street; plus one broadcast per gateway (its bus)
GATEWAY_LAMPS = 50


@dataclass
class Layout:
    """The synthetic city without its profiles: zones, lamps, street metadata, groups."""

    zones: list[dict[str, Any]] = field(default_factory=list)
    lamps: list[dict[str, Any]] = field(default_factory=list)
    street_type: dict[str, str] = field(default_factory=dict)
    street_class: dict[str, str] = field(default_factory=dict)
    sensors: dict[str, list[str]] = field(default_factory=dict)  # street -> sensor lamps in order
    street_lamps: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([c for c, _ in weighted], [w for _, w in weighted])[0]


def build_layout(n_lamps: int, seed: int = 2026) -> Layout:
    """A deterministic synthetic city of about `n_lamps` lamps."""
    rng = random.Random(seed)
    lay = Layout()
    weights = [p**0.8 for _, p in MUNICIPALITIES]
    total_w = sum(weights)
    m_per_deg_lat = 111_195.0
    m_per_deg_lon = m_per_deg_lat * math.cos(math.radians(CENTRE[0]))
    gw_count = 0
    gw_fill = 0
    for k, ((name, _), w) in enumerate(zip(MUNICIPALITIES, weights, strict=True)):
        mid = f"m{k:02d}"
        lay.zones.append({"id": mid, "kind": "municipality", "name": name})
        budget = round(n_lamps * w / total_w)
        if k == 0:
            mc = CENTRE
        else:
            ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(3_000, 9_000)
            mc = (
                CENTRE[0] + dist * math.cos(ang) / m_per_deg_lat,
                CENTRE[1] + dist * math.sin(ang) / m_per_deg_lon,
            )
        n_districts = max(1, min(12, budget // 1_200))
        radius = 2_500 if k == 0 else 900
        for d in range(n_districts):
            did = f"{mid}-d{d}"
            lay.zones.append({"id": did, "kind": "district", "parent": mid})
            a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, radius)
            dc = (mc[0] + r * math.cos(a) / m_per_deg_lat, mc[1] + r * math.sin(a) / m_per_deg_lon)
            d_budget = budget // n_districts
            placed = 0
            s = 0
            while placed < d_budget:
                st = rng.choices(TYPES, [t.share / (sum(t.lamps) / 2) for t in TYPES])[0]
                n = min(rng.randint(*st.lamps), max(2, d_budget - placed))
                sid = f"{did}-s{s}"
                s += 1
                cls = _pick(rng, st.classes)
                lay.zones.append({"id": sid, "kind": "street", "parent": did, "lighting_class": cls})
                lay.street_type[sid] = st.name
                lay.street_class[sid] = cls
                a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 600)
                x0, y0 = r * math.cos(a), r * math.sin(a)
                bearing = rng.uniform(0, math.pi)
                ids: list[str] = []
                for i in range(n):
                    along = i * st.spacing_m
                    x = x0 + along * math.sin(bearing) + rng.uniform(-2, 2)
                    y = y0 + along * math.cos(bearing) + rng.uniform(-2, 2)
                    lid = f"{sid}-{i:02d}"
                    if gw_fill >= GATEWAY_LAMPS:
                        gw_count, gw_fill = gw_count + 1, 0
                    gw_fill += 1
                    lay.groups.setdefault(f"gw{gw_count:03d}-broadcast", []).append(lid)
                    lay.lamps.append(
                        {
                            "id": lid,
                            "street": sid,
                            "lat": round(dc[0] + y / m_per_deg_lat, 7),
                            "lon": round(dc[1] + x / m_per_deg_lon, 7),
                            "rated_w": st.rated_w,
                            "group": f"{sid}-g{i // GROUP_SIZE}",
                            "gateway": f"gw{gw_count:03d}",
                        }
                    )
                    ids.append(lid)
                lay.street_lamps[sid] = ids
                for g in range(0, n, GROUP_SIZE):
                    lay.groups[f"{sid}-g{g // GROUP_SIZE}"] = ids[g : g + GROUP_SIZE]
                if st.sensor_share and rng.random() < st.sensor_share:
                    lay.sensors[sid] = ids[SENSOR_EVERY // 2 :: SENSOR_EVERY] or ids[:1]
                placed += n
    return lay


# ------------------------------------------------------------------- candidate profile sets

Steps = list[dict[str, Any]]
Candidate = Callable[[str, bool, float], Steps]  # (class, has sensors, class minimum) -> steps


def _issue(cls: str, sensors: bool, floor: float) -> Steps:
    """The issue's example for every street: dusk-10 100, 23:00 70, 01:00 40, 05:30 70, dawn+10 0."""
    return [
        {"at": "dusk", "offset_min": -10, "level": 100},
        {"at": "23:00", "level": 70},
        {"at": "01:00", "level": 40},
        {"at": "05:30", "level": 70},
        {"at": "dawn", "offset_min": 10, "level": 0},
    ]


def _dim(cls: str, sensors: bool, floor: float) -> Steps:
    """80% evening, 60% from 22:00, the class minimum 23:00-05:30, 60% to dawn; lamps on dusk to dawn."""
    return [
        {"at": "dusk", "level": 80, "ramp_min": 15},
        {"at": "22:00", "level": 60},
        {"at": "23:00", "level": floor},
        {"at": "05:30", "level": 60},
        {"at": "dawn", "level": 0},
    ]


def _floor_night(cls: str, sensors: bool, floor: float) -> Steps:
    """70% evening, the class minimum 21:30-06:00, 50% to dawn: every street lit all night."""
    return [
        {"at": "dusk", "level": 70, "ramp_min": 15},
        {"at": "21:30", "level": floor},
        {"at": "06:00", "level": 50},
        {"at": "dawn", "level": 0},
    ]


def _eco_max(cls: str, sensors: bool, floor: float) -> Steps:
    """50% evening (M/C) or 40% (P), the class minimum 20:00-06:30 (P with sensors: dark, presence), floor+10 to dawn."""
    evening = 50 if cls[0] in "MC" else 40
    night = 0 if sensors else floor
    return [
        {"at": "dusk", "level": max(evening, floor), "ramp_min": 10},
        {"at": "20:00", "level": night},
        {"at": "06:30", "level": min(100, floor + 10)},
        {"at": "dawn", "level": 0},
    ]


def _eco_max_curfew(cls: str, sensors: bool, floor: float) -> Steps:
    """eco-max, and P streets without sensors also dark 23:00-05:00 (part-night switch-off)."""
    if cls[0] == "P" and not sensors:
        return [
            {"at": "dusk", "level": max(40, floor), "ramp_min": 10},
            {"at": "20:00", "level": floor},
            {"at": "23:00", "level": 0},
            {"at": "05:00", "level": floor},
            {"at": "06:30", "level": min(100, floor + 10)},
            {"at": "dawn", "level": 0},
        ]
    return _eco_max(cls, sensors, floor)


def _eco_lit(cls: str, sensors: bool, floor: float) -> Steps:
    """Every street lit (>= class minimum) all night: 50% (M/C) or 40% (P) from dusk, the class
    minimum from 19:30 to dawn (P with sensors: dark 19:30-06:30, presence; the minimum to dawn)."""
    evening = 50 if cls[0] in "MC" else 40
    steps: Steps = [{"at": "dusk", "level": max(evening, floor), "ramp_min": 10}]
    if sensors:
        steps += [{"at": "19:30", "level": 0}, {"at": "06:30", "level": floor}]
    else:
        steps += [{"at": "19:30", "level": floor}]
    return [*steps, {"at": "dawn", "level": 0}]


CANDIDATES: dict[str, Candidate] = {
    "issue-example": _issue,
    "dim": _dim,
    "floor-night": _floor_night,
    "eco-max": _eco_max,
    "eco-max-curfew": _eco_max_curfew,
    "eco-lit": _eco_lit,
}

PRESENCE_RULES = [
    # residential: cars at 7-12 m/s get 6 s of light ahead (42-72 m), at least 2 lamps each side
    {"id": "road", "level": 100, "hold_s": 45, "ramp_down_s": 15, "reach_m": 60, "lookahead_s": 6},
    {"id": "path", "level": 70, "hold_s": 60, "ramp_down_s": 20, "reach_m": 55, "lookahead_s": 10},
]


def city_for(lay: Layout, candidate: Candidate, class_minimum: dict[str, float] | None = None) -> City:
    """The layout with one candidate's profiles: one calendar per (class, sensors) combination."""
    from rules import DEFAULT_CLASS_MINIMUM

    mins = {**DEFAULT_CLASS_MINIMUM, **(class_minimum or {})}
    combos = sorted({(lay.street_class[s], s in lay.sensors) for s in lay.street_class})
    profiles, calendars = [], []
    for cls, sens in combos:
        pid = f"{cls}-{'s' if sens else 'n'}"
        profiles.append({"id": pid, "steps": candidate(cls, sens, mins[cls])})
        calendars.append({"id": pid, "default_profile": pid})
    zones = []
    for z in lay.zones:
        if z["kind"] == "street":
            sid = z["id"]
            sens = sid in lay.sensors
            z = {**z, "calendar": f"{lay.street_class[sid]}-{'s' if sens else 'n'}"}
            if sens:
                z["presence"] = "road" if lay.street_type[sid] == "residential" else "path"
        zones.append(z)
    return City.model_validate(
        {
            "settings": {"class_minimum": mins},
            "default_calendar": calendars[0]["id"],
            "profiles": profiles,
            "calendars": calendars,
            "zones": zones,
            "lamps": lay.lamps,
            "presence_rules": PRESENCE_RULES,
        }
    )


def traffic(lay: Layout, city: City, night: dt.date, seed: int = 7) -> list[PresenceEvent]:
    """Presence events of one night: Poisson passages per street and hour, each passage firing the
    street's sensors in order at its speed and heading."""
    rng = random.Random(f"{seed}-{night}")
    ev = city.evaluator
    tz = city.settings.tz
    start, end = night_bounds(night, tz)
    events: list[PresenceEvent] = []
    for sid, sensors in lay.sensors.items():
        st = TYPE_BY_NAME[lay.street_type[sid]]
        factor = 1.0 if st.name == "residential" else 0.6
        line = ev.line(sid)
        idx = line.index()
        sensor_pos = sorted((line.pos_m[idx[s]], s) for s in sensors)
        length = line.pos_m[-1]
        t = start
        hour_ms = 3_600_000
        while t < end:
            hour = dt.datetime.fromtimestamp(t / 1000, tz).hour
            rate = TRAFFIC_PER_H.get(hour, 0) * factor
            if rate > 0:
                for _ in range(_poisson(rng, rate)):
                    t0 = t + rng.random() * hour_ms
                    kind = _pick(rng, tuple((u[0], u[1]) for u in st.users))
                    lo, hi = next((u[2], u[3]) for u in st.users if u[0] == kind)
                    v = rng.uniform(lo, hi)
                    forward = rng.random() < 0.5
                    heading = line.bearing_deg if forward else (line.bearing_deg + 180) % 360
                    for pos, s in sensor_pos if forward else reversed(sensor_pos):
                        dist = pos if forward else length - pos
                        events.append(PresenceEvent(s, int(t0 + dist / v * 1000), round(v, 1), heading))
            t += hour_ms
    events.sort(key=lambda e: e.t_ms)
    return events


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# ------------------------------------------------------------------- the three measurements


def energy(lay: Layout, nights: list[dt.date]) -> list[dict[str, Any]]:
    """Per candidate: kWh, baseline and saving over the nights (weighted by days of their month)."""
    out = []
    for name, cand in CANDIDATES.items():
        city = city_for(lay, cand)
        kwh = base = 0.0
        per_night = []
        n_events = 0
        by_family: dict[str, list[float]] = {}  # class family (M, C, P, P+sensors) -> kWh, baseline
        t0 = time.perf_counter()
        for night in nights:
            events = traffic(lay, city, night)
            n_events += len(events)
            r = night_energy(city, night, events)
            weight = _month_days(night)
            kwh += r.kwh * weight
            base += r.baseline_kwh * weight
            for sid, cls in lay.street_class.items():
                k, b = r.zones.get(sid, (0.0, 0.0))
                acc = by_family.setdefault(cls[0] + ("+s" if sid in lay.sensors else ""), [0.0, 0.0])
                acc[0] += k * weight
                acc[1] += b * weight
            per_night.append(
                {
                    "night": night.isoformat(),
                    "kwh": r.kwh,
                    "baseline_kwh": r.baseline_kwh,
                    "saving_pct": r.saving_pct,
                    "events": len(events),
                }
            )
        total_base = sum(v[1] for v in by_family.values())
        out.append(
            {
                "candidate": name,
                "doc": (cand.__doc__ or "").strip(),
                "year_kwh": kwh,
                "year_baseline_kwh": base,
                "saving_pct": 100 * (1 - kwh / base),
                "nights": per_night,
                "family_saving_pct": {f: 100 * (1 - v[0] / v[1]) for f, v in by_family.items() if v[1]},
                "family_baseline_share_pct": {f: 100 * v[1] / total_base for f, v in by_family.items()},
                "events_per_night": n_events / len(nights),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {name}: saving {out[-1]['saving_pct']:.1f}% ({out[-1]['seconds']:.1f} s)", flush=True)
    return out


def _month_days(d: dt.date) -> int:
    nxt = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return (nxt - dt.date(d.year, d.month, 1)).days


def _rate(fn: Callable[[], object], min_s: float) -> tuple[float, int]:
    """Calls per second of fn, repeated for at least min_s seconds."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_s:
            return n / el, n


def speed(lay: Layout, night: dt.date, min_s: float) -> dict[str, Any]:
    """Lamp evaluations per second: batch (cold, warm, with presence) vs per-lamp loops."""
    city = city_for(lay, _eco_lit)
    n = len(city.lamps)
    start, _ = night_bounds(night, city.settings.tz)
    t = start + 11 * 3_600_000  # 23:00
    t0 = time.perf_counter()
    evaluate_all(city, t)
    cold_s = time.perf_counter() - t0
    warm, _ = _rate(lambda: evaluate_all(city, t), min_s)
    events = [e for e in traffic(lay, city, night) if t - 120_000 <= e.t_ms <= t]
    state = PresenceState()
    for e in events:
        state = apply_event(state, e, city, e.t_ms)
    lit = len(state.active_lamps(t))
    with_p, _ = _rate(lambda: evaluate_all(city, t, state), min_s)
    ids = [x.id for x in city.lamps]

    def per_lamp() -> None:
        for lid in ids:
            explain(city, lid, t, state)

    loop, _ = _rate(per_lamp, min_s)
    level_of_street = {s: 50.0 for s in lay.street_lamps}
    street_of = {x.id: x.street for x in city.lamps}

    def trivial() -> None:
        {lid: level_of_street[street_of[lid]] for lid in ids}

    triv, _ = _rate(trivial, min_s)
    by_gw: dict[str, list[str]] = {}
    for x in city.lamps:
        by_gw.setdefault(x.gateway or "-", []).append(x.id)
    t0 = time.perf_counter()
    plans = [plan_for(city, ids, gw) for gw, ids in by_gw.items()]
    plans_s = time.perf_counter() - t0
    wire_bytes = [len(msgpack.packb(p.to_wire())) for p in plans]
    t0 = time.perf_counter()
    for p in plans[:50]:
        Plan.from_wire(msgpack.unpackb(msgpack.packb(p.to_wire())))
    from_wire_s = (time.perf_counter() - t0) / min(50, len(plans))
    t0 = time.perf_counter()
    s2 = PresenceState()
    for e in events:
        s2 = apply_event(s2, e, city, e.t_ms)
    apply_s = time.perf_counter() - t0
    return {
        "lamps": n,
        "cold_first_call_s": cold_s,
        "batch_lamps_per_s": warm * n,
        "batch_presence_lamps_per_s": with_p * n,
        "presence_lamps_lit": lit,
        "explain_loop_lamps_per_s": loop * n,
        "trivial_loop_lamps_per_s": triv * n,
        "apply_event_per_s": len(events) / apply_s if apply_s else 0.0,
        "events_folded": len(events),
        "gateways": len(plans),
        "plan_for_all_gateways_s": plans_s,
        "plan_wire_bytes_median": sorted(wire_bytes)[len(wire_bytes) // 2],
        "plan_from_wire_ms": from_wire_s * 1000,
    }


def commands(lay: Layout, night: dt.date) -> dict[str, Any]:
    """Commands per schedule step of a night with and without group merging (eco-lit profile set).

    The runner acts at each step instant and at the end of each ramp (the fade itself is left to
    the gear, e.g. DALI fade time); steps are labelled by the profile step that fell due (a
    dusk or dawn step falls at a slightly different instant in each location cell).
    """
    city = city_for(lay, _eco_lit)
    start, _ = night_bounds(night, city.settings.tz)
    ev = city.evaluator
    label: dict[int, set[str]] = {}
    for sid in lay.street_lamps:
        tl = ev.timeline(sid, night)
        prof = city.profile_by_id[tl.profile_id]
        for t, i in tl.steps:
            label.setdefault(t, set()).add(prof.steps[i].at)
            if prof.steps[i].ramp_min:
                # the fade into the next step ends ramp_min after it
                nxt = [u for u, j in tl.steps if j > i]
                if nxt:
                    end = nxt[0] + int(prof.steps[i].ramp_min * 60_000) + 1
                    label.setdefault(end, set()).add("ramp end")
    last_g: dict[str, float] = {}
    last_s: dict[str, float] = {}
    buckets: dict[str, dict[str, int]] = {}
    levels = ev.levels_all(start)
    _, last_g = diff_commands(levels, last_g, lay.groups)
    _, last_s = diff_commands(levels, last_s, None)
    for t in sorted(label):
        levels = ev.levels_all(t)
        cg, last_g = diff_commands(levels, last_g, lay.groups)
        cs, last_s = diff_commands(levels, last_s, None)
        if cs:
            key = " + ".join(sorted(label[t]))
            b = buckets.setdefault(key, {"instants": 0, "single": 0, "grouped": 0})
            b["instants"] += 1
            b["single"] += len(cs)
            b["grouped"] += len(cg)
    rows = [{"step": k, **v} for k, v in buckets.items()]
    tot_s = sum(r["single"] for r in rows)
    tot_g = sum(r["grouped"] for r in rows)
    return {"steps": rows, "single_total": tot_s, "grouped_total": tot_g, "groups": len(lay.groups)}


def main() -> None:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    n = 2_000 if args.quick else 34_000
    year = 2026
    months = [1, 7] if args.quick else [1, 3, 5, 7, 9, 11]
    nights = [dt.date(year, m, 15) for m in months]
    t0 = time.perf_counter()
    lay = build_layout(n)
    print(
        f"city: {len(lay.lamps):,} lamps, {len(lay.street_class):,} streets, "
        f"{len(lay.sensors):,} with sensors, {len(lay.groups):,} groups ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    print("energy:", flush=True)
    en = energy(lay, nights)
    print(
        _common.table(
            [
                "profile set",
                "kWh/year",
                "baseline kWh/year",
                "saving %",
                "M %",
                "C %",
                "P %",
                "P+sensors %",
                "events/night",
            ],
            [
                [
                    e["candidate"],
                    e["year_kwh"] * 365 / sum(_month_days(x) for x in nights),
                    e["year_baseline_kwh"] * 365 / sum(_month_days(x) for x in nights),
                    e["saving_pct"],
                    *(e["family_saving_pct"].get(f, 0.0) for f in ("M", "C", "P", "P+s")),
                    int(e["events_per_night"]),
                ]
                for e in en
            ],
        )
    )
    shares = en[0]["family_baseline_share_pct"]
    print("baseline share: " + ", ".join(f"{k} {v:.1f}%" for k, v in sorted(shares.items())))
    winter = dt.date(year, 12, 15) if not args.quick else dt.date(year, 10, 15)
    sp = speed(lay, winter, 0.2 if args.quick else 3.0)
    print(
        _common.table(
            ["evaluation (23:00)", "lamps/s", "x explain loop", "x trivial loop"],
            [
                [k, sp[v], sp[v] / sp["explain_loop_lamps_per_s"], sp[v] / sp["trivial_loop_lamps_per_s"]]
                for k, v in [
                    ("evaluate_all (warm)", "batch_lamps_per_s"),
                    (
                        f"evaluate_all + presence ({sp['presence_lamps_lit']} lit)",
                        "batch_presence_lamps_per_s",
                    ),
                    ("explain() per lamp (baseline)", "explain_loop_lamps_per_s"),
                    ("trivial per-lamp loop (baseline)", "trivial_loop_lamps_per_s"),
                ]
            ],
        )
    )
    print(
        f"first call of a night (dusk/dawn per cell + timelines): {sp['cold_first_call_s']:.3f} s; "
        f"apply_event: {sp['apply_event_per_s']:,.0f} events/s"
    )
    print(
        f"plans: {sp['gateways']} gateways sliced in {sp['plan_for_all_gateways_s']:.2f} s, "
        f"median {sp['plan_wire_bytes_median']:,} bytes on the wire, from_wire {sp['plan_from_wire_ms']:.1f} ms"
    )
    cm = commands(lay, winter)
    print(
        _common.table(
            ["schedule step (eco-lit)", "instants", "single-lamp commands", "with group merging", "ratio"],
            [
                [r["step"], r["instants"], r["single"], r["grouped"], r["grouped"] / r["single"]]
                for r in cm["steps"]
            ]
            + [
                [
                    "whole night",
                    sum(r["instants"] for r in cm["steps"]),
                    cm["single_total"],
                    cm["grouped_total"],
                    cm["grouped_total"] / max(1, cm["single_total"]),
                ]
            ],
        )
    )
    if args.json:
        path = _common.save(
            "city_night",
            {"quick": args.quick, "lamps": len(lay.lamps), "energy": en, "speed": sp, "commands": cm},
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
