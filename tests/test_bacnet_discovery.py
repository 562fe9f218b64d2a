"""Who-Is/I-Am discovery in the BACnet driver, and config clashes caught by check-config.

Real bacpypes3 on loopback with fresh ports per test (see tests/test_bacnet.py for why).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from cnconfig import EXIT_BAD_CONFIG, ConfigError
from drivers import DeviceUnavailable
from drivers.bacnet import BacnetBusConfig, BacnetDeviceConfig, BacnetDriver
from edge import config as edge_config
from edge.cli import main as edge_main
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports
from wire import Quality


def bus(port: int, **kw: Any) -> BacnetBusConfig:
    return BacnetBusConfig.model_validate(
        {
            "id": "bms",
            "driver": "bacnet",
            "address": f"127.0.0.1:{port}",
            "apdu_timeout_s": 0.3,
            "who_is_timeout_s": 0.5,
            **kw,
        }
    )


def unaddressed(instance: int, dev_id: str = "library") -> BacnetDeviceConfig:
    return BacnetDeviceConfig.model_validate(
        {
            "id": dev_id,
            "bus": "bms",
            "kind": "building",
            "device_instance": instance,
            "points": [
                {"id": "temp-1", "object": "analog-input,1"},
                {"id": "setpoint-1", "object": "analog-value,1", "writable": True},
            ],
        }
    )


async def test_directed_who_is_finds_the_device_and_its_instance() -> None:
    gw_port, dev_port = udp_ports(2)
    async with (
        BuildingSim(port=dev_port, instance=2002),
        BacnetDriver(bus(gw_port), []) as driver,
    ):
        assert await driver.who_is(f"127.0.0.1:{dev_port}") == [(2002, f"127.0.0.1:{dev_port}")]
        # outside the instance range: no answer
        assert await driver.who_is(f"127.0.0.1:{dev_port}", 1, 100, timeout_s=0.3) == []


async def test_a_device_without_address_is_found_by_who_is_and_read_and_written() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = unaddressed(2002)
    async with (
        BuildingSim(port=dev_port, instance=2002) as sim,
        BacnetDriver(bus(gw_port, who_is_to=f"127.0.0.1:{dev_port}"), [dev]) as driver,
    ):
        readings = await driver.read(dev, dev.points)
        assert [(r.point, r.value, r.quality) for r in readings] == [
            ("temp-1", 20.5, Quality.GOOD),
            ("setpoint-1", 21.0, Quality.GOOD),
        ]
        assert await driver.write(dev, dev.points[1], 22.0) == 22.0
        assert sim.priority_array("analog-value,1")[11] == 22.0


async def test_a_device_that_does_not_answer_who_is_is_unavailable_naming_instance_and_target() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = unaddressed(2003)
    async with (
        BuildingSim(port=dev_port, instance=2002),  # another instance answers nothing
        BacnetDriver(bus(gw_port, who_is_to=f"127.0.0.1:{dev_port}"), [dev]) as driver,
    ):
        with pytest.raises(DeviceUnavailable) as info:
            await driver.read(dev, dev.points)
        assert str(info.value) == (
            f"library: no I-Am from device,2003 to a Who-Is at 127.0.0.1:{dev_port} within 0.5 s"
        )


async def test_broadcast_who_is_on_loopback_reaches_a_device_on_a_shared_port() -> None:
    # ASHRAE 135 Annex J: a device on 127.0.0.2/8 also listens on 127.255.255.255 at its port,
    # so a Who-Is broadcast there from the gateway's own (different) port reaches it.
    gw_port, dev_port = udp_ports(2)
    dev = unaddressed(3003)
    async with (
        BuildingSim(host="127.0.0.2", port=dev_port, instance=3003, mask=8),
        BacnetDriver(bus(gw_port, who_is_to=f"127.255.255.255:{dev_port}"), [dev]) as driver,
    ):
        assert await driver.who_is(f"127.255.255.255:{dev_port}") == [(3003, f"127.0.0.2:{dev_port}")]
        readings = await driver.read(dev, dev.points[:1])
        assert readings[0].value == 20.5


def test_who_is_goes_to_the_bus_subnet_broadcast_by_default() -> None:
    assert bus(47900).who_is_address() == "255.255.255.255:47808"
    b = BacnetBusConfig.model_validate({"id": "b", "driver": "bacnet", "address": "10.20.0.5/24"})
    assert b.who_is_address() == "10.20.0.255:47808"


CLASH = """\
gateway: {id: gw-1}
mqtt: {host: 127.0.0.1}
buses:
  - id: bms
    driver: bacnet
    address: 127.0.0.1:47900
devices:
  - id: town-hall
    bus: bms
    kind: building
    address: 127.0.0.1:47901
    device_instance: 1001
  - id: library
    bus: bms
    kind: building
    address: 127.0.0.1:47900
    device_instance: 1001
  - id: museum
    bus: bms
    kind: building
    address: 127.0.0.1:47901
    device_instance: 1003
  - id: pool
    bus: bms
    kind: building
    device_instance: 1004
"""

EXPECTED = [
    "edge.yaml:16: devices[1].address: 127.0.0.1:47900 is the gateway's own address on bus 'bms' "
    "(give the device or the bus another port)",
    "edge.yaml:17: devices[1].device_instance: device instance 1001 is also device 'town-hall' "
    "on bus 'bms': instances must be unique",
    "edge.yaml:21: devices[2].address: 127.0.0.1:47901 is also device 'town-hall' on bus 'bms'",
]


def test_bacnet_clashes_are_config_errors_with_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(textwrap.dedent(CLASH))
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    assert [str(i).replace(str(path), "edge.yaml") for i in info.value.issues] == EXPECTED


def test_check_config_prints_the_clashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(CLASH)
    assert edge_main(["check-config", str(path)]) == EXIT_BAD_CONFIG
    err = capsys.readouterr().err.replace(str(path), "edge.yaml")
    assert err.splitlines() == EXPECTED


def test_birth_takes_learned_units_where_the_config_has_none(tmp_path: Path) -> None:
    from edge.uplink import birth_message

    path = tmp_path / "edge.yaml"
    path.write_text(
        CLASH.split("devices:")[0]
        + """devices:
  - id: town-hall
    bus: bms
    kind: building
    address: 127.0.0.1:47901
    device_instance: 1001
    points:
      - {id: temp, object: "analog-input,1", unit: degC}
      - {id: energy, object: "analog-input,100"}
      - {id: fire, object: "binary-input,1"}
"""
    )
    cfg = edge_config.load(path)
    learned = {("town-hall", "temp"): "°C", ("town-hall", "energy"): "kWh"}
    (dev,) = birth_message(cfg, 1, learned).devices
    # the configured unit wins; the learned one fills the gap; nothing learned stays empty
    assert [(p.id, p.unit) for p in dev.points] == [("temp", "degC"), ("energy", "kWh"), ("fire", "")]
    assert [p.unit for p in birth_message(cfg, 1).devices[0].points] == ["degC", "", ""]


def test_a_gateway_on_every_address_clashes_with_a_loopback_device_on_its_port(tmp_path: Path) -> None:
    text = CLASH.replace("address: 127.0.0.1:47900\n", "address: 0.0.0.0:47901\n", 1)
    text = text.split("  - id: library")[0]
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    assert [str(i).replace(str(path), "edge.yaml") for i in info.value.issues] == [
        "edge.yaml:11: devices[0].address: 127.0.0.1:47901 is the gateway's own address on bus 'bms' "
        "(give the device or the bus another port)"
    ]
