"""Presence light-wave: street adjacency, reach with speed and heading, holds without flicker."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from rules_city import at, city_dict, make_city

from rules import City, Lamp, PresenceEvent, PresenceState, apply_event, explain
from rules.presence import street_line

CITY = make_city()
NIGHT = dt.date(2026, 11, 18)
T = at(NIGHT, 2, 0)  # north district ("deep" profile): off from 00:30, so presence shows plainly
LANE = [f"s-lane-{i:02d}" for i in range(10)]  # 30 m apart, bearing 45 deg


def _raised(state: PresenceState, t: int) -> list[str]:
    return [x for x in LANE if state.level(x, t) > 0]


def test_street_is_ordered_along_its_lamps_whatever_the_input_order() -> None:
    lamps = [x for x in CITY.lamps if x.street == "s-lane"]
    shuffled = lamps[:]
    random.Random(4).shuffle(shuffled)
    line = street_line(shuffled)
    assert list(line.lamp_ids) in (LANE, LANE[::-1])
    gaps = [b - a for a, b in zip(line.pos_m, line.pos_m[1:], strict=False)]
    assert all(abs(g - 30) < 0.5 for g in gaps)


def test_curved_street_is_measured_along_its_lamps() -> None:
    # a quarter circle of radius 200 m, 10 lamps
    import math

    lamps = []
    for i in range(10):
        a = math.radians(i * 10)
        north, east = 200 * math.sin(a), 200 * (1 - math.cos(a))
        lamps.append(
            Lamp(
                id=f"c{i}",
                street="s",
                lat=47 + north / 111_195,
                lon=5 + east / (111_195 * math.cos(math.radians(47))),
                rated_w=50,
            )
        )
    line = street_line(lamps[::-1])
    assert list(line.lamp_ids) in ([f"c{i}" for i in range(10)], [f"c{i}" for i in range(9, -1, -1)])
    # 10 lamps every 10 deg span 90 deg: along the lamps ~ the arc (314 m), not the chord (283 m)
    assert abs(line.pos_m[-1] - 200 * math.pi / 2) < 2


def test_event_raises_neighbours_within_reach() -> None:
    state = apply_event(PresenceState(), PresenceEvent("s-lane-05", T), CITY, T)
    assert _raised(state, T) == LANE[3:8]  # 65 m each side, 30 m spacing
    assert state.level("s-path-00", T) == 0  # another street


def test_faster_users_get_light_further_ahead_and_less_behind() -> None:
    ahead = apply_event(PresenceState(), PresenceEvent("s-lane-05", T, speed_mps=12, heading_deg=45), CITY, T)
    assert _raised(ahead, T) == LANE[4:9]  # 96 m ahead, 32.5 m behind
    back = apply_event(PresenceState(), PresenceEvent("s-lane-05", T, speed_mps=12, heading_deg=225), CITY, T)
    assert _raised(back, T) == LANE[2:7]
    both = apply_event(PresenceState(), PresenceEvent("s-lane-05", T, speed_mps=12), CITY, T)
    assert _raised(both, T) == LANE[2:9]  # speed without heading: wider on both sides


def test_hold_then_ramp_back_to_the_schedule() -> None:
    state = apply_event(PresenceState(), PresenceEvent("s-lane-05", T), CITY, T)
    levels = [explain(CITY, "s-lane-05", T + s * 1000, state).level for s in (0, 59, 60, 70, 80, 81)]
    assert levels == [80, 80, 80, 40, 0, 0]


def test_state_is_immutable_and_expired_holds_are_pruned() -> None:
    s0 = PresenceState()
    s1 = apply_event(s0, PresenceEvent("s-lane-05", T), CITY, T)
    assert s0.holds == {} and s1.holds
    s2 = apply_event(s1, PresenceEvent("s-path-03", T + 200_000), CITY, T + 200_000)
    assert not any(k.startswith("s-lane") for k in s2.holds)


def test_street_without_presence_rule_is_not_raised() -> None:
    state = apply_event(PresenceState(), PresenceEvent("s-avenue-03", T), CITY, T)
    assert state.holds == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 59_000), min_size=1, max_size=12), st.sampled_from(LANE))
def test_repeated_events_extend_the_hold_without_a_dip(gaps: list[int], lamp: str) -> None:
    # events at the same lamp, each within the hold (60 s) of the previous: the light must stay
    # at the rule's level from the first event until the last event's hold ends
    times = []
    t = T
    for g in gaps:
        t += g
        times.append(t)
    # walk time forward as a runner would, folding in each event when it happens
    state = PresenceState()
    pending = list(times)
    for probe in range(times[0], times[-1] + 60_000, 997):
        while pending and pending[0] <= probe:
            e = pending.pop(0)
            state = apply_event(state, PresenceEvent(lamp, e), CITY, e)
        assert state.level(lamp, probe) == 80
    for e in pending:
        state = apply_event(state, PresenceEvent(lamp, e), CITY, e)
    assert state.level(lamp, times[-1] + 60_000 + 10_000) == 40
    assert state.level(lamp, times[-1] + 80_000) == 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(LANE), st.integers(0, 300_000)), min_size=1, max_size=10),
    st.integers(0, 400_000),
)
def test_level_is_the_max_over_all_events_holds(events: list[tuple[str, int]], probe: int) -> None:
    # pruning and dominance never drop a hold that still counts: compare with a state that keeps all
    events.sort(key=lambda e: e[1])
    state = PresenceState()
    full: list[PresenceState] = []
    for lamp, off in events:
        state = apply_event(state, PresenceEvent(lamp, T + off), CITY, T + off)
        full.append(apply_event(PresenceState(), PresenceEvent(lamp, T + off), CITY, T + off))
    t = T + max(probe, events[-1][1])
    for x in LANE:
        assert state.level(x, t) == max(s.level(x, t) for s in full)


def test_state_stays_small_over_a_long_night() -> None:
    # an event every 5 s for two hours, alternating between the two presence streets
    state = PresenceState()
    lamps = ["s-lane-00", "s-path-07", "s-lane-09", "s-path-00"]
    for k in range(2 * 720):
        t = T + k * 5_000
        state = apply_event(state, PresenceEvent(lamps[k % 4], t), CITY, t)
        assert sum(len(h) for h in state.holds.values()) <= 3 * len(CITY.lamps)
    # only what was raised in the last hold + fade + prune period remains
    recent = {x for hs in state.holds.values() for x in hs if x.end_ms > t}
    assert all(h.end_ms > t - 10_000 for hs in state.holds.values() for h in hs)
    assert recent


def test_reach_in_lamps_counts_lamps_and_still_extends_ahead_with_speed() -> None:
    d = city_dict()
    d["presence_rules"][0] = {
        "id": "walk",
        "level": 80,
        "reach_lamps": 2,
        "lookahead_s": 8,
        "behind_factor": 0.5,
    }
    city = City.model_validate(d)

    def raised(e: PresenceEvent) -> list[str]:
        s = apply_event(PresenceState(), e, city, T)
        return [x for x in LANE if s.level(x, T) > 0]

    assert raised(PresenceEvent("s-lane-05", T)) == LANE[3:8]
    assert raised(PresenceEvent("s-lane-05", T, heading_deg=45)) == LANE[4:8]  # 1 behind, 2 ahead
    assert raised(PresenceEvent("s-lane-05", T, speed_mps=12, heading_deg=45)) == LANE[4:9]  # 96 m ahead
    assert raised(PresenceEvent("s-lane-00", T)) == LANE[0:3]  # the street's end
