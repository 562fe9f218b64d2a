"""Astronomical clock and the noon-to-noon night: DST, polar day and night, agreement with astral."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import astral
import astral.sun
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import Twilight, local_ms, night_bounds, night_of, sun_night

PARIS = ZoneInfo("Europe/Paris")
OSLO = ZoneInfo("Europe/Oslo")
DIJON = (47.322, 5.041)
# last Sundays of March and October (DST changes) in a few years, and the nights around them
DST_NIGHTS = [
    dt.date(y, m, d) + dt.timedelta(days=k)
    for y, m, d in [
        (2025, 3, 30),
        (2025, 10, 26),
        (2026, 3, 29),
        (2026, 10, 25),
        (2027, 3, 28),
        (2027, 10, 31),
    ]
    for k in (-2, -1, 0, 1)
]


def _local(t_ms: int, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_ms / 1000, tz)


@settings(deadline=None)
@given(st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 12, 31)))
def test_night_boundary_is_local_noon(naive: dt.datetime) -> None:
    local = naive.replace(tzinfo=PARIS)
    t = int(local.timestamp() * 1000)
    d = night_of(t, PARIS)
    start, end = night_bounds(d, PARIS)
    assert start <= t < end
    assert _local(start, PARIS).time() == dt.time(12, 0) and _local(start, PARIS).date() == d
    assert _local(end, PARIS).date() == d + dt.timedelta(days=1)


def test_night_boundary_exactly_at_noon() -> None:
    day = dt.date(2026, 11, 22)
    noon = local_ms(day, 12, 0, PARIS)
    assert night_of(noon - 1, PARIS) == day - dt.timedelta(days=1)
    assert night_of(noon, PARIS) == day


@pytest.mark.parametrize("day", [dt.date(2026, 3, 28), dt.date(2026, 10, 24)])
def test_dst_nights_are_23_and_25_hours(day: dt.date) -> None:
    start, end = night_bounds(day, PARIS)
    hours = (end - start) / 3_600_000
    assert hours == (23 if day.month == 3 else 25)


@pytest.mark.parametrize("night", DST_NIGHTS, ids=str)
@pytest.mark.parametrize("twilight", list(Twilight))
def test_dusk_before_dawn_across_dst(night: dt.date, twilight: Twilight) -> None:
    s = sun_night(*DIJON, night, PARIS, twilight)
    assert s.dusk_ms is not None and s.dawn_ms is not None
    assert s.start_ms < s.dusk_ms < s.dawn_ms < s.end_ms
    dusk, dawn = _local(s.dusk_ms, PARIS), _local(s.dawn_ms, PARIS)
    assert dusk.date() == night and 17 <= dusk.hour <= 22  # same evening, plausible wall time
    assert dawn.date() == night + dt.timedelta(days=1) and 4 <= dawn.hour <= 8


@settings(max_examples=40, deadline=None)
@given(st.dates(min_value=dt.date(2024, 1, 1), max_value=dt.date(2030, 12, 31)))
def test_civil_dusk_and_dawn_agree_with_astral(night: dt.date) -> None:
    obs = astral.Observer(*DIJON)
    s = sun_night(*DIJON, night, PARIS, Twilight.CIVIL)
    assert s.dusk_ms is not None and s.dawn_ms is not None
    ref_dusk = astral.sun.dusk(obs, night, tzinfo=PARIS).timestamp() * 1000
    ref_dawn = astral.sun.dawn(obs, night + dt.timedelta(days=1), tzinfo=PARIS).timestamp() * 1000
    # astral applies refraction at the threshold; we use geometric elevation: well under a minute apart
    assert abs(s.dusk_ms - ref_dusk) < 60_000
    assert abs(s.dawn_ms - ref_dawn) < 60_000


def test_sunset_mode_matches_astral_sunset() -> None:
    obs = astral.Observer(*DIJON)
    night = dt.date(2026, 6, 21)
    s = sun_night(*DIJON, night, PARIS, Twilight.SUNSET)
    assert s.dusk_ms is not None
    assert abs(s.dusk_ms - astral.sun.sunset(obs, night, tzinfo=PARIS).timestamp() * 1000) < 60_000


def test_midnight_sun_at_70n_in_june_has_no_dark_period() -> None:
    s = sun_night(70.0, 20.0, dt.date(2026, 6, 21), OSLO, Twilight.CIVIL)
    assert not s.dark and s.dusk_ms is None and s.dawn_ms is None


@given(st.dates(min_value=dt.date(2026, 5, 1), max_value=dt.date(2026, 8, 31)))
@settings(max_examples=25, deadline=None)
def test_at_70n_in_summer_dusk_is_before_dawn_or_there_is_no_dark(night: dt.date) -> None:
    s = sun_night(70.0, 20.0, night, OSLO, Twilight.CIVIL)
    if s.dark:
        assert s.dusk_ms is not None and s.dawn_ms is not None
        assert s.start_ms <= s.dusk_ms < s.dawn_ms <= s.end_ms
    else:
        assert s.dusk_ms is None and s.dawn_ms is None


def test_late_summer_at_70n_dusk_after_local_midnight_is_found() -> None:
    # In mid-August at 70 N the sun dips below -6 deg only around solar midnight, after local
    # midnight: the whole dark period falls on the next calendar date, which a per-date
    # dusk()/dawn() lookup misses.
    s = sun_night(70.0, 20.0, dt.date(2026, 8, 15), OSLO, Twilight.CIVIL)
    assert s.dusk_ms is not None and s.dawn_ms is not None
    dusk, dawn = _local(s.dusk_ms, OSLO), _local(s.dawn_ms, OSLO)
    assert dusk.date() == dawn.date() == dt.date(2026, 8, 16)
    assert 0 < s.dawn_ms - s.dusk_ms < 2 * 3_600_000


@pytest.mark.parametrize("night", [dt.date(2026, 8, 13) + dt.timedelta(days=k) for k in range(4)], ids=str)
def test_first_short_dark_periods_are_not_missed_between_scan_samples(night: dt.date) -> None:
    # reference: a 30-second scan of the elevation over the night
    from astral import Observer
    from astral.sun import elevation

    obs = Observer(70.0, 20.0)
    start, end = night_bounds(night, OSLO)
    dark = [
        t
        for t in range(start, end, 30_000)
        if elevation(obs, dt.datetime.fromtimestamp(t / 1000, dt.UTC), with_refraction=False) < -6
    ]
    s = sun_night(70.0, 20.0, night, OSLO, Twilight.CIVIL)
    if not dark:
        assert not s.dark
    else:
        assert s.dusk_ms is not None and s.dawn_ms is not None
        assert abs(s.dusk_ms - dark[0]) <= 31_000 and abs(s.dawn_ms - dark[-1]) <= 31_000


def test_polar_night_lights_from_noon_to_noon() -> None:
    s = sun_night(80.0, 15.0, dt.date(2026, 12, 21), OSLO, Twilight.CIVIL)
    assert (s.dusk_ms, s.dawn_ms) == (s.start_ms, s.end_ms)


def test_skipped_wall_time_maps_forward_and_repeated_to_first() -> None:
    spring = local_ms(dt.date(2026, 3, 29), 2, 30, PARIS)
    assert _local(spring, PARIS).strftime("%H:%M %z") == "03:30 +0200"
    autumn = local_ms(dt.date(2026, 10, 25), 2, 30, PARIS)
    assert _local(autumn, PARIS).strftime("%H:%M %z") == "02:30 +0200"  # the first 02:30 (summer time)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-60, 66),
    st.floats(-5, 10),
    st.dates(min_value=dt.date(2024, 1, 1), max_value=dt.date(2030, 12, 31)),
    st.sampled_from(list(Twilight)),
)
def test_dusk_before_dawn_inside_the_night_anywhere_in_the_time_zone(
    lat: float, lon: float, night: dt.date, twilight: Twilight
) -> None:
    s = sun_night(lat, lon, night, PARIS, twilight)
    if s.dark:
        assert s.dusk_ms is not None and s.dawn_ms is not None
        assert s.start_ms <= s.dusk_ms < s.dawn_ms <= s.end_ms
    else:
        assert s.dusk_ms is None and s.dawn_ms is None
