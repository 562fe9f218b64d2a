"""Arbitration: override > crisis > presence > schedule, class minimum, ramps, calendars."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rules_city import at, city_dict, make_city

from rules import City, PresenceEvent, PresenceState, apply_event, evaluate_all, explain, night_of

PARIS = ZoneInfo("Europe/Paris")
CITY = make_city()
LAMPS = [x.id for x in CITY.lamps]
T0 = at(dt.date(2025, 1, 1), 0)
T1 = at(dt.date(2028, 12, 31), 0)
times = st.integers(min_value=T0, max_value=T1)
NOV = dt.date(2026, 11, 17)  # a Tuesday: default profile


def _with(**extra: object) -> City:
    return City.model_validate(city_dict(**extra))


def test_standard_profile_through_a_november_night() -> None:
    lamp = "s-avenue-00"  # M3: minimum 40%
    expect = [
        ((17, 0), 0.0),
        ((18, 0), 100.0),
        ((22, 59), 100.0),
        ((23, 0), 70.0),
        ((1, 2), 70 - 30 * 2 / 5),
        ((1, 5), 40.0),
        ((4, 0), 40.0),
        ((5, 30), 70.0),
        ((7, 0), 70.0),
        ((9, 0), 0.0),
    ]
    for (hh, mm), level in expect:
        day = NOV if hh >= 12 else NOV + dt.timedelta(days=1)
        d = explain(CITY, lamp, at(day, hh, mm))
        assert d.level == pytest.approx(level), (hh, mm, d)
        assert d.source == "schedule"
    sun = CITY.evaluator.sun("s-avenue", NOV)
    assert sun.dusk_ms is not None and sun.dawn_ms is not None
    on, off = sun.dusk_ms - 10 * 60_000, sun.dawn_ms + 10 * 60_000
    assert [explain(CITY, lamp, t).level for t in (on - 1, on, off - 1, off)] == [0, 100, 70, 0]


def test_class_minimum_raises_a_dim_step() -> None:
    # the "deep" profile of d-north goes to 30% at 22:10 and off at 00:30; P4 (min 15) keeps 30
    # but a C2 street (min 40) on the same profile is held at 40
    city = _with(
        zones=[
            *city_dict()["zones"][:3],
            *({**z, "calendar": "north"} if z["id"] == "s-square" else z for z in city_dict()["zones"][3:]),
        ]
    )
    d = explain(city, "s-square-00", at(NOV, 23, 0))
    assert d.level == 40 and d.source == "schedule" and "class minimum 40%" in d.detail
    assert explain(city, "s-lane-00", at(NOV, 23, 0)).level == 30
    # off is off: the class minimum applies only while the schedule has the lamp on
    assert explain(city, "s-square-00", at(NOV + dt.timedelta(days=1), 2, 0)).level == 0


def test_calendar_rule_christmas_market_on_friday() -> None:
    fri = dt.date(2026, 12, 4)
    d = explain(CITY, "s-avenue-00", at(fri, 23, 30))
    assert d.level == 100 and "Christmas market" in d.detail
    assert explain(CITY, "s-avenue-00", at(fri + dt.timedelta(days=1), 3, 0)).level == 50
    # the north district has its own calendar without the market rule
    assert "calendar north default" in explain(CITY, "s-lane-00", at(fri, 23, 30)).detail


def test_june_night_skips_the_0530_step_after_dawn() -> None:
    day = dt.date(2026, 6, 21)
    after_dawn = at(day + dt.timedelta(days=1), 5, 45)  # dawn+10 is ~05:13 in Dijon
    d = explain(CITY, "s-avenue-00", after_dawn)
    assert d.level == 0 and "dawn+10min" in d.detail


def test_midnight_sun_keeps_lamps_at_day_level() -> None:
    city = _with(
        settings={"timezone": "Europe/Oslo"},
        lamps=[{**x, "lat": x["lat"] + 22.7, "lon": x["lon"] + 15} for x in city_dict()["lamps"]],
    )
    oslo = ZoneInfo("Europe/Oslo")
    night = dt.date(2026, 6, 21)
    start = int(dt.datetime(2026, 6, 21, 12, tzinfo=oslo).timestamp() * 1000)
    for k in range(0, 24 * 60, 30):
        d = explain(city, "s-avenue-00", start + k * 60_000)
        assert d.level == 0 and "day level" in d.detail
    assert night_of(start, oslo) == night


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LAMPS), times)
def test_levels_within_0_100_and_above_class_minimum_when_lit(lamp: str, t: int) -> None:
    d = explain(CITY, lamp, t)
    assert 0 <= d.level <= 100
    street = CITY.lamp_by_id[lamp].street
    tl = CITY.evaluator.timeline(street, night_of(t, PARIS))
    if tl.level_at(t) > 0:
        assert d.level >= CITY.class_minimum(street)
    else:
        assert d.level == 0


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([x for x in LAMPS if x.startswith(("s-lane", "s-path"))]),
    st.lists(
        st.tuples(
            st.sampled_from([x for x in LAMPS if x.startswith(("s-lane", "s-path"))]),
            st.integers(0, 3_600_000),
            st.one_of(st.none(), st.floats(0, 30)),
            st.one_of(st.none(), st.floats(0, 359)),
        ),
        max_size=8,
    ),
    st.integers(0, 4 * 3_600_000),
    st.sampled_from([(NOV, 19), (NOV + dt.timedelta(days=1), 2), (dt.date(2026, 6, 21), 23)]),
)
def test_presence_never_lowers_and_stays_in_range(
    lamp: str,
    events: list[tuple[str, int, float | None, float | None]],
    dt_ms: int,
    when: tuple[dt.date, int],
) -> None:
    t0 = at(*when)
    state = PresenceState()
    for src, off, speed, heading in sorted(events, key=lambda e: e[1]):
        state = apply_event(state, PresenceEvent(src, t0 + off, speed, heading), CITY, t0 + off)
    t = t0 + dt_ms
    with_p = explain(CITY, lamp, t, state)
    without = explain(CITY, lamp, t)
    assert without.level <= with_p.level <= 100
    if with_p.level > without.level:
        assert with_p.source == "presence"


def test_presence_lights_a_street_switched_off_at_night_but_not_in_daylight() -> None:
    night = NOV + dt.timedelta(days=1)
    t = at(night, 2, 0)  # "deep" profile: off from 00:30
    assert explain(CITY, "s-lane-03", t).level == 0
    state = apply_event(PresenceState(), PresenceEvent("s-lane-03", t), CITY, t)
    d = explain(CITY, "s-lane-03", t + 1000, state)
    assert d.level == 80 and d.source == "presence"
    noon = at(night, 14, 0)
    state = apply_event(PresenceState(), PresenceEvent("s-lane-03", noon), CITY, noon)
    assert explain(CITY, "s-lane-03", noon + 1000, state).level == 0


def _override(
    oid: str, target: tuple[str, str], level: float, start: int, expiry: int | None, created: int
) -> dict:
    return {
        "id": oid,
        "target": {"kind": target[0], "id": target[1]},
        "level": level,
        "start_ms": start,
        "expiry_ms": expiry,
        "created_ms": created,
    }


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(LAMPS),
    st.integers(0, 24 * 3_600_000),
    st.integers(1, 24 * 3_600_000),
    st.floats(0, 100),
    st.integers(0, 48 * 3_600_000),
)
def test_expired_override_has_no_effect(
    lamp: str, start_off: int, length: int, level: float, t_off: int
) -> None:
    t0 = at(NOV, 12)
    start, expiry = t0 + start_off, t0 + start_off + length
    t = t0 + t_off
    city = _with(overrides=[_override("o1", ("lamp", lamp), level, start, expiry, start)])
    with_o = explain(city, lamp, t)
    if t < start or t >= expiry:
        assert with_o == explain(CITY, lamp, t)
    else:
        assert with_o.source == "override"


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(LAMPS),
    st.lists(
        st.tuples(st.sampled_from(["lamp", "group", "zone"]), st.floats(0, 100), st.integers(0, 10**6)),
        min_size=1,
        max_size=6,
        unique_by=lambda x: x[2],
    ),
)
def test_latest_override_wins(lamp: str, specs: list[tuple[str, float, int]]) -> None:
    x = CITY.lamp_by_id[lamp]
    target_of = {
        "lamp": lamp,
        "group": x.group,
        "zone": "d-centre" if x.street in ("s-avenue", "s-square") else "d-north",
    }
    t0 = at(NOV, 22)
    ovs = [
        _override(f"o{i}", (k, target_of[k]), lvl, t0 - 1000, None, t0 - 10**7 + c)
        for i, (k, lvl, c) in enumerate(specs)
    ]
    city = _with(overrides=ovs)
    d = explain(city, lamp, t0)
    latest = max(specs, key=lambda s: s[2])
    minimum = CITY.class_minimum(x.street)
    expect = minimum if 0 < latest[1] < minimum else latest[1]  # lit at 22:00 in November
    assert d.source == "override" and d.level == pytest.approx(expect)


def test_override_beats_crisis_beats_presence_and_clearing_returns_to_programme() -> None:
    t = at(NOV + dt.timedelta(days=1), 2, 0)
    crisis = {"id": "flood", "streets": ["s-lane"], "start_ms": t - 60_000}
    state = apply_event(PresenceState(), PresenceEvent("s-lane-04", t), CITY, t)
    city = _with(crises=[crisis])
    assert explain(city, "s-lane-04", t, state).source == "crisis"
    assert explain(city, "s-lane-04", t, state).level == 100
    assert explain(city, "s-path-00", t).source == "schedule"  # not on the route
    city = _with(
        crises=[crisis], overrides=[_override("maint", ("lamp", "s-lane-04"), 0, t - 1, None, t - 1)]
    )
    assert explain(city, "s-lane-04", t, state).level == 0  # an explicit off stays off
    closed = _with(crises=[{**crisis, "end_ms": t}])
    assert explain(closed, "s-lane-04", t, state).source == "presence"
    assert explain(closed, "s-lane-04", t).source == "schedule"


def test_zone_override_covers_its_subtree_only() -> None:
    t = at(NOV, 21)
    city = _with(overrides=[_override("o", ("zone", "d-north"), 55, t - 1, t + 60_000, t - 1)])
    got = evaluate_all(city, t)
    assert {k for k, d in got.items() if d.source == "override"} == {
        x for x in LAMPS if x.startswith(("s-lane", "s-path"))
    }


@settings(max_examples=60, deadline=None)
@given(times, st.lists(st.tuples(st.sampled_from(LAMPS), st.integers(-600_000, 0)), max_size=5))
def test_evaluate_all_equals_explain_per_lamp(t: int, events: list[tuple[str, int]]) -> None:
    city = _with(
        overrides=[_override("o", ("group", "g-s-avenue-1"), 20, t - 10, t + 10, 0)],
        crises=[{"id": "c", "streets": ["s-square"], "start_ms": t - 5}],
    )
    state = PresenceState()
    for lamp, off in sorted(events, key=lambda e: e[1]):
        state = apply_event(state, PresenceEvent(lamp, t + off), city, t + off)
    batch = evaluate_all(city, t, state)
    assert set(batch) == set(LAMPS)
    for lamp in LAMPS:
        assert batch[lamp] == explain(city, lamp, t, state)


def test_unknown_lamp_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="nope"):
        explain(CITY, "nope", T0)


def test_clock_step_overtaken_by_a_late_dusk_takes_effect_at_dusk() -> None:
    # "dusk 100, 20:00 40, dawn 0": in June dusk (~22:20) is after 20:00, so the lamps come on at 40%
    prof = {
        "id": "early",
        "steps": [{"at": "dusk", "level": 100}, {"at": "20:00", "level": 40}, {"at": "dawn", "level": 0}],
    }
    city = _with(
        profiles=[*city_dict()["profiles"], prof],
        calendars=[{"id": "std", "default_profile": "early"}, {"id": "north", "default_profile": "early"}],
    )
    june, nov = dt.date(2026, 6, 21), dt.date(2026, 11, 17)
    sun = city.evaluator.sun("s-avenue", june)
    assert sun.dusk_ms is not None
    assert explain(city, "s-avenue-00", sun.dusk_ms - 1).level == 0
    d = explain(city, "s-avenue-00", sun.dusk_ms)
    assert d.level == 40 and "step 1 (20:00)" in d.detail
    # in November dusk is before 20:00: both steps happen
    assert explain(city, "s-avenue-00", at(nov, 19, 0)).level == 100
    assert explain(city, "s-avenue-00", at(nov, 20, 0)).level == 40


def test_evaluator_keeps_only_a_few_nights_and_stays_correct() -> None:
    city = make_city()
    ev = city.evaluator
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=k) for k in range(10)]
    first = [explain(city, "s-avenue-00", at(d, 18)) for d in days]
    assert len({k[1] for k in ev._timeline}) <= 4 and len({k[1] for k in ev._sun}) <= 4
    assert [explain(city, "s-avenue-00", at(d, 18)) for d in days] == first


def test_clock_step_in_the_skipped_spring_hour_happens_at_the_shifted_instant() -> None:
    prof = {
        "id": "p",
        "steps": [{"at": "dusk", "level": 100}, {"at": "02:30", "level": 40}, {"at": "dawn", "level": 0}],
    }
    city = _with(
        profiles=[*city_dict()["profiles"], prof],
        calendars=[{"id": "std", "default_profile": "p"}, {"id": "north", "default_profile": "p"}],
    )
    night = dt.date(2026, 3, 28)  # clocks go 02:00 -> 03:00 on the 29th
    switch = at(night + dt.timedelta(days=1), 3, 30)
    assert explain(city, "s-avenue-00", switch - 1).level == 100
    assert explain(city, "s-avenue-00", switch).level == 40
    assert dt.datetime.fromtimestamp(switch / 1000, PARIS).strftime("%H:%M%z") == "03:30+0200"


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["s-lane-02", "s-lane-05", "s-path-04"]), st.integers(0, 200_000))
def test_a_lamp_lit_by_presence_is_never_under_its_class_minimum(lamp: str, dt_ms: int) -> None:
    low = city_dict()
    low["presence_rules"][0]["level"] = 12  # under P4's 15% minimum, over P6's 10%
    city = City.model_validate(low)
    t = at(NOV + dt.timedelta(days=1), 2, 0)  # scheduled off ("deep" profile)
    state = apply_event(PresenceState(), PresenceEvent(lamp, t), city, t)
    d = explain(city, lamp, t + dt_ms, state)
    minimum = city.class_minimum(city.lamp_by_id[lamp].street)
    assert d.level == 0 or d.level >= minimum
    if dt_ms <= 60_000:
        assert d.level == max(12, minimum) and d.source == "presence"


def test_polar_night_lamps_follow_the_profile_from_noon() -> None:
    city = _with(
        settings={"timezone": "Europe/Oslo"},
        lamps=[{**x, "lat": x["lat"] + 32.7, "lon": x["lon"] + 10} for x in city_dict()["lamps"]],
    )
    oslo = ZoneInfo("Europe/Oslo")
    noon = int(dt.datetime(2026, 12, 21, 12, tzinfo=oslo).timestamp() * 1000)
    d = explain(city, "s-avenue-00", noon + 3_600_000)  # 13:00, sun below -6 deg all day at 80 N
    assert d.level == 100 and "dusk-10min" in d.detail


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["s-avenue", "s-lane"]),
    st.dates(min_value=dt.date(2026, 1, 1), max_value=dt.date(2026, 12, 31)),
    st.sampled_from([(47.3, 5.0), (70.0, 20.0), (80.0, 15.0)]),
)
def test_timeline_breakpoints_are_in_time_order(
    street: str, night: dt.date, where: tuple[float, float]
) -> None:
    city = _with(
        lamps=[
            {**x, "lat": where[0] + (x["lat"] - 47.32), "lon": where[1] + (x["lon"] - 5.04)}
            for x in city_dict()["lamps"]
        ]
    )
    tl = city.evaluator.timeline(street, night)
    assert list(tl.times) == sorted(tl.times)
    assert [t for t, _ in tl.steps] == sorted(t for t, _ in tl.steps)
    assert all(tl.start_ms <= t for t in tl.times)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 26 * 3_600_000),
    st.lists(st.tuples(st.sampled_from(LAMPS), st.integers(-200_000, 0)), max_size=4),
)
def test_levels_do_not_change_before_next_change(off: int, events: list[tuple[str, int]]) -> None:
    from rules import next_change

    t0 = at(NOV, 12)
    t = t0 + off
    city = _with(
        overrides=[_override("o", ("group", "g-s-avenue-1"), 20, t0 + 5 * 3_600_000, t0 + 6 * 3_600_000, 0)],
        crises=[
            {
                "id": "c",
                "streets": ["s-square"],
                "start_ms": t0 + 9 * 3_600_000,
                "end_ms": t0 + 9 * 3_600_000 + 60_000,
            }
        ],
    )
    state = PresenceState()
    for lamp, d in sorted(events, key=lambda e: e[1]):
        state = apply_event(state, PresenceEvent(lamp, t + d), city, t + d)
    n = next_change(city, t, state, tick_ms=10_000)
    assert n > t
    if n - t <= 10_000:
        return  # inside a ramp or a fade: the runner ticks
    now = {k: d.level for k, d in evaluate_all(city, t, state).items()}
    for u in (t + 1, (t + n) // 2, n - 1):
        assert {k: d.level for k, d in evaluate_all(city, u, state).items()} == now
