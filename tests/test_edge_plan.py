"""The edge's plan runner without a bus: accepting, refusing, saving and reloading plans."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from rules_city import at, make_city

import wire
from edge.commands import CommandExecutor
from edge.outbox import Outbox, PendingEvent
from edge.plan import PLAN_FILE, PlanRunner
from edge.state import Counters
from rules import plan_for

CITY = make_city()
GW_B = [x.id for x in CITY.lamps if x.gateway == "gw-b"]


def _payload(gateway: str = "gw-b", **over: object) -> bytes:
    plan = plan_for(CITY, GW_B, "gw-b")
    fields = {"gateway": gateway, "version": plan.version, "ts_ms": 1, "plan": plan.to_wire(),
              "sensors": {"PIR-9": GW_B[0]}, **over}
    return wire.encode_plan(wire.PlanMessage(**fields))  # type: ignore[arg-type]


def _runner(tmp_path: Path) -> PlanRunner:
    counters = Counters()
    executor = CommandExecutor("gw-b", {}, {}, Outbox(100, counters), counters)
    return PlanRunner("gw-b", tmp_path, {}, executor)


def test_a_plan_is_saved_and_a_restarted_edge_runs_it(tmp_path: Path) -> None:
    first = _runner(tmp_path)
    first.on_plan(_payload())
    assert first.version is not None and (tmp_path / PLAN_FILE).is_file()
    fresh = _runner(tmp_path)
    fresh.load()  # what a new edge process does before any broker connection
    assert fresh.version == first.version and fresh.sensors == {"PIR-9": GW_B[0]}
    assert fresh.plan is not None
    t = at(dt.date(2026, 11, 18), 23, 30)
    assert fresh.plan.evaluator.evaluate_all(t) == CITY.evaluator.evaluate_all(t, lamp_ids=GW_B)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (_payload(gateway="gw-a"), "plan is for gateway 'gw-a', this is 'gw-b'"),
        (_payload(version="0" * 16), "differs from the plan's"),
        (b"\x93garbage", "payload is"),
    ],
)
def test_a_bad_plan_is_refused_and_the_old_one_kept(tmp_path: Path, payload: bytes, why: str) -> None:
    r = _runner(tmp_path)
    r.on_plan(_payload())
    good = r.version
    saved = (tmp_path / PLAN_FILE).read_bytes()
    r.on_plan(payload)
    assert r.version == good and r.plans_refused == 1 and why in r.last_error
    assert (tmp_path / PLAN_FILE).read_bytes() == saved


def test_presence_from_a_sensor_raises_its_lamp_and_neighbours(tmp_path: Path) -> None:
    r = _runner(tmp_path)
    r.on_plan(_payload())
    assert r.plan is not None
    street = r.plan.lamp_by_id[GW_B[0]].street
    r.clock = lambda: at(dt.date(2026, 11, 18), 23, 30)
    r.on_event(PendingEvent(ts_ms=0, device="PIR-9", kind="presence", active=True, severity="info",
                            point="presence", detail=""))
    lit = r.presence.active_lamps(r.clock())
    assert GW_B[0] in lit and len(lit) > 1
    assert all(r.plan.lamp_by_id[x].street == street for x in lit)
    r.on_event(PendingEvent(ts_ms=0, device="PIR-unknown", kind="presence", active=True, severity="info",
                            point="presence", detail=""))
    assert r.presence.active_lamps(r.clock()) == lit
