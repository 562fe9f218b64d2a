"""The retained `plan` message: envelope codec, round trip with a real policy slice, fuzzing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rules_city import make_city

import wire
from rules import Plan, plan_for
from wire import Kind, PlanMessage, Topics, WireError, decode_plan, encode_plan

CITY = make_city(
    overrides=[
        {"id": "o1", "target": {"kind": "lamp", "id": "s-lane-02"}, "level": 10, "start_ms": 0, "created_ms": 0}
    ],
    crises=[{"id": "c1", "streets": ["s-lane"], "start_ms": 5}],
)
GW_B = [x.id for x in CITY.lamps if x.gateway == "gw-b"]


def _message() -> PlanMessage:
    plan = plan_for(CITY, GW_B, "gw-b")
    return PlanMessage("gw-b", plan.version, 1_700_000_000_000, plan.to_wire(), {"PIR-1": GW_B[0]})


def test_topic_is_the_gateways_plan_topic() -> None:
    assert Topics().plan("gw-b") == "cn/v1/gw/gw-b/plan"
    assert Topics().parse(Topics().plan("gw-b")) == ("gw-b", Kind.PLAN)
    assert Kind.PLAN in wire.HUB_PUBLISHES


def test_round_trip_rebuilds_the_same_plan() -> None:
    m = _message()
    back = decode_plan(encode_plan(m))
    assert back == m
    plan = Plan.from_wire(back.plan)
    assert plan.version == m.version and plan.gateway == "gw-b"
    assert [o.id for o in plan.overrides] == ["o1"] and [c.id for c in plan.crises] == ["c1"]
    assert back.sensors == {"PIR-1": GW_B[0]}


def test_sensors_are_optional() -> None:
    m = _message()
    m2 = PlanMessage(m.gateway, m.version, m.ts_ms, m.plan)
    assert decode_plan(encode_plan(m2)).sensors == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("version"), "missing field 'version'"),
        (lambda b: b.update(version="xyz"), "'version' must be 16 hex digits"),
        (lambda b: b.update(ts="now"), "field 'ts' has type str"),
        (lambda b: b.update(plan=[1, 2]), "field 'plan' has type list"),
        (lambda b: b.update(sensors={"PIR": 3}), "sensors entry 'PIR'"),
        (lambda b: b.update(v=2), "unsupported schema version 2"),
    ],
)
def test_malformed_envelopes_name_the_field(mutate: object, message: str) -> None:
    body = msgpack.unpackb(encode_plan(_message()), raw=False)
    mutate(body)  # type: ignore[operator]
    with pytest.raises(WireError, match=message):
        decode_plan(msgpack.packb(body, use_bin_type=True))


def test_a_tampered_plan_body_is_refused_by_its_version() -> None:
    m = _message()
    body = dict(m.plan)
    body["lamps"] = body["lamps"][:-1]
    back = decode_plan(encode_plan(PlanMessage(m.gateway, m.version, m.ts_ms, body)))
    with pytest.raises(ValueError, match="does not match the plan's content"):
        Plan.from_wire(back.plan)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_wire_error_only(data: bytes) -> None:
    try:
        decode_plan(data)
    except WireError:
        pass


_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "gateway", "version", "ts", "plan", "sensors", "x"]),
                       _leaf | st.dictionaries(st.text(max_size=4), _leaf, max_size=3), max_size=7))
def test_random_maps_raise_wire_error_only(body: dict[str, object]) -> None:
    try:
        m = decode_plan(msgpack.packb(body, use_bin_type=True))
    except WireError:
        return
    assert isinstance(m.plan, dict) and isinstance(m.ts_ms, int)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_mutated_plans_raise_wire_error_only(pos: int, byte: int) -> None:
    blob = bytearray(encode_plan(_message()))
    blob[pos % len(blob)] = byte
    try:
        decode_plan(bytes(blob))
    except WireError:
        pass
