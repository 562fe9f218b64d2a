"""``citynerve-edge scan bacnet`` against building simulators, with and without the daemon running.

The CLI runs as a real subprocess; the simulators and the daemon run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from broker import Mosquitto
from hubtest import _settings, eventually, start_hub

from drivers.bacnet import BacnetDeviceConfig
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.bacnet import BuildingSim
from firmware_sim.bacnet import free_udp_ports as udp_ports


async def cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scan_lists_objects_with_name_type_value_units_and_writes_a_loadable_config(
    tmp_path: Path,
) -> None:
    (p1, p2) = udp_ports(2)
    out_file = tmp_path / "starter.yaml"
    async with (
        BuildingSim(port=p1, instance=1001, name="town-hall"),
        BuildingSim(port=p2, instance=1002, name="library") as lib,
    ):
        lib.set_temperature(1, 18.25)
        rc, out, err = await cli(
            "scan",
            "bacnet",
            "--local",
            "127.0.0.1",
            "--target",
            f"127.0.0.1:{p1}",
            "--target",
            f"127.0.0.1:{p2}",
            "--json",
            "--write-config",
            str(out_file),
        )
    assert rc == 0, err
    assert "2 device(s) answered" in err
    assert f"device 2/2 device,1002 at 127.0.0.1:{p2}: object 20/20 analog-input,100" in err
    devices = json.loads(out)["devices"]
    assert [(d["instance"], d["name"], d["address"], len(d["objects"])) for d in devices] == [
        (1001, "town-hall", f"127.0.0.1:{p1}", 20),
        (1002, "library", f"127.0.0.1:{p2}", 20),
    ]
    objects = {o["object"]: o for o in devices[1]["objects"]}
    assert objects["analog-input,1"] == {
        "object": "analog-input,1",
        "type": "analog-input",
        "name": "zone-1-temperature",
        "present_value": 18.25,
        "units": "°C",
    }
    assert objects["binary-output,1"]["present_value"] is True and objects["binary-output,1"]["units"] == ""
    assert objects["analog-input,100"]["units"] == "kWh"
    assert objects["multi-state-output,1"]["present_value"] == 4

    # The starter config is valid against the edge config model.
    cfg = edge_config.load(out_file)
    assert [d.id for d in cfg.devices] == ["town-hall", "library"]
    lib_cfg = cfg.devices[1]
    assert isinstance(lib_cfg, BacnetDeviceConfig)
    assert (lib_cfg.address, lib_cfg.device_instance) == (f"127.0.0.1:{p2}", 1002)
    temp = next(p for p in lib_cfg.points if p.id == "zone-1-temperature")
    assert (temp.object, temp.unit, temp.writable) == ("analog-input,1", "°C", False)  # type: ignore[attr-defined]

    # never overwrites
    rc, _, err = await cli("scan", "bacnet", "--local", "127.0.0.1", "--write-config", str(out_file))
    assert rc == 2 and "exists: not overwritten" in err


async def test_scan_runs_beside_the_daemon_without_taking_its_port(tmp_path: Path) -> None:
    gw_port, dev_port, mqtt_port = udp_ports(3)
    sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
    path = tmp_path / "edge.yaml"
    path.write_text(
        f"""
gateway: {{id: bms-gw}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, reconnect_max_s: 1}}
data_dir: {tmp_path / "data"}
control_socket: {sock_dir / "edge.sock"}
buses:
  - {{id: bms, driver: bacnet, address: "127.0.0.1:{gw_port}", apdu_timeout_s: 0.5}}
devices:
  - id: town-hall
    bus: bms
    kind: building
    address: "127.0.0.1:{dev_port}"
    device_instance: 1001
    points:
      - {{id: zone-1-temp, object: "analog-input,1", interval_s: 0.2}}
"""
    )
    async with BuildingSim(port=dev_port, instance=1001) as sim:
        edge = Edge(edge_config.load(path))
        task = asyncio.create_task(edge.run())
        try:
            ps = edge.devices["town-hall"].points["zone-1-temp"]

            async def read(value: float) -> bool:
                return ps.value == value

            await eventually(lambda: read(20.5), 10)
            # Targets from the config: the bus's Who-Is address and the configured device.
            rc, out, err = await cli("scan", "bacnet", "--config", str(path), "--json")
            assert rc == 0, err
            (found,) = json.loads(out)["devices"]
            assert (found["instance"], found["address"]) == (1001, f"127.0.0.1:{dev_port}")
            assert "scanning from 127.0.0.1:" in err and f"127.0.0.1:{gw_port} " not in err
            # the daemon kept its port and goes on reading
            sim.set_temperature(1, 23.0)
            await eventually(lambda: read(23.0), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_scan_without_config_or_local_says_what_to_give() -> None:
    rc, _, err = await cli("scan", "bacnet")
    assert rc == 2
    assert (
        err.strip() == "citynerve-edge: give --config FILE (the bacnet bus to scan from) or --local IP[/mask]"
    )


async def test_a_scanned_building_runs_and_its_objects_appear_at_the_hub(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """scan -> starter config -> edge -> Mosquitto -> hub: every object a point, with units."""
    (dev_port, gw_port) = udp_ports(2)
    starter = tmp_path / "starter.yaml"
    async with BuildingSim(port=dev_port, instance=1001, name="Town Hall") as sim:
        rc, _, err = await cli(
            "scan",
            "bacnet",
            "--local",
            "127.0.0.1",
            "--target",
            f"127.0.0.1:{dev_port}",
            "--write-config",
            str(starter),
        )
        assert rc == 0, err
        # What the technician adds: the bus's own port, the broker, local paths.
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
        text = starter.read_text().replace("id: CHANGE-ME", "id: bms-gw")
        text = text.replace("address: 127.0.0.1\n", f"address: 127.0.0.1:{gw_port}\n", 1)
        text += (
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"data_dir: {tmp_path / 'edge'}\ncontrol_socket: {sock_dir / 'edge.sock'}\n"
            "publish: {max_delay_ms: 20}\n"
        )
        cfg_path = tmp_path / "edge.yaml"
        cfg_path.write_text(text)
        hub = await start_hub(_settings(tmp_path, mosquitto))
        edge = Edge(edge_config.load(cfg_path))
        task = asyncio.create_task(edge.run())
        try:

            async def all_points_good() -> bool:
                status, body = await hub.get("/devices/town-hall/points")
                return (
                    status == 200
                    and len(body["items"]) == 20
                    and all(p["quality"] == "good" for p in body["items"])
                )

            await eventually(all_points_good, 20)
            _, body = await hub.get("/devices/town-hall/points")
            points = {p["id"]: p for p in body["items"]}
            assert (points["zone-1-temperature"]["value"], points["zone-1-temperature"]["unit"]) == (
                20.5,
                "°C",
            )
            assert (points["energy-meter"]["value"], points["energy-meter"]["unit"]) == (12345.5, "kWh")
            assert (points["fire-zone-3"]["type"], points["fire-zone-3"]["value"]) == ("bool", False)
            assert (points["zone-1-mode"]["type"], points["zone-1-mode"]["value"]) == ("int", 4)
            assert sim.present_value("analog-input,1") == 20.5
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.client.close()
