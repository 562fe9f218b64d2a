"""Plan slicing and its wire form; group merging and command diffs."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rules_city import at, city_dict, make_city

from rules import City, Plan, diff_commands, evaluate_all, merge_groups, plan_for

CITY = make_city(
    overrides=[
        {
            "id": "o-lamp",
            "target": {"kind": "lamp", "id": "s-lane-02"},
            "level": 10,
            "start_ms": 0,
            "created_ms": 0,
        },
        {
            "id": "o-zone",
            "target": {"kind": "zone", "id": "d-centre"},
            "level": 90,
            "start_ms": 0,
            "created_ms": 1,
        },
    ],
    crises=[{"id": "c1", "streets": ["s-avenue", "s-lane"], "start_ms": 0}],
)
GW_A = [x.id for x in CITY.lamps if x.gateway == "gw-a"]
GW_B = [x.id for x in CITY.lamps if x.gateway == "gw-b"]


def test_plan_holds_only_what_concerns_the_gateway() -> None:
    plan = plan_for(CITY, GW_B, "gw-b")
    assert {x.id for x in plan.lamps} == set(GW_B)
    assert {z.id for z in plan.zones} == {"m-dijon", "d-north", "s-lane", "s-path"}
    assert {c.id for c in plan.calendars} == {"std", "north"}  # the default calendar always travels
    assert [r.id for r in plan.presence_rules] == ["walk"]
    assert [o.id for o in plan.overrides] == ["o-lamp"]
    assert [(c.id, c.streets) for c in plan.crises] == [("c1", ["s-lane"])]
    a = plan_for(CITY, GW_A, "gw-a")
    assert [o.id for o in a.overrides] == ["o-zone"] and a.presence_rules == []


def test_plan_evaluates_like_the_city() -> None:
    plan = plan_for(CITY, GW_B, "gw-b")
    for t in (at(dt.date(2026, 11, 18), 20), at(dt.date(2026, 11, 19), 3), at(dt.date(2026, 12, 5), 1)):
        city = evaluate_all(CITY, t, lamp_ids=GW_B)
        assert evaluate_all(plan, t) == city


def test_wire_round_trip_through_msgpack() -> None:
    plan = plan_for(CITY, GW_B, "gw-b")
    blob = msgpack.packb(plan.to_wire())
    back = Plan.from_wire(msgpack.unpackb(blob))
    assert back == plan and back.version == plan.version and back.gateway == "gw-b"


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from([x.id for x in CITY.lamps]), min_size=1))
def test_any_slice_round_trips(lamps: set[str]) -> None:
    plan = plan_for(CITY, lamps)
    assert Plan.from_wire(plan.to_wire()) == plan


def test_version_follows_content_only() -> None:
    v = plan_for(CITY, GW_B).version
    assert plan_for(CITY, list(reversed(GW_B))).version == v  # order of the request does not matter
    assert plan_for(CITY, GW_B, "gw-b").version == v  # the gateway name is not content
    d = city_dict()
    d["profiles"][0]["steps"][1]["level"] = 60  # "std" profile is used by gw-b's default calendar
    assert plan_for(City.model_validate(d), GW_B).version != v
    other = city_dict(
        overrides=[
            {
                "id": "x",
                "target": {"kind": "lamp", "id": "s-avenue-01"},
                "level": 5,
                "start_ms": 0,
                "created_ms": 0,
            }
        ]
    )
    assert plan_for(City.model_validate(other), GW_B).version == plan_for(make_city(), GW_B).version


def test_tampered_or_foreign_plan_is_refused() -> None:
    wire = plan_for(CITY, GW_B).to_wire()
    wire["lamps"][0]["rated_w"] = 999
    with pytest.raises(ValidationError, match="does not match"):
        Plan.from_wire(wire)
    with pytest.raises(ValueError, match="unsupported schema 2"):
        Plan.from_wire({**plan_for(CITY, GW_B).to_wire(), "schema": 2})
    with pytest.raises(ValueError, match="expected a map"):
        Plan.from_wire([1, 2])


def test_unknown_lamp_in_slice_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        plan_for(CITY, ["nope"])


# ------------------------------------------------------------------- group merging

LAMPS8 = [f"l{i}" for i in range(8)]
GROUPS = {
    "g-all": LAMPS8,
    "g-even": LAMPS8[0::2],
    "g-odd": LAMPS8[1::2],
    "g-low": LAMPS8[:4],
    "g-x": ["l0", "l9"],
}


def _expand(cmds: list[tuple[str, float]], groups: dict[str, list[str]]) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {}
    for target, level in cmds:
        for lamp in groups.get(target, [target]):
            got.setdefault(lamp, []).append(level)
    return got


def test_merge_uses_the_largest_agreeing_group() -> None:
    assert merge_groups(dict.fromkeys(LAMPS8, 40.0), GROUPS) == [("g-all", 40.0)]
    levels = {x: (40.0 if i % 2 == 0 else 70.0) for i, x in enumerate(LAMPS8)}
    assert merge_groups(levels, GROUPS) == [("g-even", 40.0), ("g-odd", 70.0)]
    levels["l1"] = 100.0
    assert merge_groups(levels, GROUPS) == [
        ("g-even", 40.0),
        ("l1", 100.0),
        ("l3", 70.0),
        ("l5", 70.0),
        ("l7", 70.0),
    ]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(LAMPS8), st.sampled_from([0.0, 40.0, 70.0, 100.0]), min_size=1))
def test_merge_covers_each_lamp_exactly_once_with_its_level(levels: dict[str, float]) -> None:
    cmds = merge_groups(levels, GROUPS)
    got = _expand(cmds, GROUPS)
    assert set(got) == set(levels)  # no lamp outside the request (g-x has l9: never used)
    assert all(v == [levels[k]] for k, v in got.items())
    assert len(cmds) <= len(levels)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(LAMPS8), st.sampled_from([0.0, 40.0, 70.0]), min_size=8),
    st.dictionaries(st.sampled_from(LAMPS8), st.sampled_from([0.0, 40.0, 70.0])),
)
def test_diff_sends_only_changes_and_reaches_the_desired_state(
    desired: dict[str, float], last: dict[str, float]
) -> None:
    cmds, new_last = diff_commands(desired, last, GROUPS)
    got = _expand(cmds, GROUPS)
    changed = {k for k, v in desired.items() if last.get(k) != v}
    assert changed <= set(got)
    assert all(
        desired[k] == v[0] and len(v) == 1 for k, v in got.items()
    )  # a group only re-sends agreeing lamps
    assert {k: new_last[k] for k in desired} == desired
    again, _ = diff_commands(desired, new_last, GROUPS)
    assert again == []


def test_diff_merges_a_schedule_step_into_one_group_command() -> None:
    last = dict.fromkeys(LAMPS8, 100.0)
    cmds, last = diff_commands(dict.fromkeys(LAMPS8, 70.0), last, GROUPS)
    assert cmds == [("g-all", 70.0)]
    cmds, _ = diff_commands({**last, "l3": 40.0}, last, GROUPS)
    assert cmds == [("l3", 40.0)]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(LAMPS8), st.sampled_from([0.0, 40.0]), min_size=8))
def test_merge_is_minimal_for_nested_groups(levels: dict[str, float]) -> None:
    # broadcast > halves > quarters (laminar): compare with the best cover found by brute force
    import itertools

    nested = {
        "b": LAMPS8,
        "h0": LAMPS8[:4],
        "h1": LAMPS8[4:],
        **{f"q{i}": LAMPS8[2 * i : 2 * i + 2] for i in range(4)},
    }
    got = merge_groups(levels, nested)
    usable = [g for g, m in nested.items() if len({levels[x] for x in m}) == 1]
    best = len(levels)
    for r in range(1, len(usable) + 1):
        for combo in itertools.combinations(usable, r):
            members = [x for g in combo for x in nested[g]]
            if len(members) == len(set(members)):
                best = min(best, r + len(levels) - len(members))
    assert len(got) == best
