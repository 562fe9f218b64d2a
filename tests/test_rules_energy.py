"""Energy of a night: the power model, exact schedule integration, presence, overrides, roll-ups."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rules_city import city_dict, make_city

from rules import City, PowerModel, PresenceEvent, PresenceState, apply_event, explain, night_energy, power_w

NIGHT = dt.date(2026, 11, 18)
CITY = make_city()
PM = PowerModel()


def _numeric_kwh(city: City, lamp: str, events: list[PresenceEvent], step_ms: int = 5_000) -> float:
    """Reference: walk the night with explain() every step (midpoint rule), folding in events."""
    ev = city.evaluator
    street = city.lamp_by_id[lamp].street
    tl = ev.timeline(street, NIGHT)
    rated = city.lamp_by_id[lamp].rated_w
    pending = sorted(events, key=lambda e: e.t_ms)
    state = PresenceState()
    wh = 0.0
    for t0 in range(tl.start_ms, tl.end_ms, step_ms):
        t = t0 + step_ms // 2
        while pending and pending[0].t_ms <= t:
            e = pending.pop(0)
            state = apply_event(state, e, city, e.t_ms)
        wh += power_w(rated, explain(city, lamp, t, state).level, city.settings.power) * step_ms / 3_600_000
    return wh / 1000


def test_power_model_is_linear_above_a_floor_with_standby_when_off() -> None:
    assert power_w(100, 100, PM) == pytest.approx(100)
    assert power_w(100, 50, PM) == pytest.approx(100 * (0.08 + 0.92 * 0.5))
    assert power_w(100, 0, PM) == pytest.approx(0.5)
    assert power_w(100, 1, PM) > power_w(100, 0, PM)


@settings(deadline=None)
@given(st.floats(0, 100), st.floats(0, 100))
def test_power_grows_with_level(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert power_w(80, lo, PM) <= power_w(80, hi, PM) <= 80


def test_all_night_full_profile_costs_the_baseline_plus_daytime_standby() -> None:
    city = City.model_validate(
        city_dict(
            profiles=[
                *city_dict()["profiles"],
                {"id": "full", "steps": [{"at": "dusk", "level": 100}, {"at": "dawn", "level": 0}]},
            ],
            calendars=[{"id": "std", "default_profile": "full"}, {"id": "north", "default_profile": "full"}],
        )
    )
    r = night_energy(city, NIGHT)
    sun = city.evaluator.sun("s-avenue", NIGHT)
    assert sun.dusk_ms is not None and sun.dawn_ms is not None
    day_h = 24 - (sun.dawn_ms - sun.dusk_ms) / 3_600_000
    standby = sum(x.rated_w for x in city.lamps) * 0.005 * day_h / 1000
    assert r.kwh == pytest.approx(r.baseline_kwh + standby, rel=1e-3)
    assert -1 < r.saving_pct < 0


@pytest.mark.parametrize("lamp", ["s-avenue-03", "s-square-01", "s-lane-04", "s-path-07"])
def test_schedule_energy_is_exact(lamp: str) -> None:
    r = night_energy(CITY, NIGHT)
    assert r.lamps[lamp].kwh == pytest.approx(_numeric_kwh(CITY, lamp, []), rel=2e-3)


def test_presence_adds_what_the_lamps_really_burn() -> None:
    base = night_energy(CITY, NIGHT)
    t = CITY.evaluator.timeline("s-lane", NIGHT).dark_from_ms
    assert t is not None
    # a walker every 10 minutes from 18:00 to 06:00 along the lane, plus a fast cyclist burst
    events = [PresenceEvent("s-lane-04", t + k * 601_003) for k in range(72)]  # not in phase with sampling
    events += [PresenceEvent("s-lane-02", t + 8 * 3_600_000 + k * 20_011, 6.0, 45.0) for k in range(5)]
    r = night_energy(CITY, NIGHT, events)
    for lamp in ("s-lane-04", "s-lane-02", "s-lane-06"):
        assert r.lamps[lamp].kwh > base.lamps[lamp].kwh
        assert r.lamps[lamp].kwh == pytest.approx(_numeric_kwh(CITY, lamp, events), rel=5e-3)
    assert r.lamps["s-path-00"].kwh == base.lamps["s-path-00"].kwh
    assert r.saving_pct < base.saving_pct


def test_override_off_all_night_leaves_standby_only() -> None:
    ov = {
        "id": "o",
        "target": {"kind": "lamp", "id": "s-avenue-00"},
        "level": 0,
        "start_ms": 0,
        "created_ms": 0,
    }
    r = night_energy(City.model_validate(city_dict(overrides=[ov])), NIGHT)
    start, end = (
        CITY.evaluator.timeline("s-avenue", NIGHT).start_ms,
        CITY.evaluator.timeline("s-avenue", NIGHT).end_ms,
    )
    rated = CITY.lamp_by_id["s-avenue-00"].rated_w
    assert r.lamps["s-avenue-00"].kwh == pytest.approx(
        rated * 0.005 * (end - start) / 3_600_000 / 1000, rel=1e-3
    )


def test_measured_energy_replaces_the_model_and_zones_add_up() -> None:
    r = night_energy(CITY, NIGHT, measured_wh={"s-path-01": 123.0})
    assert r.lamps["s-path-01"].kwh == 0.123 and r.lamps["s-path-01"].measured
    streets = [z.id for z in CITY.zones if z.kind == "street"]
    assert r.zones["m-dijon"][0] == pytest.approx(sum(r.zones[s][0] for s in streets))
    assert r.zones["m-dijon"][0] == pytest.approx(r.kwh)
    assert r.zones["d-north"][1] == pytest.approx(r.zones["s-lane"][1] + r.zones["s-path"][1])
    assert 0 < r.zone_saving_pct("d-north") < 100


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["s-avenue", "s-lane"]), st.floats(0, 1), st.floats(0, 1))
def test_schedule_integral_splits_additively(street: str, x: float, y: float) -> None:
    from rules.energy import timeline_norm_ms

    tl = CITY.evaluator.timeline(street, NIGHT)
    a, b = sorted(int(tl.start_ms + f * (tl.end_ms - tl.start_ms)) for f in (x, y))
    m = CITY.class_minimum(street)
    whole = timeline_norm_ms(tl, m, PM)
    parts = (
        timeline_norm_ms(tl, m, PM, tl.start_ms, a)
        + timeline_norm_ms(tl, m, PM, a, b)
        + timeline_norm_ms(tl, m, PM, b, tl.end_ms)
    )
    assert parts == pytest.approx(whole, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["s-lane-01", "s-lane-05", "s-path-03"]),
            st.integers(0, 15 * 3_600_000),
            st.sampled_from([None, 1.4, 8.0]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_exact_presence_energy_agrees_with_sampling(events: list[tuple[str, int, float | None]]) -> None:
    # an override far in the future (no effect) sends the lamp through the sampled path
    t0 = CITY.evaluator.timeline("s-lane", NIGHT).start_ms
    evs = [PresenceEvent(lamp, t0 + off, speed, 45.0 if speed else None) for lamp, off, speed in events]
    future = {
        "id": "f",
        "target": {"kind": "zone", "id": "d-north"},
        "level": 5,
        "start_ms": t0 + 10**10,
        "created_ms": 0,
    }
    exact = night_energy(CITY, NIGHT, evs)
    sampled = night_energy(City.model_validate(city_dict(overrides=[future])), NIGHT, evs, step_s=1)
    for lamp in [x.id for x in CITY.lamps if x.street in ("s-lane", "s-path")]:
        assert exact.lamps[lamp].kwh == pytest.approx(sampled.lamps[lamp].kwh, rel=1e-3, abs=1e-6)


def test_measured_power_samples_give_the_nights_energy_or_none_when_too_sparse() -> None:
    from rules import measured_wh

    start, end = 0, 24 * 3_600_000
    # 60 W for 12 h then 10 W, sampled every minute
    samples = [(t, 60.0 if t < 12 * 3_600_000 else 10.0) for t in range(0, end + 1, 60_000)]
    assert measured_wh(samples, start, end) == pytest.approx(60 * 12 + 10 * 12, rel=1e-3)
    # a 3-hour hole (> max gap) in 24 h still covers 87.5%: refused at 90%, accepted at 80%
    holed = [s for s in samples if not 3 * 3_600_000 < s[0] < 6 * 3_600_000]
    assert measured_wh(holed, start, end) is None
    assert measured_wh(holed, start, end, min_coverage=0.8) == pytest.approx(840, rel=1e-3)  # bridged
    assert measured_wh([], start, end) is None
    # feeds night_energy: the measured lamp uses it
    t0, t1 = (
        CITY.evaluator.timeline("s-lane", NIGHT).start_ms,
        CITY.evaluator.timeline("s-lane", NIGHT).end_ms,
    )
    wh = measured_wh([(t, 20.0) for t in range(t0, t1 + 1, 300_000)], t0, t1)
    assert wh == pytest.approx(480, rel=1e-6)
    r = night_energy(CITY, NIGHT, measured_wh={"s-lane-01": wh})
    assert r.lamps["s-lane-01"].measured and r.lamps["s-lane-01"].kwh == pytest.approx(0.48)
