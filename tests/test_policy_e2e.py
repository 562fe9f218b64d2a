"""End to end: the lighting policy on a real hub and a real edge over Mosquitto, lamps on the
Modbus cabinet simulator, a simulated night (the same injected clock on both sides).

- the hub publishes a retained plan; the edge runs it; hub and edge agree on every lamp's level
  at each step of the night, and the cabinet's registers follow;
- with the hub (and then the broker) gone, the edge alone follows the rest of the night;
- a presence sensor on the edge's bus lights its lamp and the neighbours through the edge alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import Mosquitto
from hubtest import Hub, _settings, eventually
from policytest import SimClock, at, load, send, start_policy_hub, street

import wire
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.modbus import CabinetSim
from hub.policy import POLICY
from hub.policy import PolicyRunner as HubRunner
from rules import command_level

GW = "cab-07"
LAMPS = ["L-0001", "L-0002", "L-0003", "L-0004"]
SENSOR_COIL = 1  # scratch coil 1001: the PIR at L-0002


def edge_yaml(mqtt_port: int, data_dir: Path, socket: Path, sim_port: int) -> str:
    lamps = "\n".join(
        f"  - {{id: {lid}, bus: cab, unit: 1, template: lamp, address_offset: {10 * n}}}"
        for n, lid in enumerate(LAMPS)
    )
    return f"""
gateway: {{id: {GW}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive_s: 5, reconnect_max_s: 1}}
data_dir: {data_dir}
control_socket: {socket}
publish: {{max_delay_ms: 10, full_report_s: 60}}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.5}}
buses:
  - {{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {sim_port}, timeout_s: 0.5, retries: 0}}
devices:
  - id: PIR-2
    bus: cab
    unit: 1
    kind: sensor
    points:
      - {{id: presence, register: coil, address: {1000 + SENSOR_COIL}, type: bool, interval_s: 0.05, alarm: presence}}
{lamps}
"""


@dataclass
class Night:
    sim: CabinetSim
    hub: Hub | None
    edge: Edge
    clock: SimClock
    broker: Mosquitto
    edge_task: asyncio.Task[None]

    @property
    def runner(self) -> HubRunner:
        assert self.hub is not None
        return self.hub.app[POLICY]

    def registers(self) -> dict[str, int]:
        return {lid: self.sim.cabinet.lamps[n].setpoint for n, lid in enumerate(LAMPS)}

    def advance(self, t_ms: int) -> None:
        self.clock.t = t_ms
        if self.hub is not None:
            self.runner.poke()
        self.edge.plan.poke()

    async def wait_registers(self, expected: dict[str, int], timeout: float = 15) -> None:
        async def check() -> bool:
            return self.registers() == expected

        try:
            await eventually(check, timeout)
        except AssertionError:
            raise AssertionError(f"registers {self.registers()} never became {expected}") from None

    async def wait_hub_settled(self, level: int) -> None:
        """Until the hub's own commands for this step are all out and applied (one that failed,
        e.g. before the birth was registered, is re-sent and could land after a later write)."""
        runner, hub = self.runner, self.hub
        assert hub is not None

        async def settled() -> bool:
            if runner.sent != dict.fromkeys(LAMPS, level) or any(s.pending for s in runner._senders.values()):
                return False
            _, cmds = await send(hub, "GET", "/commands?status=pending", role="viewer")
            return not cmds["items"]

        await eventually(settled, 15)

    async def stop_edge(self) -> None:
        self.edge_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.edge_task

    async def stop_hub(self) -> None:
        if self.hub is not None:
            await self.hub.client.close()
            self.hub = None


@contextlib.asynccontextmanager
async def _simulator() -> AsyncIterator[CabinetSim]:
    sim = CabinetSim(lamps=len(LAMPS), port=0)
    await sim.__aenter__()
    try:
        yield sim
    finally:
        # pymodbus's server shutdown sometimes never returns after a client was cancelled in the
        # middle of a request (seen when these tests run after others in one process); bound it
        # so a test run cannot hang (the port is freed when the process ends).
        # (a task, not asyncio.timeout: the shutdown swallows the cancellation)
        closing = asyncio.create_task(sim.__aexit__(None, None, None))
        done, _ = await asyncio.wait({closing}, timeout=5)
        if not done:
            logging.getLogger(__name__).warning("modbus simulator shutdown did not finish in 5 s")


@contextlib.asynccontextmanager
async def night(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Night]:
    clock = SimClock(at(16, 0))
    async with _simulator() as sim:
        for lamp in sim.cabinet.lamps:
            lamp.setpoint = 55  # a level no step of the night has: every change is visible
        hub = await start_policy_hub(_settings(tmp_path, broker), clock)
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
        path = tmp_path / "edge.yaml"
        path.write_text(edge_yaml(broker.port, tmp_path / "edge", sock_dir / "edge.sock", sim.tcp_port))
        edge = Edge(edge_config.load(path))
        edge.plan.clock = clock
        task = asyncio.create_task(edge.run())
        n = Night(sim, hub, edge, clock, broker, task)
        try:
            writes = street(GW, LAMPS)
            writes[-3] = ("lamps", {**writes[-3][1], "sensors": ["PIR-2"]})  # L-0002
            await load(hub, writes)
            runner = n.runner

            async def plan_arrived() -> bool:
                return edge.plan.version is not None and edge.plan.version == runner.plan_versions.get(GW)

            await eventually(plan_arrived, 15)
            yield n
        finally:
            await n.stop_edge()
            await n.stop_hub()


@pytest.fixture
async def city(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Night]:
    async with night(tmp_path, mosquitto) as n:
        yield n


STEPS = [  # (wall time on the night of 2026-11-18 in Dijon, level)
    ((16, 0), 0),  # day
    ((18, 0), 100),  # dusk-10 is ~17:25
    ((23, 30), 70),
    ((2, 0), 40),
    ((6, 0), 70),
    ((9, 0), 0),  # dawn+10 is ~08:00
]


async def test_hub_and_edge_agree_on_every_lamp_over_the_night(city: Night) -> None:
    runner = city.runner
    for (hh, mm), level in STEPS:
        city.advance(at(hh, mm))
        expected = dict.fromkeys(LAMPS, level)
        await city.wait_registers(expected)

        async def both_decided(expected: dict[str, int] = expected) -> bool:
            return runner.sent == expected and city.edge.plan.applied == expected

        await eventually(both_decided, 15)
        hub_levels = {k: command_level(d.level) for k, d in runner.decisions.items()}
        edge_levels = {k: command_level(d.level) for k, d in city.edge.plan.decisions.items()}
        assert hub_levels == edge_levels == expected, (hh, mm)
        assert {d.source for d in city.edge.plan.decisions.values()} == {"schedule"}
    # the hub recorded why, and its commands were acknowledged by the edge
    _, ex = await send(city.hub, "GET", "/policy/lamps/L-0003/explain", role="viewer")  # type: ignore[arg-type]
    assert (ex["level"], ex["source"], ex["last_commanded"]) == (0, "schedule", 0)
    _, cmds = await send(city.hub, "GET", "/commands?device=L-0003", role="viewer")  # type: ignore[arg-type]
    assert cmds["items"] and {c["source"] for c in cmds["items"]} == {"policy"}
    assert "acknowledged" in {c["status"] for c in cmds["items"]}


async def test_an_override_reaches_the_edge_in_its_plan(city: Night) -> None:
    city.advance(at(23, 30))
    await city.wait_registers(dict.fromkeys(LAMPS, 70))
    assert city.hub is not None
    status, ov = await send(city.hub, "POST", "/policy/overrides",
                            {"target": {"kind": "lamp", "id": "L-0004"}, "level": 90}, role="operator")
    assert status == 201
    await city.wait_registers({**dict.fromkeys(LAMPS, 70), "L-0004": 90})

    async def edge_has_it() -> bool:
        return city.edge.plan.plan is not None and [o.id for o in city.edge.plan.plan.overrides] == [ov["id"]]

    await eventually(edge_has_it, 10)
    await city.stop_hub()
    city.advance(at(2, 0))  # the edge alone: the override still wins, the others dim
    await city.wait_registers({**dict.fromkeys(LAMPS, 40), "L-0004": 90})


async def test_with_the_hub_and_the_broker_gone_the_edge_follows_the_night(city: Night) -> None:
    city.advance(at(22, 0))
    await city.wait_registers(dict.fromkeys(LAMPS, 100))
    await city.stop_hub()
    city.broker.stop()
    for (hh, mm), level in STEPS[2:]:
        city.advance(at(hh, mm))
        await city.wait_registers(dict.fromkeys(LAMPS, level))
    assert city.edge.plan.path.is_file()  # the plan survives an edge restart too
    # The network comes back before the test ends: stopping an edge whose uplink is in the middle
    # of connecting to a dead broker can hang inside aiomqtt's connect (wait_for on 3.11).
    city.broker.start()

    async def reconnected() -> bool:
        return city.edge.uplink.connected

    await eventually(reconnected, 15)


async def test_presence_lights_the_neighbours_through_the_edge_alone(city: Night) -> None:
    city.advance(at(2, 0))
    await city.wait_registers(dict.fromkeys(LAMPS, 40))
    await city.stop_hub()  # no hub: only the edge can react
    applied: dict[str, float] = {}
    city.edge.plan.on_apply.append(lambda target, level: applied.setdefault(target, time.perf_counter()))
    city.sim.cabinet.coil_scratch[SENSOR_COIL] = True  # someone walks under L-0002
    # its lamp and one lamp on each side (reach_lamps: 1) go to 100; L-0004 stays on schedule
    await city.wait_registers({"L-0001": 100, "L-0002": 100, "L-0003": 100, "L-0004": 40}, timeout=5)

    async def written_by_the_edge() -> bool:  # the plan saw its writes acknowledged by the bus
        return set(applied) == {"L-0001", "L-0002", "L-0003"}

    await eventually(written_by_the_edge, 5)
    decisions = city.edge.plan.decisions
    assert decisions["L-0002"].source == "presence" and decisions["L-0004"].source == "schedule"
    # the hold (60 s) ends and the fade (10 s) brings them back to the schedule
    city.sim.cabinet.coil_scratch[SENSOR_COIL] = False
    city.advance(at(2, 2))
    await city.wait_registers(dict.fromkeys(LAMPS, 40))


async def test_presence_reaches_the_hub_which_agrees_with_the_edge(city: Night) -> None:
    city.advance(at(2, 0))
    await city.wait_registers(dict.fromkeys(LAMPS, 40))
    runner = city.runner
    city.sim.cabinet.coil_scratch[SENSOR_COIL] = True
    lit = {"L-0001": 100, "L-0002": 100, "L-0003": 100, "L-0004": 40}
    await city.wait_registers(lit, timeout=5)

    async def hub_agrees() -> bool:
        return runner.sent == lit and city.edge.plan.applied == lit

    await eventually(hub_agrees, 10)
    assert runner.decisions["L-0001"].source == "presence"


async def test_presence_the_hub_saw_elsewhere_keeps_lamps_here_raised(city: Night) -> None:
    """The hub lights neighbours on other gateways; this edge must not undo it as a stray write."""
    city.advance(at(2, 0))
    await city.wait_registers(dict.fromkeys(LAMPS, 40))
    await city.wait_hub_settled(40)
    runner = city.runner
    # presence at L-0004 that this edge's bus never saw (a sensor across a gateway boundary),
    # as the hub's ingest reports it to the runner
    runner.on_event("cab-08", wire.Event(seq=1, ts_ms=city.clock(), device="L-0004", kind="presence",
                                         active=True, severity="info", point="presence"))
    raised = {"L-0001": 40, "L-0002": 40, "L-0003": 100, "L-0004": 100}
    await city.wait_registers(raised, timeout=10)
    # several of the edge's verification rounds (every 2 s) later, the lamps are still raised
    await asyncio.sleep(3 * city.edge.plan.verify_s)
    assert city.registers() == raised and city.edge.plan.corrections == 0
    city.advance(at(2, 2))  # hold and fade over: the hub brings them back to the schedule
    await city.wait_registers(dict.fromkeys(LAMPS, 40))


async def test_an_operator_command_stands_until_the_plans_next_step(city: Night) -> None:
    """`POST /commands` on a lamp under a plan: the edge keeps it (does not undo it as a stray
    write) until the plan's next switch point, which then applies as usual."""
    city.advance(at(23, 30))
    await city.wait_registers(dict.fromkeys(LAMPS, 70))
    await city.wait_hub_settled(70)
    assert city.hub is not None
    status, _ = await send(city.hub, "POST", "/commands", {"device": "L-0002", "point": "level", "value": 30},
                           role="operator")
    assert status in (200, 201, 202)
    manual = {**dict.fromkeys(LAMPS, 70), "L-0002": 30}
    await city.wait_registers(manual, timeout=10)
    await asyncio.sleep(3 * city.edge.plan.verify_s)  # several verification rounds later
    assert city.registers() == manual and city.edge.plan.corrections == 0
    city.advance(at(2, 0))  # the next step of the night ends the manual level
    await city.wait_registers(dict.fromkeys(LAMPS, 40))


async def test_replayed_or_stale_presence_does_not_light_the_street_now(city: Night) -> None:
    """After an outage a gateway replays its buffer: a passer-by of an hour ago must not raise
    lamps now; a delayed live event holds only for what is left of its hold."""
    city.advance(at(2, 0))
    await city.wait_registers(dict.fromkeys(LAMPS, 40))
    await city.wait_hub_settled(40)
    runner = city.runner

    def event(ts_ms: int, historical: bool = False) -> wire.Event:
        return wire.Event(seq=1, ts_ms=ts_ms, device="L-0004", kind="presence", active=True,
                          severity="info", point="presence", historical=historical)

    runner.on_event("cab-08", event(city.clock(), historical=True))  # replayed from a buffer
    runner.on_event("cab-08", event(city.clock() - 3_600_000))  # seen an hour ago, arrived late
    await runner.evaluate()
    assert {d.source for d in runner.decisions.values()} == {"schedule"}
    runner.on_event("cab-08", event(city.clock() - 30_000))  # 30 s late: 30 s of the 60 s hold left
    await runner.evaluate()
    assert runner.decisions["L-0004"].source == "presence"
    city.advance(city.clock() + 40_000)  # 70 s after it was seen: the hold is over, fading
    await runner.evaluate()
    assert runner.decisions["L-0004"].level < 100
