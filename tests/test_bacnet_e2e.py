"""End to end over BACnet/IP: building simulator -> edge (bacnet bus) -> Mosquitto -> hub -> REST.

Every part is real: the bacpypes3 building simulator and the edge's bacnet driver on two fresh
loopback UDP ports, a private Mosquitto, the hub on a SQLite file, its REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from hubtest import Hub, _settings, eventually, start_hub

from drivers.bacnet import BacnetDriver
from drivers.bacnet.cov import CovState
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports

GW = "bms-gw"
BUILDING = "town-hall"
INSTANCE = 1001




def edge_yaml(mqtt_port: int, data_dir: Path, sock: Path, gw_port: int, dev_port: int) -> str:
    return f"""
gateway: {{id: {GW}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive_s: 5, reconnect_max_s: 1}}
data_dir: {data_dir}
control_socket: {sock}
publish: {{max_delay_ms: 20, full_report_s: 60}}
buses:
  # The building has no address in the config: found by Who-Is for its instance.
  - {{id: bms, driver: bacnet, address: "127.0.0.1:{gw_port}", apdu_timeout_s: 0.5, apdu_retries: 1,
      who_is_to: "127.0.0.1:{dev_port}", who_is_timeout_s: 0.5}}
devices:
  - id: {BUILDING}
    bus: bms
    kind: building
    device_instance: {INSTANCE}
    points:
      - {{id: fire-3, object: "binary-input,3", alarm: fire, interval_s: 0.2}}
      - {{id: intrusion-1, object: "binary-input,101", alarm: intrusion, interval_s: 0.2}}
      - {{id: zone-1-temp, object: "analog-input,1", unit: °C, interval_s: 0.2}}
      - {{id: zone-1-setpoint, object: "analog-value,1", unit: °C, writable: true, min: 5, max: 35, interval_s: 0.2}}
      - {{id: door-1-lock, object: "binary-output,1", writable: true, priority: 10, interval_s: 0.2}}
      # no unit configured: the device's units (kilowatt-hours) go into the birth
      - {{id: energy, object: "analog-input,100", interval_s: 1}}
      # An input declared writable by mistake: the device refuses, the ack says why.
      - {{id: zone-3-temp, object: "analog-input,3", unit: °C, writable: true, interval_s: 1}}
      # COV points, polled only every minute: a change seen sooner came by COV.
      - {{id: fire-4, object: "binary-input,4", alarm: fire, cov: true, interval_s: 60}}
      - {{id: zone-2-temp, object: "analog-input,2", unit: °C, cov: true, interval_s: 60}}
"""


@dataclass
class Building:
    sim: BuildingSim
    hub: Hub
    edge: Edge
    dev_port: int

    async def point(self, point: str) -> dict[str, Any]:
        status, body = await self.hub.get(f"/devices/{BUILDING}/points")
        if status != 200:
            return {}
        return next((p for p in body["items"] if p["id"] == point), {})

    async def wait_point(self, point: str, **expected: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal found
            found = await self.point(point)
            return all(found.get(k) == v for k, v in expected.items())

        try:
            await eventually(check, 15)
        except AssertionError:
            raise AssertionError(f"{BUILDING}.{point} never became {expected}; last seen {found}") from None
        return found

    async def command(self, point: str, value: Any, action: str | None = None) -> dict[str, Any]:
        """POST a command and wait for its final status."""
        body = {"device": BUILDING, "point": point, "value": value}
        if action is not None:
            body["action"] = action
        status, cmd = await self.hub.post("/commands", body)
        assert status == 202, cmd

        async def done() -> bool:
            _, c = await self.hub.get(f"/commands/{cmd['id']}")
            return bool(c["status"] != "pending")

        await eventually(done, 10)
        _, body = await self.hub.get(f"/commands/{cmd['id']}")
        return dict(body)


@pytest.fixture
async def building(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Building]:
    async with run_building(tmp_path, mosquitto) as b:
        yield b


@contextlib.asynccontextmanager
async def run_building(
    tmp_path: Path, mosquitto: Mosquitto, *, cov: bool = True, cov_interval_s: float = 60
) -> AsyncIterator[Building]:
    """Simulator (``cov=False``: rejects SubscribeCOV), hub and edge, all running."""
    gw_port, dev_port = udp_ports(2)
    async with BuildingSim(port=dev_port, instance=INSTANCE, cov=cov) as sim:
        hub = await start_hub(_settings(tmp_path, mosquitto))
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))  # AF_UNIX paths are short
        path = tmp_path / "edge.yaml"
        text = edge_yaml(mosquitto.port, tmp_path / "edge", sock_dir / "edge.sock", gw_port, dev_port)
        path.write_text(text.replace("cov: true, interval_s: 60", f"cov: true, interval_s: {cov_interval_s}"))
        edge = Edge(edge_config.load(path))
        task = asyncio.create_task(edge.run())
        try:
            yield Building(sim, hub, edge, dev_port)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.client.close()


async def test_objects_appear_at_the_hub_as_a_device_with_points(building: Building) -> None:
    temp = await building.wait_point("zone-1-temp", value=20.5, quality="good")
    assert temp["unit"] == "°C"
    # the unit learned from the device reaches the hub in a second birth
    await building.wait_point("energy", value=12345.5, quality="good", unit="kWh")
    await building.wait_point("fire-3", value=False, quality="good")
    await building.wait_point("door-1-lock", value=True, quality="good")
    status, devices = await building.hub.get("/devices", gateway=GW)
    assert status == 200
    assert [(d["id"], d["kind"]) for d in devices["items"]] == [(BUILDING, "building")]
    _, points = await building.hub.get(f"/devices/{BUILDING}/points")
    assert sorted(p["id"] for p in points["items"]) == [
        "door-1-lock",
        "energy",
        "fire-3",
        "fire-4",
        "intrusion-1",
        "zone-1-setpoint",
        "zone-1-temp",
        "zone-2-temp",
        "zone-3-temp",
    ]


async def test_fire_in_zone_3_raises_an_alarm_event_at_the_hub_and_reset_clears_it(
    building: Building,
) -> None:
    await building.wait_point("fire-3", value=False, quality="good")

    async def fire_events() -> list[dict[str, Any]]:
        _, body = await building.hub.get("/events", device=BUILDING)
        return [e for e in body["items"] if e["kind"] == "fire"]

    assert await fire_events() == []
    started = time.monotonic()
    building.sim.fire(3)

    async def raised() -> bool:
        return any(e["active"] for e in await fire_events())

    await eventually(raised, 10)
    # Polled every 0.2 s and sent as an urgent event: well within the one second.
    assert time.monotonic() - started < 1.0
    (event,) = await fire_events()
    assert (event["gateway"], event["device"], event["point"]) == (GW, BUILDING, "fire-3")
    assert (event["active"], event["severity"]) == (True, "alarm")
    # Building, zone and the object with its BACnet object-name.
    assert event["detail"] == f"{BUILDING} fire-3 (binary-input,3 fire-zone-3) raised"
    await building.wait_point("fire-3", value=True, quality="good")

    building.sim.reset()

    async def cleared() -> bool:
        return any(not e["active"] for e in await fire_events())

    await eventually(cleared, 10)
    (clear,) = [e for e in await fire_events() if not e["active"]]
    assert clear["detail"] == f"{BUILDING} fire-3 (binary-input,3 fire-zone-3) cleared"
    await building.wait_point("fire-3", value=False)
    assert [e["kind"] for e in (await building.hub.get("/events", device=BUILDING))[1]["items"]] == [
        "fire",
        "fire",
    ]  # nothing else (intrusion) was raised


async def test_setpoint_written_by_rest_lands_at_priority_12_and_lock_at_its_priority(
    building: Building,
) -> None:
    await building.wait_point("zone-1-setpoint", value=21.0, quality="good")
    done = await building.command("zone-1-setpoint", 23.5)
    assert done["status"] == "acknowledged", done
    assert done["value"] == 23.5
    slots = building.sim.priority_array("analog-value,1")
    assert slots[12 - 1] == 23.5
    assert [i + 1 for i, v in enumerate(slots) if v is not None] == [12]
    assert building.sim.present_value("analog-value,1") == 23.5
    await building.wait_point("zone-1-setpoint", value=23.5, quality="good")

    done = await building.command("door-1-lock", False)
    assert done["status"] == "acknowledged", done
    slots = building.sim.priority_array("binary-output,1")
    assert [(i + 1, v) for i, v in enumerate(slots) if v is not None] == [(10, False)]
    assert building.sim.present_value("binary-output,1") is False
    await building.wait_point("door-1-lock", value=False)

    # Out of the configured range (announced in the birth): refused by the hub, nothing reaches
    # the priority array.
    status, body = await building.hub.post(
        "/commands", {"device": BUILDING, "point": "zone-1-setpoint", "value": 50}
    )
    assert (status, body["error"]["code"]) == (422, "out_of_range"), body
    assert building.sim.priority_array("analog-value,1")[12 - 1] == 23.5


async def test_relinquish_by_rest_empties_slot_12_and_restores_the_relinquish_default(
    building: Building,
) -> None:
    await building.wait_point("zone-1-setpoint", value=21.0, quality="good")
    done = await building.command("zone-1-setpoint", 26.0)
    assert done["status"] == "acknowledged", done
    assert building.sim.priority_array("analog-value,1")[12 - 1] == 26.0
    await building.wait_point("zone-1-setpoint", value=26.0)

    done = await building.command("zone-1-setpoint", None, action="relinquish")
    assert (done["status"], done["action"], done["value"]) == ("acknowledged", "relinquish", None), done
    assert done["readback"] == 21.0  # the relinquish default: no other slot is set
    assert done["detail"] == "relinquished; device reads back 21.0"
    assert building.sim.priority_array("analog-value,1") == [None] * 16
    assert building.sim.present_value("analog-value,1") == 21.0
    await building.wait_point("zone-1-setpoint", value=21.0, quality="good")

    # The hub refuses a relinquish with a value, and one of a read-only point.
    status, body = await building.hub.post(
        "/commands", {"device": BUILDING, "point": "zone-1-setpoint", "value": 3, "action": "relinquish"}
    )
    assert (status, body["error"]["message"]) == (400, "value: a relinquish takes no value"), body
    status, body = await building.hub.post(
        "/commands", {"device": BUILDING, "point": "fire-3", "action": "relinquish"}
    )
    assert (status, body["error"]["code"]) == (409, "point_not_writable"), body
    status, body = await building.hub.post(
        "/commands", {"device": BUILDING, "point": "zone-1-setpoint", "action": "toggle"}
    )
    assert (status, body["error"]["message"]) == (400, "action: one of set, relinquish"), body


async def test_a_write_to_an_input_is_refused_by_the_device_with_the_bacnet_error_in_the_ack(
    building: Building,
) -> None:
    await building.wait_point("zone-3-temp", value=21.5, quality="good")
    done = await building.command("zone-3-temp", 30.0)
    assert done["status"] == "failed", done
    assert done["detail"] == (
        f"PointError: {BUILDING} (device,{INSTANCE} at 127.0.0.1:{building.dev_port}): "
        "write 30.0 to analog-input,3 present-value: property: write-access-denied"
    )
    assert building.sim.present_value("analog-input,3") == 21.5
    # and a relinquish of an input is refused by the driver before anything is sent
    done = await building.command("zone-3-temp", None, action="relinquish")
    assert done["status"] == "failed", done
    assert done["detail"] == (
        f"PointError: {BUILDING}.zone-3-temp: relinquish needs a writable commandable present-value"
    )


async def test_cov_changes_reach_the_hub_without_waiting_for_the_poll(building: Building) -> None:
    await building.wait_point("zone-2-temp", value=21.0, quality="good")
    await building.wait_point("fire-4", value=False, quality="good")
    driver = building.edge.pollers["bms"].driver
    assert isinstance(driver, BacnetDriver)
    await eventually(lambda: _subscribed(driver, ("fire-4", "zone-2-temp")), 5)
    started = time.monotonic()
    building.sim.set_temperature(2, 23.5)
    building.sim.fire(4)
    await building.wait_point("zone-2-temp", value=23.5, quality="good")

    async def raised() -> bool:
        _, body = await building.hub.get("/events", device=BUILDING)
        return any(e["point"] == "fire-4" and e["active"] for e in body["items"])

    await eventually(raised, 5)
    assert time.monotonic() - started < 1.0  # the next poll is a minute away
    status = await building.edge.op_status({})
    assert status["buses"][0]["pushed"] >= 2
    # `citynerve-edge status` shows the subscriptions and what they delivered
    cov = {c["point"]: c for c in status["buses"][0]["cov"]}
    assert (cov["zone-2-temp"]["state"], cov["fire-4"]["state"]) == ("subscribed", "subscribed")
    assert cov["zone-2-temp"]["notifications"] >= 2  # the initial value and the change
    rc, out, err = await edge_cli("status", "--socket", str(building.edge.config.socket_path))
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith(BUILDING) and "subscribed" in line]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("fire-4", "bms", "subscribed"),
        ("zone-2-temp", "bms", "subscribed"),
    ]


async def edge_cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_device_that_rejects_cov_is_polled_and_status_says_so(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with run_building(tmp_path, mosquitto, cov=False, cov_interval_s=0.5) as building:
        await building.wait_point("zone-2-temp", value=21.0, quality="good")
        driver = building.edge.pollers["bms"].driver
        assert isinstance(driver, BacnetDriver)

        async def polled() -> bool:
            return all(state is CovState.POLLED for state, _ in driver.cov_states.values())

        await eventually(polled, 5)
        building.sim.set_temperature(2, 24.0)
        await building.wait_point("zone-2-temp", value=24.0, quality="good")  # by the poll
        status = await building.edge.op_status({})
        cov = {c["point"]: c for c in status["buses"][0]["cov"]}
        assert cov["zone-2-temp"]["state"] == "polled"
        assert cov["zone-2-temp"]["reason"].endswith(
            "subscribe-cov analog-input,2 for town-hall.zone-2-temp: rejected: unrecognized-service"
        )
        assert cov["zone-2-temp"]["notifications"] == 0


async def _subscribed(driver: BacnetDriver, points: tuple[str, ...]) -> bool:
    states = {pid: state for (_dev, pid), (state, _why) in driver.cov_states.items()}
    return all(states.get(p) is CovState.SUBSCRIBED for p in points)


async def test_a_device_that_goes_away_is_comm_error_at_the_hub_and_cov_resumes_when_it_returns(
    building: Building,
) -> None:
    await building.wait_point("zone-2-temp", value=21.0, quality="good")
    await building.wait_point("zone-1-temp", value=20.5, quality="good")
    driver = building.edge.pollers["bms"].driver
    assert isinstance(driver, BacnetDriver)
    await eventually(lambda: _subscribed(driver, ("fire-4", "zone-2-temp")), 5)

    await building.sim.__aexit__(None, None, None)  # the device goes away
    await building.wait_point("zone-1-temp", quality="comm_error")
    await building.wait_point("zone-2-temp", quality="comm_error")
    status = await building.edge.op_status({})
    assert [d["health"] for d in status["devices"]] == ["comm_error"]

    # It comes back as a fresh device that knows no subscribers (same port, new application).
    async with BuildingSim(port=building.dev_port, instance=INSTANCE) as sim:
        sim.set_temperature(2, 19.0)
        await building.wait_point("zone-1-temp", value=20.5, quality="good")
        back = time.monotonic()
        # zone-2-temp is polled once a minute: only a new subscription brings it back this soon.
        await building.wait_point("zone-2-temp", value=19.0, quality="good")
        assert time.monotonic() - back < 5.0
        sim.set_temperature(2, 18.0)
        started = time.monotonic()
        await building.wait_point("zone-2-temp", value=18.0, quality="good")
        assert time.monotonic() - started < 1.0
        status = await building.edge.op_status({})
        assert [d["health"] for d in status["devices"]] == ["ok"]
