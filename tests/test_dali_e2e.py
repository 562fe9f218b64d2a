"""End to end over DALI: bus simulator on a pty -> edge (python-dali LUBA driver) -> Mosquitto -> hub -> REST."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest
from broker import Mosquitto
from hubtest import _settings, eventually, start_hub

from drivers.dali import arc_to_percent
from edge import config as edge_config
from edge.cli import _print_status
from edge.daemon import Edge
from firmware_sim.dali import FADE_TIMES_S, DaliBusSim

GW = "cab-dali"
LAMPS = 4


def edge_yaml(mqtt_port: int, data_dir: Path, socket: Path, serial_port: str) -> str:
    lamps = "\n".join(
        f"  - {{id: D-{n:02d}, bus: dali1, address: {n}, template: lamp}}" for n in range(LAMPS)
    )
    # polled once a minute: a presence event at the hub within seconds came from the event frame
    lamps += "\n  - {id: PIR-1, bus: dali1, kind: sensor, sensor_address: 1, points: [{id: presence, interval_s: 60}]}"
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
      - {{id: level, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.2}}
      - {{id: actual_level, unit: "%", interval_s: 0.2}}
      - {{id: lamp_failure, interval_s: 0.2, alarm: lamp_failure}}
buses:
  - {{id: dali1, driver: dali, interface: luba232, serial_port: {serial_port}}}
devices:
{lamps}
"""


async def test_rest_sets_a_dali_lamp_to_40_percent_lamp_failure_raises_an_alarm_sensor_reports_presence(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    async with DaliBusSim(lamps=LAMPS, sensors=2, timing=0, fade_time=1) as sim:
        hub = await start_hub(_settings(tmp_path, mosquitto))
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))  # AF_UNIX paths are short
        path = tmp_path / "edge.yaml"
        path.write_text(edge_yaml(mosquitto.port, tmp_path / "edge", sock_dir / "edge.sock", sim.path))
        edge = Edge(edge_config.load(path))
        task = asyncio.create_task(edge.run())
        try:

            async def point(device: str, name: str) -> dict[str, object]:
                status, body = await hub.get(f"/devices/{device}/points")
                if status != 200:
                    return {}
                return next((p for p in body["items"] if p["id"] == name), {})

            async def has(device: str, name: str, **expected: object) -> bool:
                found = await point(device, name)
                return all(found.get(k) == v for k, v in expected.items())

            await eventually(lambda: has("D-02", "level", value=100.0, quality="good"), 15)
            status, cmd = await hub.post("/commands", {"device": "D-02", "point": "level", "value": 40})
            assert status == 202, cmd

            async def acked() -> bool:
                _, body = await hub.get(f"/commands/{cmd['id']}")
                return bool(body["status"] != "pending")

            await eventually(acked, 10)
            _, done = await hub.get(f"/commands/{cmd['id']}")
            assert done["status"] == "acknowledged", done
            assert done["value"] == 40
            assert "39.5219" in done["detail"], done  # 40 % on the log curve is arc 220
            assert sim.fading(2)
            await asyncio.sleep(FADE_TIMES_S[1])
            assert sim.level(2) == 220
            await eventually(lambda: has("D-02", "actual_level", value=arc_to_percent(220)), 10)
            assert sim.level(1) == 254  # the neighbour is untouched

            sim.fail_lamp(3)
            await eventually(lambda: has("D-03", "lamp_failure", value=True), 10)

            async def alarm(active: bool) -> bool:
                _, body = await hub.get("/events", device="D-03")
                return any(e["kind"] == "lamp_failure" and e["active"] is active for e in body["items"])

            await eventually(lambda: alarm(True), 10)
            sim.repair_lamp(3)
            await eventually(lambda: alarm(False), 10)

            async def presence() -> list[dict[str, object]]:
                _, body = await hub.get("/events", device="PIR-1")
                return [e for e in body["items"] if e["kind"] == "presence"]

            await eventually(lambda: has("PIR-1", "presence", quality="stale"), 10)
            t0 = time.monotonic()
            sim.occupancy(1)
            await eventually(lambda: _nonempty(presence()), 10)
            assert time.monotonic() - t0 < 5  # immediately, not at the next poll (60 s)
            (event,) = await presence()
            assert event["active"] is True and event["point"] == "presence", event
            await eventually(lambda: has("PIR-1", "presence", value=True, quality="good"), 10)
            sim.occupancy(1, occupied=False)

            async def vacant() -> bool:
                return any(e["active"] is False for e in await presence())

            await eventually(vacant, 10)

            # the bus budget in `citynerve-edge status`
            (bus,) = (await edge.op_status({}))["buses"]
            assert bus["pushed"] == 2
            budget = bus["budget"]
            # the simulator runs with timing=0 here, so the bus is "faster" than 1200 bit/s:
            # test_driver_budget_at_real_timing checks the figures against the real timing
            assert budget["frames_per_s"] > 0 and 25 <= budget["max_frames_per_s"] <= 30, budget
            assert budget["events_per_s"] > 0 and budget["queries_per_s"] > 0, budget
            assert budget["utilisation"] > 0, budget
            _print_status(await edge.op_status({}))
            out = capsys.readouterr().out
            assert "BUS BUDGET" in out
            assert re.search(r"dali1 +dali +running .* [0-9.]+/[0-9.]+ frames/s \([0-9]+%\)", out), out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.client.close()


async def _nonempty(items: Awaitable[list[dict[str, object]]]) -> bool:
    return bool(await items)


def alarms_yaml(mqtt_port: int, data_dir: Path, socket: Path, serial_port: str) -> str:
    # the fault points say nothing about alarms: on DALI they are alarms by default
    lamps = "\n".join(
        f"  - {{id: D-{n:02d}, bus: dali1, address: {n}, template: lamp}}" for n in range(LAMPS)
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
      - {{id: level, unit: "%", writable: true, interval_s: 0.2}}
      - {{id: gear_failure, interval_s: 0.2}}
      - {{id: power_failure, interval_s: 0.2}}
buses:
  - {{id: dali1, driver: dali, serial_port: {serial_port}}}
devices:
{lamps}
  - id: street
    bus: dali1
    broadcast: true
    points:
      - {{id: level, unit: "%", writable: true}}
      - {{id: missing_short_address, interval_s: 0.2}}
"""


async def test_gear_failure_power_failure_and_a_replaced_lamp_are_alarms_at_the_hub(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with DaliBusSim(lamps=LAMPS, timing=0) as sim:
        hub = await start_hub(_settings(tmp_path, mosquitto))
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
        path = tmp_path / "edge.yaml"
        path.write_text(alarms_yaml(mosquitto.port, tmp_path / "edge", sock_dir / "edge.sock", sim.path))
        edge = Edge(edge_config.load(path))
        task = asyncio.create_task(edge.run())
        try:

            async def events(device: str, kind: str) -> list[dict[str, object]]:
                _, body = await hub.get("/events", device=device)
                return [e for e in body["items"] if e["kind"] == kind]

            async def seen(device: str, kind: str, active: bool) -> bool:
                return any(e["active"] is active for e in await events(device, kind))

            # power-up: every gear reports "power cycle seen" until it gets a level command
            for n in range(LAMPS):
                await eventually(lambda n=n: seen(f"D-{n:02d}", "power_failure", True), 15)
            status, cmd = await hub.post("/commands", {"device": "street", "point": "level", "value": 50})
            assert status == 202, cmd
            for n in range(LAMPS):  # one broadcast frame clears them all
                await eventually(lambda n=n: seen(f"D-{n:02d}", "power_failure", False), 10)

            sim.fail_gear(1)
            await eventually(lambda: seen("D-01", "gear_failure", True), 10)
            (raised,) = await events("D-01", "gear_failure")
            assert raised["detail"] == "D-01 gear_failure (A1 QUERY STATUS bit 0 control gear failure) raised"
            assert raised["severity"] == "alarm"
            sim.fail_gear(1, failed=False)
            await eventually(lambda: seen("D-01", "gear_failure", False), 10)

            async def quality(device: str, point: str, q: str) -> bool:
                _, body = await hub.get(f"/devices/{device}/points")
                return any(p["id"] == point and p["quality"] == q for p in body["items"])

            # answers garbled on the bus: the points lose their value (comm_error), never a wrong one
            sim.garble(3)
            await eventually(lambda: quality("D-03", "level", "comm_error"), 10)
            d3 = next(d for d in (await edge.op_status({}))["devices"] if d["id"] == "D-03")
            assert d3["last_error"].startswith("ProtocolError: D-03 (A3): garbled answer"), d3
            sim.garble(3, times=0)
            # retried with backoff (0.5 s doubling): on a loaded machine that can be a while
            await eventually(lambda: quality("D-03", "level", "good"), 40)

            # a lamp replaced: the old gear is gone, the new one has no short address yet
            sim.disconnect(2)
            sim.add_gear()
            await eventually(lambda: seen("street", "missing_short_address", True), 10)
            (missing,) = await events("street", "missing_short_address")
            assert "scan dali --bus dali1" in str(missing["detail"])
            # the technician commissions it through the running daemon: it takes the free A2
            scan = edge.op_bus_tool({"bus": "dali1", "action": "scan", "args": {}}, lambda _: None)
            got = await asyncio.wait_for(scan, 60)
            assert got["result"]["programmed"] == [2]
            await eventually(lambda: seen("street", "missing_short_address", False), 10)

            await eventually(lambda: quality("D-02", "level", "good"), 40)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.client.close()
