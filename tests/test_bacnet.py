"""The BACnet driver against the building simulator over BACnet/IP on loopback (no mocks).

Every test takes fresh UDP ports: bacpypes3 binds with SO_REUSEPORT, so a device left over from
another test on the same port would silently take the traffic; the simulator and the driver
refuse a taken port, and both are closed completely when their context ends.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cnconfig import ConfigError
from drivers import DeviceUnavailable, PointError, get_driver
from drivers.bacnet import (
    DEFAULT_PRIORITY,
    BacnetBusConfig,
    BacnetDeviceConfig,
    BacnetDriver,
    BacnetPointConfig,
    status_quality,
)
from edge import config as edge_config
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports
from wire import PointType, Quality

INSTANCE = 1001
POINTS: list[dict[str, Any]] = [
    {"id": "fire-3", "object": "binary-input,3", "alarm": "fire"},
    {"id": "intrusion-1", "object": "binary-input,101", "alarm": "intrusion"},
    {"id": "door-1-open", "object": "binary-input,201", "alarm": "door_open"},
    {"id": "door-1-lock", "object": "binary-output,1", "writable": True},
    {"id": "temp-1", "object": "analog-input,1", "unit": "°C"},
    {"id": "setpoint-1", "object": "analog-value,1", "unit": "°C", "writable": True, "min": 5, "max": 35},
    {"id": "setpoint-2", "object": "analog-value,2", "writable": True, "priority": 9},
    {"id": "energy", "object": "analog-input,100", "unit": "kWh"},
    {"id": "temp-2", "object": "analog-input,2", "writable": True},  # the device will refuse writes
]




def bus(port: int, **kw: Any) -> BacnetBusConfig:
    return BacnetBusConfig.model_validate(
        {"id": "bms", "driver": "bacnet", "address": f"127.0.0.1:{port}", "apdu_timeout_s": 0.3, **kw}
    )


def device(port: int, **kw: Any) -> BacnetDeviceConfig:
    return BacnetDeviceConfig.model_validate(
        {
            "id": "town-hall",
            "bus": "bms",
            "kind": "building",
            "address": f"127.0.0.1:{port}",
            "device_instance": INSTANCE,
            "points": POINTS,
            **kw,
        }
    )


def point(dev: BacnetDeviceConfig, pid: str) -> BacnetPointConfig:
    return next(p for p in dev.points if p.id == pid)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[BuildingSim, BacnetDriver, BacnetDeviceConfig]]:
    """A building simulator and a driver on two fresh ports."""
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port)
    async with (
        BuildingSim(port=dev_port, instance=INSTANCE) as sim,
        BacnetDriver(bus(gw_port), [dev]) as driver,
    ):
        yield sim, driver, dev


def values(readings: list[Any]) -> dict[str, tuple[Any, Quality, str]]:
    return {r.point: (r.value, r.quality, r.error) for r in readings}


async def test_read_binary_and_analog_points_with_units(rig: Any) -> None:
    _sim, driver, dev = rig
    got = values(await driver.read(dev, dev.points))
    assert got["fire-3"] == (False, Quality.GOOD, "")
    assert got["door-1-lock"] == (True, Quality.GOOD, "")  # relinquish default: locked
    assert got["temp-1"] == (20.5, Quality.GOOD, "")
    assert got["setpoint-1"] == (21.0, Quality.GOOD, "")
    assert got["energy"] == (12345.5, Quality.GOOD, "")
    assert isinstance(got["fire-3"][0], bool) and isinstance(got["temp-1"][0], float)
    assert await driver.units(dev, point(dev, "temp-1")) == "°C"
    assert await driver.units(dev, point(dev, "energy")) == "kWh"
    assert await driver.units(dev, point(dev, "fire-3")) == ""


async def test_fire_in_zone_3_reads_true_in_alarm_and_reset_clears(rig: Any) -> None:
    sim, driver, dev = rig
    sim.fire(3)
    got = values(await driver.read(dev, dev.points))
    assert got["fire-3"] == (True, Quality.GOOD, "status flags: in-alarm")
    assert got["intrusion-1"] == (False, Quality.GOOD, "")
    sim.door_forced(1)
    sim.intrusion(1)
    got = values(await driver.read(dev, dev.points))
    assert got["door-1-open"][0] is True and got["intrusion-1"][0] is True
    sim.reset()
    got = values(await driver.read(dev, dev.points))
    assert [got[p][:2] for p in ("fire-3", "intrusion-1", "door-1-open")] == [(False, Quality.GOOD)] * 3


async def test_read_property_fallback_gives_the_same_readings(rig: Any) -> None:
    sim, driver, dev = rig
    sim.fire(3)
    rp = dev.model_copy(update={"read_multiple": False})
    assert await driver.read(rp, dev.points) == await driver.read(dev, dev.points)


async def test_status_flags_fault_and_out_of_service_spoil_quality(rig: Any) -> None:
    sim, driver, dev = rig
    sim.set_fault("analog-input,1")
    sim.set_out_of_service("analog-input,100")
    got = values(await driver.read(dev, dev.points))
    assert got["temp-1"] == (20.5, Quality.DEVICE_ERROR, "status flags: fault")
    assert got["energy"] == (12345.5, Quality.STALE, "status flags: out-of-service")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([0, 0, 0, 0], (Quality.GOOD, "")),
        ([1, 0, 0, 0], (Quality.GOOD, "status flags: in-alarm")),
        ([0, 0, 1, 0], (Quality.GOOD, "status flags: overridden")),
        ([0, 1, 0, 1], (Quality.DEVICE_ERROR, "status flags: fault, out-of-service")),
        ([1, 0, 0, 1], (Quality.STALE, "status flags: in-alarm, out-of-service")),
    ],
)
def test_status_quality_table(flags: list[int], expected: tuple[Quality, str]) -> None:
    assert status_quality(flags) == expected


async def test_write_lands_at_the_configured_priority_and_relinquish_restores_default(rig: Any) -> None:
    sim, driver, dev = rig
    sp1, sp2 = point(dev, "setpoint-1"), point(dev, "setpoint-2")
    assert sp1.priority == DEFAULT_PRIORITY == 12
    assert await driver.write(dev, sp1, 19.5) == 19.5
    slots = sim.priority_array("analog-value,1")
    assert slots[DEFAULT_PRIORITY - 1] == 19.5
    assert [s for i, s in enumerate(slots) if i != DEFAULT_PRIORITY - 1] == [None] * 15
    assert sim.present_value("analog-value,1") == 19.5

    # a point configured with its own priority writes there
    assert await driver.write(dev, sp2, 18.0) == 18.0
    assert sim.priority_array("analog-value,2")[8] == 18.0

    assert await driver.relinquish(dev, sp1) == 21.0  # the relinquish default
    assert sim.priority_array("analog-value,1") == [None] * 16
    assert sim.present_value("analog-value,1") == 21.0

    lock = point(dev, "door-1-lock")
    assert await driver.write(dev, lock, False) is False
    assert sim.priority_array("binary-output,1")[DEFAULT_PRIORITY - 1] is False
    assert await driver.relinquish(dev, lock) is True


async def test_write_to_a_non_commandable_object_is_refused_with_the_bacnet_error(rig: Any) -> None:
    sim, driver, dev = rig
    with pytest.raises(PointError, match=r"analog-input,2 present-value: property: write-access-denied"):
        await driver.write(dev, point(dev, "temp-2"), 5.0)
    assert sim.present_value("analog-input,2") == 21.0
    with pytest.raises(PointError, match=r"town-hall.fire-3 is read-only"):
        await driver.write(dev, point(dev, "fire-3"), True)
    with pytest.raises(PointError, match=r"40 is outside \[5.0, 35.0\]"):
        await driver.write(dev, point(dev, "setpoint-1"), 40)
    with pytest.raises(PointError, match="relinquish needs a writable commandable present-value"):
        await driver.relinquish(dev, point(dev, "temp-2"))


async def test_unknown_object_is_a_device_error_on_that_point_only(rig: Any) -> None:
    _sim, driver, dev = rig
    ghost = BacnetPointConfig.model_validate({"id": "ghost", "object": "analog-input,77"})
    readings = await driver.read(dev, [ghost, point(dev, "temp-1")])
    assert readings[0].quality is Quality.DEVICE_ERROR
    assert "unknown-object" in readings[0].error
    assert readings[1] == ("temp-1", 20.5, Quality.GOOD, "")


async def test_unreachable_device_is_device_unavailable_within_the_timeout() -> None:
    gw_port, nobody = udp_ports(2)
    dev = device(nobody)
    async with BacnetDriver(bus(gw_port, apdu_timeout_s=0.2, apdu_retries=1), [dev]) as driver:
        start = time.monotonic()
        with pytest.raises(DeviceUnavailable, match=rf"device,{INSTANCE} at 127.0.0.1:{nobody}\): no answer"):
            await driver.read(dev, dev.points)
        assert time.monotonic() - start < 0.2 * 2 + 0.3
        with pytest.raises(DeviceUnavailable):
            await driver.write(dev, point(dev, "setpoint-1"), 20.0)


async def test_ports_are_never_shared() -> None:
    gw_port, dev_port = udp_ports(2)
    async with BuildingSim(port=dev_port):
        with pytest.raises(OSError):
            async with BuildingSim(port=dev_port):
                pass
        with pytest.raises(DeviceUnavailable, match="cannot bind"):
            async with BacnetDriver(bus(dev_port), []):
                pass
    with pytest.raises(DeviceUnavailable, match="shares the gateway's own address and port"):
        async with BacnetDriver(bus(gw_port), [device(gw_port)]):
            pass
    # closed completely: the port can be bound again at once
    async with BuildingSim(port=dev_port):
        pass


def test_point_config_types_and_defaults() -> None:
    dev = device(47809)
    assert point(dev, "fire-3").value_type() is PointType.BOOL
    assert point(dev, "temp-1").value_type() is PointType.FLOAT
    assert point(dev, "setpoint-1").prop == "present-value"
    assert point(dev, "setpoint-1").commandable and not point(dev, "temp-2").commandable
    ms = BacnetPointConfig.model_validate({"id": "mode", "object": "multi-state-value,1"})
    assert ms.value_type() is PointType.INT
    assert get_driver("bacnet").bus_model is BacnetBusConfig
    assert bus(47900).bacpypes_address() == "127.0.0.1:47900"
    assert BacnetBusConfig(id="b", address="10.1.2.3/24").bacpypes_address() == "10.1.2.3/24:47808"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": "p", "object": "analog-thing,1"}, "unknown object type 'analog-thing'"),
        ({"id": "p", "object": "analog-input"}, "'analog-input' is not 'type,instance'"),
        ({"id": "p", "object": "analog-input,4194303"}, "instance 4194303 is above 4194302"),
        (
            {"id": "p", "object": "analog-value,1", "priority": 0, "writable": True},
            "greater than or equal to 1",
        ),
        ({"id": "p", "object": "analog-value,1", "priority": 10}, "priority applies to writable points only"),
    ],
)
def test_point_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BacnetPointConfig.model_validate(data)


GOOD = """\
gateway:
  id: bldg-gw-1
buses:
  - id: bms
    driver: bacnet
    address: 127.0.0.1/8:47900
    apdu_timeout_s: 1.5
devices:
  - id: town-hall
    bus: bms
    kind: building
    address: 127.0.0.1:47901
    device_instance: 1001
    points:
      - {id: fire-3, object: "binary-input,3", alarm: fire}
      - {id: setpoint-1, object: "analog-value,1", unit: °C, writable: true, priority: 10}
"""


def test_edge_config_with_a_bacnet_bus_loads(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(GOOD)
    cfg = edge_config.load(path)
    (b,) = cfg.buses
    assert isinstance(b, BacnetBusConfig) and b.port == 47900 and b.apdu_timeout_s == 1.5
    (d,) = cfg.devices
    assert isinstance(d, BacnetDeviceConfig) and d.device_instance == 1001
    assert [p.priority for p in d.points] == [DEFAULT_PRIORITY, 10]


def edge_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edge.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    return [str(i).replace(str(path), "edge.yaml") for i in info.value.issues]


def test_edge_config_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad_bus = GOOD.replace("127.0.0.1/8:47900", "127.0.0.1/40:47900")
    assert edge_errors(tmp_path, bad_bus)[0] == (
        "edge.yaml:6: buses[0].address: '127.0.0.1/40:47900': mask must be 0-32"
    )
    bad = (
        GOOD.replace("device_instance: 1001", "device_instance: 4194303")
        .replace('object: "binary-input,3"', 'object: "binary-inptu,3"')
        .replace("writable: true, priority: 10", "priority: 10")
    )
    assert edge_errors(tmp_path, bad) == [
        "edge.yaml:13: devices[0].device_instance: Input should be less than or equal to 4194302",
        "edge.yaml:15: devices[0].points[0].object: unknown object type 'binary-inptu' "
        "(known: analog-input, analog-output, analog-value, binary-input, binary-output, binary-value, "
        "multi-state-input, multi-state-output, multi-state-value)",
        "edge.yaml:16: devices[0].points[1].priority: priority applies to writable points only",
    ]


async def test_multi_state_output_reads_ints_and_writes_at_its_priority(rig: Any) -> None:
    sim, driver, base = rig
    mode = BacnetPointConfig.model_validate(
        {"id": "zone-1-mode", "object": "multi-state-output,1", "writable": True, "min": 1, "max": 4}
    )
    dev = base.model_copy(update={"points": (*base.points, mode)})
    got = values(await driver.read(dev, [mode]))
    assert got["zone-1-mode"] == (4, Quality.GOOD, "")  # auto, the relinquish default
    assert isinstance(got["zone-1-mode"][0], int) and not isinstance(got["zone-1-mode"][0], bool)
    assert await driver.write(dev, mode, 2) == 2  # heat
    slots = sim.priority_array("multi-state-output,1")
    assert [(i + 1, v) for i, v in enumerate(slots) if v is not None] == [(DEFAULT_PRIORITY, 2)]
    assert await driver.relinquish(dev, mode) == 4
    assert all(v is None for v in sim.priority_array("multi-state-output,1"))
