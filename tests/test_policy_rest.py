"""The /api/v1/policy REST API on a real hub (SQLite file, Mosquitto): CRUD, precise validation
errors, reference checks, roles, overrides, crisis, explain, energy, persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker import Mosquitto
from hubtest import Hub, _settings
from policytest import PROFILE, SimClock, at, load, send, start_policy_hub, street

from hub.policy import POLICY

LAMPS = ["L-0001", "L-0002", "L-0003", "L-0004"]


@pytest.fixture
async def hub(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Hub]:
    h = await start_policy_hub(_settings(tmp_path, mosquitto), SimClock(at(22, 0)))
    try:
        yield h
    finally:
        await h.client.close()


async def test_an_empty_policy_says_what_is_missing(hub: Hub) -> None:
    status, body = await send(hub, "GET", "/policy", role="viewer")
    assert status == 200 and body["running"] is False
    assert {"loc": ["default_calendar"], "message": "no calendar 'default'"} in body["problems"]


async def test_crud_builds_a_running_policy_and_lists_it(hub: Hub) -> None:
    await load(hub, street("cab-07", LAMPS))
    status, body = await send(hub, "GET", "/policy", role="viewer")
    assert body["running"] is True and body["problems"] == []
    assert body["counts"]["lamps"] == 4
    status, items = await send(hub, "GET", "/policy/lamps", role="viewer")
    assert [x["id"] for x in items["items"]] == LAMPS
    status, prof = await send(hub, "GET", "/policy/profiles/night", role="viewer")
    assert status == 200 and prof["steps"][1] == {"at": "23:00", "offset_min": 0, "level": 70, "ramp_min": 0}
    # replace with PUT, then explain follows the new profile
    steps = [{**s} for s in PROFILE["steps"]]
    steps[0]["level"] = 90
    status, _ = await send(hub, "PUT", "/policy/profiles/night", {"steps": steps})
    assert status == 200
    status, ex = await send(hub, "GET", "/policy/lamps/L-0002/explain", role="viewer")
    assert status == 200 and ex["level"] == 90 and ex["source"] == "schedule"
    assert "profile night" in ex["detail"] and "step 0 (dusk-10min)" in ex["detail"]


async def test_validation_errors_name_the_step_and_field(hub: Hub) -> None:
    bad = {"id": "p", "steps": [{"at": "dusk", "level": 100}, {"at": "25:00", "level": 50},
                                {"at": "dawn", "level": 140}]}
    status, body = await send(hub, "POST", "/policy/profiles", bad)
    assert status == 422 and body["error"]["code"] == "invalid_policy"
    msg = body["error"]["message"]
    assert "steps.1.at: Value error, expected \"HH:MM\"" in msg
    assert "steps.2.level: Input should be less than or equal to 100" in msg
    assert {tuple(d["loc"]) for d in body["error"]["details"]} == {("steps", 1, "at"), ("steps", 2, "level")}
    status, body = await send(hub, "POST", "/policy/zones", {"id": "s", "kind": "street"})
    assert status == 422 and "a street needs a lighting_class" in body["error"]["message"]


async def test_broken_references_are_refused_and_deletes_in_use_conflict(hub: Hub) -> None:
    await load(hub, street("cab-07", LAMPS))
    status, body = await send(hub, "POST", "/policy/calendars", {"id": "xmas", "default_profile": "nope"})
    assert status == 422 and body["error"]["message"] == "calendars.1.default_profile: no profile 'nope'"
    status, body = await send(hub, "DELETE", "/policy/profiles/night")
    assert status == 409 and body["error"]["code"] == "policy_conflict"
    assert "calendars.0.default_profile: no profile 'night'" in body["error"]["message"]
    status, body = await send(hub, "POST", "/policy/lamps", {"id": "L-9", "street": "s-nowhere", "lat": 47,
                                                              "lon": 5, "rated_w": 60})
    assert status == 422 and "lamps.4.street: no street 's-nowhere'" in body["error"]["message"]
    status, body = await send(hub, "POST", "/policy/profiles", PROFILE)
    assert status == 409 and body["error"]["code"] == "exists"
    status, body = await send(hub, "PUT", "/policy/profiles/night", {**PROFILE, "id": "other"})
    assert status == 422 and body["error"]["message"].startswith("id: does not match")
    status, _ = await send(hub, "DELETE", "/policy/lamps/L-0004")
    assert status == 204
    status, _ = await send(hub, "GET", "/policy/lamps/L-0004", role="viewer")
    assert status == 404


@pytest.mark.parametrize(
    ("method", "path", "role", "expected"),
    [
        ("GET", "/policy/profiles", "viewer", 200),
        ("POST", "/policy/profiles", "operator", 403),
        ("POST", "/policy/profiles", "viewer", 403),
        ("PUT", "/policy/zones/z", "operator", 403),
        ("DELETE", "/policy/calendars/default", "operator", 403),
        ("POST", "/policy/overrides", "viewer", 403),
        ("POST", "/policy/crisis", "viewer", 403),
        ("DELETE", "/policy/crisis/c", "viewer", 403),
        ("GET", "/policy/energy", "viewer", 409),
    ],
)
async def test_roles(hub: Hub, method: str, path: str, role: str, expected: int) -> None:
    status, body = await send(hub, method, path, {}, role=role)
    assert status == expected, body
    r = await hub.client.request(method, "/api/v1" + path, json={})
    assert r.status == 401


async def test_override_wins_then_clearing_returns_to_the_programme(hub: Hub) -> None:
    await load(hub, street("cab-07", LAMPS))
    status, ov = await send(hub, "POST", "/policy/overrides",
                            {"target": {"kind": "lamp", "id": "L-0003"}, "level": 5, "duration_s": 600,
                             "reason": "works"}, role="operator")
    assert status == 201 and ov["expiry_ms"] == at(22, 10) and ov["id"].startswith("ov-")
    status, ex = await send(hub, "GET", "/policy/lamps/L-0003/explain", role="viewer")
    # 5% is under the P3 class minimum (20%) while the schedule has the lamp on
    assert (ex["level"], ex["source"]) == (20, "override")
    status, later = await send(hub, "GET", f"/policy/lamps/L-0003/explain?at={at(22, 10)}", role="viewer")
    assert (later["level"], later["source"]) == (100, "schedule")  # expired
    status, body = await send(hub, "POST", "/policy/overrides",
                              {"target": {"kind": "zone", "id": "s-missing"}, "level": 5}, role="operator")
    assert status == 422 and body["error"]["message"] == "target.id: no zone 's-missing' with lamps"
    status, body = await send(hub, "POST", "/policy/overrides",
                              {"target": {"kind": "lamp", "id": "L-0003"}, "level": 101}, role="operator")
    assert status == 422 and body["error"]["message"].startswith("level: Input should be less than or equal to 100")
    status, _ = await send(hub, "DELETE", f"/policy/overrides/{ov['id']}", role="operator")
    assert status == 204
    status, ex = await send(hub, "GET", "/policy/lamps/L-0003/explain", role="viewer")
    assert (ex["level"], ex["source"]) == (100, "schedule")
    status, _ = await send(hub, "DELETE", f"/policy/overrides/{ov['id']}", role="operator")
    assert status == 404


async def test_crisis_lights_the_route_until_closed(hub: Hub) -> None:
    await load(hub, street("cab-07", LAMPS))
    clock = hub.app[POLICY].clock
    assert isinstance(clock, SimClock)
    clock.t = at(2, 0)  # schedule at 40%
    status, ex = await send(hub, "GET", "/policy/lamps/L-0001/explain", role="viewer")
    assert (ex["level"], ex["source"]) == (40, "schedule")
    status, cr = await send(hub, "POST", "/policy/crisis", {"name": "flood", "streets": ["s-rue"]}, role="operator")
    assert status == 201
    status, ex = await send(hub, "GET", "/policy/lamps/L-0001/explain", role="viewer")
    assert (ex["level"], ex["source"]) == (100, "crisis") and cr["id"] in ex["detail"]
    status, body = await send(hub, "POST", "/policy/crisis", {"streets": ["s-gone"]}, role="operator")
    assert status == 422 and body["error"]["message"] == "crises.1.streets.0: no street 's-gone'"
    clock.t = at(2, 30)
    status, closed = await send(hub, "DELETE", f"/policy/crisis/{cr['id']}", role="operator")
    assert status == 200 and closed["end_ms"] == at(2, 30)
    status, ex = await send(hub, "GET", "/policy/lamps/L-0001/explain", role="viewer")
    assert (ex["level"], ex["source"]) == (40, "schedule")
    status, ex = await send(hub, "GET", f"/policy/lamps/L-0001/explain?at={at(2, 15)}", role="viewer")
    assert ex["source"] == "crisis"  # history kept
    status, _ = await send(hub, "DELETE", f"/policy/crisis/{cr['id']}", role="operator")
    assert status == 409


async def test_energy_reports_kwh_baseline_and_saving(hub: Hub) -> None:
    await load(hub, street("cab-07", LAMPS))
    status, e = await send(hub, "GET", "/policy/energy?zone=s-rue&from=2026-11-18&to=2026-11-19", role="viewer")
    assert status == 200 and [n["night"] for n in e["nights"]] == ["2026-11-18", "2026-11-19"]
    one = e["nights"][0]
    # 4 lamps x 60 W x ~14 h of darkness at 100% is the baseline; the profile dims to 70/40%
    assert 4 * 0.06 * 13 < one["baseline_kwh"] < 4 * 0.06 * 15
    assert 0 < one["kwh"] < one["baseline_kwh"] and 20 < one["saving_pct"] < 50
    assert e["kwh"] == pytest.approx(sum(n["kwh"] for n in e["nights"]), abs=1e-3)
    status, city = await send(hub, "GET", "/policy/energy?from=2026-11-18", role="viewer")
    assert city["kwh"] == pytest.approx(one["kwh"], abs=1e-3)  # the street is the whole city
    status, body = await send(hub, "GET", "/policy/energy?zone=nope", role="viewer")
    assert status == 404
    status, body = await send(hub, "GET", "/policy/energy?from=18/11/2026", role="viewer")
    assert status == 400 and body["error"]["message"].startswith("from: expected a night's date")


async def test_explain_errors(hub: Hub) -> None:
    status, body = await send(hub, "GET", "/policy/lamps/L-0001/explain", role="viewer")
    assert status == 409 and body["error"]["code"] == "policy_incomplete"
    await load(hub, street("cab-07", LAMPS))
    status, body = await send(hub, "GET", "/policy/lamps/L-9999/explain", role="viewer")
    assert status == 404
    status, body = await send(hub, "GET", "/policy/lamps/L-0001/explain?at=yesterday", role="viewer")
    assert status == 400 and body["error"]["message"].startswith("at: expected ISO 8601")
    status, ex = await send(hub, "GET", "/policy/lamps/L-0001/explain?at=2026-11-18T12:00:00Z", role="viewer")
    assert (ex["level"], ex["source"]) == (0, "schedule")  # daytime


async def test_the_policy_survives_a_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = _settings(tmp_path, mosquitto)
    first = await start_policy_hub(settings, SimClock(at(22, 0)))
    try:
        await load(first, street("cab-07", LAMPS))
        status, _ = await send(first, "POST", "/policy/lamps", {"id": "L-0005", "street": "s-rue", "lat": 47.32,
                                                                 "lon": 5.05, "rated_w": 60, "sensors": ["PIR-5"]})
        assert status == 201
    finally:
        await first.client.close()
    second = await start_policy_hub(settings, SimClock(at(23, 30)))
    try:
        status, body = await send(second, "GET", "/policy", role="viewer")
        assert body["running"] is True and body["counts"]["lamps"] == 5
        status, lamp = await send(second, "GET", "/policy/lamps/L-0005", role="viewer")
        assert lamp["sensors"] == ["PIR-5"]
        status, ex = await send(second, "GET", "/policy/lamps/L-0005/explain", role="viewer")
        assert (ex["level"], ex["source"]) == (70, "schedule")
    finally:
        await second.client.close()
