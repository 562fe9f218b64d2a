"""End to end: simulated cabinet -> edge -> Mosquitto -> hub -> REST, and commands back down.

Every part is real: the pymodbus-based cabinet simulator over TCP (and RTU over a pty), the
edge daemon with its driver, a private Mosquitto, the hub on a SQLite file, its REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import Mosquitto
from hubtest import Hub, _settings, eventually, start_hub

import wire
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.modbus import CabinetSim

GW = "cab-07"
LAMPS = 4
WRITE_FCS = {5, 6, 15, 16}  # write coil(s) / register(s)


def edge_yaml(mqtt_port: int, data_dir: Path, socket: Path, bus: str) -> str:
    lamps = "\n".join(
        f"  - {{id: L-{n + 1:04d}, bus: cab, unit: 1, template: lamp, address_offset: {10 * n}}}"
        for n in range(LAMPS)
    )
    return f"""
gateway: {{id: {GW}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive_s: 5, reconnect_max_s: 1}}
data_dir: {data_dir}
control_socket: {socket}
publish: {{max_delay_ms: 20, full_report_s: 60}}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.2}}
      - {{id: actual_level, register: input, address: 100, type: u16, unit: "%", interval_s: 0.2}}
      - {{id: power, register: input, address: 101, type: u16, scale: 0.1, unit: W, interval_s: 0.2}}
      - {{id: energy, register: input, address: 102, type: u32, unit: Wh, interval_s: 1}}
      - {{id: lamp_failure, register: discrete, address: 100, type: bool, interval_s: 0.2, alarm: lamp_failure}}
buses:
  - {bus}
devices:
  - id: CAB-07
    bus: cab
    unit: 1
    kind: cabinet
    points:
      - {{id: door_open, register: discrete, address: 0, type: bool, interval_s: 0.2, alarm: door_open}}
      - {{id: contactor, register: coil, address: 0, type: bool, writable: true, interval_s: 0.2}}
      - {{id: supply_voltage, register: input, address: 0, type: u16, scale: 0.1, unit: V, interval_s: 0.2}}
{lamps}
"""


@dataclass
class City:
    sim: CabinetSim
    hub: Hub
    edge: Edge
    broker: Mosquitto
    config_path: Path

    async def point(self, device: str, point: str) -> dict[str, Any]:
        status, body = await self.hub.get(f"/devices/{device}/points")
        assert status == 200, body
        return next((p for p in body["items"] if p["id"] == point), {})

    async def wait_point(self, device: str, point: str, **expected: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal found
            try:
                found = await self.point(device, point)
            except AssertionError:
                return False
            return all(found.get(k) == v for k, v in expected.items())

        try:
            await eventually(check, 15)
        except AssertionError:
            raise AssertionError(f"{device}.{point} never became {expected}; last seen {found}") from None
        return found


@contextlib.asynccontextmanager
async def running_city(tmp_path: Path, broker: Mosquitto, sim: CabinetSim, bus: str) -> AsyncIterator[City]:
    hub = await start_hub(_settings(tmp_path, broker))
    sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))  # AF_UNIX paths are short
    path = tmp_path / "edge.yaml"
    path.write_text(edge_yaml(broker.port, tmp_path / "edge", sock_dir / "edge.sock", bus))
    edge = Edge(edge_config.load(path))
    task = asyncio.create_task(edge.run())
    try:
        yield City(sim, hub, edge, broker, path)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hub.client.close()


@pytest.fixture
async def city(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[City]:
    async with CabinetSim(lamps=LAMPS, port=0) as sim:
        bus = f"{{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {sim.tcp_port}, timeout_s: 0.3, retries: 0, max_gap: 9}}"
        async with running_city(tmp_path, mosquitto, sim, bus) as c:
            yield c


async def test_simulator_values_reach_rest_with_units_and_timestamps(city: City) -> None:
    before_ms = int(time.time() * 1000) - 1000
    level = await city.wait_point("L-0002", "level", value=100, quality="good")
    assert level["unit"] == "%"
    assert before_ms <= level["ts_ms"] <= int(time.time() * 1000)
    power = await city.wait_point("L-0002", "power", value=60.0)
    assert power["unit"] == "W"
    volts = await city.wait_point("CAB-07", "supply_voltage", quality="good")
    assert volts["unit"] == "V" and 220 <= volts["value"] <= 240
    status, gw = await city.hub.get(f"/gateways/{GW}")
    assert status == 200 and gw["online"] is True
    status, devices = await city.hub.get("/devices", gateway=GW)
    assert sorted(d["id"] for d in devices["items"]) == ["CAB-07", "L-0001", "L-0002", "L-0003", "L-0004"]
    # History is queryable too.
    status, hist = await city.hub.get("/telemetry", device="L-0002", point="level")
    assert status == 200 and hist["items"] and hist["items"][0]["value"] == 100


async def test_rest_command_changes_the_register_and_is_acknowledged(city: City) -> None:
    await city.wait_point("L-0003", "level", value=100)
    status, cmd = await city.hub.post("/commands", {"device": "L-0003", "point": "level", "value": 40})
    assert status == 202 and cmd["status"] == "pending"

    async def acked() -> bool:
        _, c = await city.hub.get(f"/commands/{cmd['id']}")
        return bool(c["status"] != "pending")

    await eventually(acked, 10)
    _, done = await city.hub.get(f"/commands/{cmd['id']}")
    assert done["status"] == "acknowledged", done
    assert done["value"] == 40
    assert city.sim.setpoint(2) == 40 and city.sim.level(2) == 40
    await city.wait_point("L-0003", "level", value=40)
    await city.wait_point("L-0003", "power", value=24.0)
    assert city.sim.setpoint(1) == 100  # the neighbour is untouched


async def test_relinquish_of_a_modbus_point_fails_with_a_clear_detail(city: City) -> None:
    await city.wait_point("L-0003", "level", value=100)
    status, cmd = await city.hub.post(
        "/commands", {"device": "L-0003", "point": "level", "action": "relinquish"}
    )
    assert status == 202 and cmd["action"] == "relinquish", cmd

    async def acked() -> bool:
        _, c = await city.hub.get(f"/commands/{cmd['id']}")
        return bool(c["status"] != "pending")

    await eventually(acked, 10)
    _, done = await city.hub.get(f"/commands/{cmd['id']}")
    assert (done["status"], done["detail"]) == ("failed", "DriverError: modbus points cannot be relinquished")
    assert city.sim.setpoint(2) == 100


async def _send_raw_commands(city: City, commands: list[wire.Command]) -> dict[str, wire.Ack]:
    """Publish commands straight to the gateway's cmd topic, as a hub would; collect the acks."""
    topics = wire.Topics()
    acks: dict[str, wire.Ack] = {}
    async with aiomqtt.Client(
        city.broker.host, city.broker.port, identifier=f"t-{uuid.uuid4().hex[:6]}"
    ) as c:
        await c.subscribe(topics.gateway(GW, wire.Kind.ACK), qos=1)
        for cmd in commands:
            await c.publish(topics.gateway(GW, wire.Kind.CMD), wire.encode_command(cmd), qos=1)

        async def collect() -> None:
            async for m in c.messages:
                ack = wire.decode_ack(bytes(m.payload))  # type: ignore[arg-type]
                acks[ack.id] = ack
                if len(acks) == len(commands):
                    return

        await asyncio.wait_for(collect(), 10)
    return acks


async def test_bad_commands_are_rejected_precisely_and_reach_no_register(city: City) -> None:
    await city.wait_point("L-0001", "level", value=100)
    far = int(time.time() * 1000) + 30_000
    cmds = [
        wire.Command("c-nodev", "L-9999", "level", 10, far),
        wire.Command("c-nopoint", "L-0001", "brightness", 10, far),
        wire.Command("c-readonly", "L-0001", "actual_level", 10, far),
        wire.Command("c-range", "L-0001", "level", 150, far),
        wire.Command("c-type", "L-0001", "level", True, far),
        wire.Command("c-frac", "L-0001", "level", 40.5, far),
        wire.Command("c-expired", "L-0001", "level", 10, int(time.time() * 1000) - 1),
    ]
    city.sim.reset_counters()
    acks = await _send_raw_commands(city, cmds)
    got = {k: (a.status.value, a.detail) for k, a in acks.items()}
    assert got["c-nodev"] == ("rejected", f"unknown device 'L-9999' on gateway {GW}")
    assert got["c-nopoint"] == (
        "rejected",
        "device 'L-0001' has no point 'brightness' (points: actual_level, energy, lamp_failure, level, power)",
    )
    assert got["c-readonly"] == ("rejected", "point 'actual_level' is read-only")
    assert got["c-range"] == ("rejected", "value 150 is out of range [0, 100] for point 'level'")
    assert got["c-type"] == ("rejected", "point 'level' takes a number, got True")
    assert got["c-frac"] == ("rejected", "point 'level' takes a whole number, got 40.5")
    assert got["c-expired"][0] == "expired"
    assert not [r for r in city.sim.request_log if r[0] in WRITE_FCS], "a rejected command reached the bus"
    assert city.sim.setpoint(0) == 100
    # The daemon keeps running and takes the next good command; a repeated id is not re-applied.
    acks = await _send_raw_commands(city, [wire.Command("c-good", "L-0001", "level", 70, far)])
    assert acks["c-good"].status is wire.AckStatus.OK and acks["c-good"].value == 70
    assert city.sim.setpoint(0) == 70
    city.sim.cabinet.lamps[0].setpoint = 55  # someone changed it locally since
    topics = wire.Topics()
    async with aiomqtt.Client(city.broker.host, city.broker.port) as c:
        cmd = wire.Command("c-good", "L-0001", "level", 70, far)
        await c.publish(topics.gateway(GW, wire.Kind.CMD), wire.encode_command(cmd), qos=1)
    await eventually(lambda: _async_true(city.edge.counters.commands_duplicate == 1), 5)
    assert city.sim.setpoint(0) == 55


async def _async_true(value: bool) -> bool:
    return value


async def test_device_that_stops_answering_goes_comm_error_and_recovers(city: City) -> None:
    await city.wait_point("L-0004", "level", value=100, quality="good")
    city.sim.set_fault("no_answer")
    bad = await city.wait_point("L-0004", "level", quality="comm_error")
    assert bad["value"] in (None, 100)  # the last good value may be kept, flagged by quality
    await city.wait_point("CAB-07", "supply_voltage", quality="comm_error")
    status = await city.edge.op_status({})
    assert {d["id"]: d["health"] for d in status["devices"]}["L-0004"] == "comm_error"
    city.sim.set_fault("none")
    await city.wait_point("L-0004", "level", value=100, quality="good")

    async def all_ok() -> bool:
        status = await city.edge.op_status({})
        return all(d["health"] == "ok" for d in status["devices"])

    await eventually(all_ok, 10)
    status = await city.edge.op_status({})
    assert status["tasks"]["poller-cab"]["restarts"] == 0


async def test_exception_answers_mark_device_error(city: City) -> None:
    await city.wait_point("L-0001", "power", quality="good")
    city.sim.set_fault("exception", code=4)
    await city.wait_point("L-0001", "power", quality="device_error")
    city.sim.set_fault("none")
    await city.wait_point("L-0001", "power", quality="good")


async def test_lamp_failure_and_door_raise_and_clear_alarm_events(city: City) -> None:
    await city.wait_point("L-0002", "lamp_failure", value=False)
    city.sim.fail_lamp(1)
    city.sim.set_door(True)
    await city.wait_point("L-0002", "lamp_failure", value=True)
    await city.wait_point("L-0002", "power", value=0.0)
    await city.wait_point("CAB-07", "door_open", value=True)

    async def events() -> list[tuple[str, str, bool, str]]:
        _, body = await city.hub.get("/events")
        return sorted((e["device"], e["kind"], e["active"], e["severity"]) for e in body["items"])

    async def raised() -> bool:
        return await events() == [
            ("CAB-07", "door_open", True, "alarm"),
            ("L-0002", "lamp_failure", True, "alarm"),
        ]

    await eventually(raised, 10)
    city.sim.repair_lamp(1)

    async def cleared() -> bool:
        return ("L-0002", "lamp_failure", False, "alarm") in await events()

    await eventually(cleared, 10)
    _, body = await city.hub.get("/events", device="L-0002")
    assert body["items"][0]["gateway"] == GW and body["items"][0]["point"] == "lamp_failure"


async def test_technician_cli_shows_uplink_health_and_live_values(city: City) -> None:
    await city.wait_point("L-0002", "level", value=100)
    sock = str(city.edge.config.socket_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge", *args, "--socket", sock],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    status = await asyncio.to_thread(cli, "status")
    assert status.returncode == 0, status.stderr
    assert f"gateway   {GW}" in status.stdout
    assert f"uplink    connected to 127.0.0.1:{city.broker.port}; hub online" in status.stdout
    assert re.search(r"^buffer    \d+ messages on disk, live", status.stdout, re.M), status.stdout
    assert "plan      none (the hub has not sent one yet)" in status.stdout
    assert any(line.split()[:4] == ["L-0002", "cab", "lamp", "ok"] for line in status.stdout.splitlines())
    points = await asyncio.to_thread(cli, "points", "--device", "L-0002")
    assert points.returncode == 0, points.stderr
    rows = {line.split()[1]: line.split() for line in points.stdout.splitlines()[1:]}
    assert rows["level"][2:5] == ["100", "%", "good"]
    assert rows["power"][2:5] == ["60", "W", "good"]
    missing = await asyncio.to_thread(
        lambda: subprocess.run(
            [sys.executable, "-m", "edge", "status", "--socket", "/tmp/nothing-here.sock"],
            capture_output=True,
            text=True,
            env=env,
        )
    )
    assert missing.returncode == 3 and "no daemon answers on /tmp/nothing-here.sock" in missing.stderr


async def test_broker_restart_is_survived_by_edge_and_hub(city: City) -> None:
    await city.wait_point("L-0001", "level", value=100)
    city.broker.stop()
    await asyncio.sleep(1.0)
    city.broker.start()  # same port
    await eventually(lambda: _async_true(city.edge.uplink.connected), 15)
    city.sim.cabinet.lamps[0].setpoint = 33  # a change made while the link was down
    await city.wait_point("L-0001", "level", value=33)


async def test_modbus_rtu_over_a_pty_end_to_end(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with CabinetSim(lamps=LAMPS, rtu_pty=True, baudrate=38400) as sim:
        bus = (
            "{id: cab, driver: modbus, transport: rtu, serial_port: "
            f"{sim.client_path}, baudrate: 38400, parity: N, timeout_s: 0.5, max_gap: 9}}"
        )
        async with running_city(tmp_path, mosquitto, sim, bus) as c:
            await c.wait_point("L-0004", "power", value=60.0, quality="good")
            status, cmd = await c.hub.post("/commands", {"device": "L-0004", "point": "level", "value": 25})
            assert status == 202

            async def acked() -> bool:
                _, body = await c.hub.get(f"/commands/{cmd['id']}")
                return bool(body["status"] == "acknowledged")

            await eventually(acked, 10)
            assert sim.setpoint(3) == 25
