"""DALI commissioning and technician tools: python-dali's sequences against the bus simulator.

Random-address search and short addresses (IEC 62386-102 §9.14), the send-twice rule, query,
fade time/rate, identify, groups and scenes; the CLI standalone and through the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers import PointError
from drivers.dali import DaliBusConfig, DaliDriver, arc_to_percent
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.dali import FADE_TIMES_S, DaliBusSim, Gear, GearBus

# -- the send-twice rule in the simulated gear (pure, injected clock) -----------------------

SET_FADE_TIME_A1 = bytes([0x03, 0x2E])  # short address 1, selector bit set, SET FADE TIME
DTR0_5 = bytes([0xA3, 5])


def test_a_configuration_command_needs_its_repeat_within_100_ms() -> None:
    bus = GearBus([Gear(short_address=1)])
    bus.forward(DTR0_5, 0.0)
    bus.forward(SET_FADE_TIME_A1, 0.0)
    assert bus.gear[0].fade_time == 0  # once: ignored
    bus.forward(SET_FADE_TIME_A1, 0.15)  # the "repeat" 150 ms later is a new first frame
    assert bus.gear[0].fade_time == 0
    bus.forward(SET_FADE_TIME_A1, 0.24)  # repeated within 100 ms: applied
    assert bus.gear[0].fade_time == 5
    bus.forward(DTR0_5.replace(b"\x05", b"\x02"), 1.0)
    bus.forward(SET_FADE_TIME_A1, 1.0)
    bus.forward(bytes([0x03, 0xA0]), 1.02)  # any other frame between the two cancels it
    bus.forward(SET_FADE_TIME_A1, 1.04)
    assert bus.gear[0].fade_time == 5
    assert bus.stats.ignored_config == 2
    # a DAPC to level 0x2E is not a configuration command
    bus.forward(bytes([0x02, 0x2E]), 2.0)
    assert bus.gear[0].level_at(10.0) == 0x2E  # after its 2.8 s fade


def test_initialise_and_randomise_are_send_twice_too() -> None:
    bus = GearBus([Gear(short_address=None)], seed=1)
    g = bus.gear[0]
    bus.forward(bytes([0xA5, 0xFF]), 0.0)  # INITIALISE (unaddressed) once
    assert not g.initialised(0.0)
    bus.forward(bytes([0xA5, 0xFF]), 0.03)
    assert g.initialised(0.03)
    bus.forward(bytes([0xA7, 0x00]), 0.1)  # RANDOMISE once
    assert g.random_address == 0xFFFFFF
    bus.forward(bytes([0xA7, 0x00]), 0.13)
    assert g.random_address != 0xFFFFFF
    bus.forward(bytes([0xA1, 0x00]), 0.2)  # TERMINATE
    assert not g.initialised(0.2)


# -- tools through the driver -------------------------------------------------------------


def bus(path: str) -> DaliBusConfig:
    return DaliBusConfig(id="dali1", serial_port=path)


@pytest.fixture
async def sim() -> AsyncIterator[DaliBusSim]:
    # 3 gear with short addresses 0-2, 4 new ones without
    async with DaliBusSim(lamps=3, unaddressed=4, timing=0, seed=7) as s:
        yield s


@pytest.fixture
async def driver(sim: DaliBusSim) -> AsyncIterator[DaliDriver]:
    async with DaliDriver(bus(sim.path)) as d:
        yield d


def addresses(sim: DaliBusSim) -> list[int | None]:
    return [g.short_address for g in sim.bus.gear]


async def test_scan_gives_free_short_addresses_and_keeps_the_others(
    sim: DaliBusSim, driver: DaliDriver
) -> None:
    sim.disconnect(1)  # a gear gone from the bus: its address is free again
    progress: list[dict[str, Any]] = []
    result = await driver.tool("scan", {}, progress.append)
    # the new gear get the lowest free addresses in the order of their random addresses
    assert result["programmed"] == [1, 3, 4, 5]
    found = {g["address"]: g for g in result["gear"]}
    assert sorted(found) == [0, 1, 2, 3, 4, 5]
    assert [found[a]["new"] for a in (0, 2, 3)] == [False, False, True]
    new = sorted((g for g in sim.bus.gear[3:]), key=lambda g: g.random_address)
    assert [g.short_address for g in new] == [1, 3, 4, 5]
    assert [found[a]["random_address"] for a in (1, 3, 4, 5)] == [f"0x{g.random_address:06X}" for g in new]
    assert found[3]["device_types"] == [6] and found[3]["dali2"] is True
    assert found[3]["status"]["missing_short_address"] is False
    messages = [p["message"] for p in progress if p.get("message")]
    assert "Programming short address 5" in messages and messages[-1] == "reading gear A5"
    assert any(p.get("size") == 0xFFFFFF for p in progress)  # search progress
    # nothing left to do the second time
    sim.disconnect(1, gone=False)  # ... until the old gear comes back: now two answer at A1
    again = await driver.tool("scan", {}, lambda _: None)
    assert again["programmed"] == []
    (twice,) = [g for g in again["gear"] if "error" in g]
    assert twice["address"] == 1
    assert "garbled answer to QueryStatus" in twice["error"] and "--readdress" in twice["error"]


async def test_readdress_numbers_every_gear_anew(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.gear(2).short_address = 40
    result = await driver.tool("scan", {"readdress": True}, lambda _: None)
    assert result["programmed"] == list(range(7))
    assert sorted(addresses(sim)) == list(range(7))  # type: ignore[type-var]
    assert all(g["new"] for g in result["gear"])


class _Clashing(random.Random):
    """Two gear draw the same random address the first time: the search must start again."""

    def __init__(self) -> None:
        super().__init__(3)
        self.first = [0x123456, 0x123456]

    def getrandbits(self, k: int) -> int:
        return self.first.pop() if self.first else super().getrandbits(k)


async def test_two_gear_with_the_same_random_address_are_told_apart() -> None:
    async with DaliBusSim(lamps=0, unaddressed=2, timing=0) as sim, DaliDriver(bus(sim.path)) as d:
        sim.bus._rng = _Clashing()
        progress: list[dict[str, Any]] = []
        result = await d.tool("scan", {}, progress.append)
        assert sorted(addresses(sim)) == [0, 1]  # type: ignore[type-var]
        assert result["programmed"] == [0, 1]
        assert any("same random address" in (p.get("message") or "") for p in progress)


async def test_scan_with_a_list_of_addresses(sim: DaliBusSim, driver: DaliDriver) -> None:
    result = await driver.tool("scan", {"addresses": [10, 11]}, lambda _: None)
    assert result["programmed"] == [10, 11]
    assert addresses(sim).count(None) == 2  # no address left for the other two
    with pytest.raises(PointError, match="addresses must be a list of short addresses 0-63"):
        await driver.tool("scan", {"addresses": [64]}, lambda _: None)


async def test_query_fade_identify_group_scene(sim: DaliBusSim, driver: DaliDriver) -> None:
    noop = lambda _: None  # noqa: E731
    sim.add_to_group(1, 3)
    sim.gear(1).go_to(170, 0, fade=False)
    info = await driver.tool("query", {"address": 1}, noop)
    assert (info["level"], info["arc"], info["groups"]) == (arc_to_percent(170), 170, [3])
    assert info["status"]["lamp_on"] and not info["status"]["lamp_failure"]
    assert (info["fade_time"], info["fade_rate"], info["version"], info["scenes"]) == (0, 7, "2.0", {})

    # fade time to one gear (read back), fade rate to a group (one frame pair, no read back)
    assert await driver.tool("fade", {"address": 1, "fade_time": 4}, noop) == {
        "target": "A1",
        "fade_time": 4,
        "fade_time_s": 2.0,
        "fade_rate": 7,
        "fade_rate_steps_s": 44.7,
    }
    sim.add_to_group(2, 3)
    await driver.tool("fade", {"group": 3, "fade_rate": 12}, noop)
    assert [(sim.gear(n).fade_time, sim.gear(n).fade_rate) for n in (0, 1, 2)] == [(0, 7), (4, 12), (0, 12)]
    assert sim.stats.ignored_config == 0  # every configuration command came twice in 100 ms

    # DALI-2 gear identify themselves; a DALI-1 gear is toggled OFF / RECALL MAX and put back
    assert (await driver.tool("identify", {"address": 0}, noop))["method"] == "IDENTIFY DEVICE"
    assert sim.identifying(0)
    sim.gear(2).version = 1
    sim.gear(2).go_to(200, 0, fade=False)
    sim.reset_stats()
    got = await driver.tool("identify", {"address": 2, "blinks": 2}, noop)
    assert got["method"] == "toggled OFF/RECALL MAX 2 times"
    assert (sim.stats.by_opcode["0x00"], sim.stats.by_opcode["0x05"]) == (2, 2)
    assert not sim.identifying(2)
    await asyncio.sleep(0)
    assert sim.gear(2)._target == 200  # back to its level (fading there)

    assert (await driver.tool("group", {"address": 0, "group": 5}, noop))["groups"] == [5]
    assert (await driver.tool("group", {"address": 1, "group": 3, "action": "remove"}, noop))["groups"] == []
    assert sim.gear(0).groups == 1 << 5 and sim.gear(1).groups == 0

    # a scene: 40 % stored in two gear, then one GO TO SCENE frame to the bus
    for n in (0, 2):
        stored = await driver.tool("scene", {"address": n, "store": 4, "level": 40}, noop)
        assert stored["level"] == arc_to_percent(220)
    assert sim.gear(0).scenes[4] == 220
    sim.reset_stats()
    await driver.tool("scene", {"broadcast": True, "go": 4}, noop)
    assert sim.frames == 1
    await asyncio.sleep(FADE_TIMES_S[4] + 0.1)
    assert [sim.level(n) for n in (0, 1, 2)] == [220, 170, 220]  # A1 has no scene 4: stays
    await driver.tool("scene", {"address": 0, "remove": 4}, noop)
    assert (await driver.tool("query", {"address": 0}, noop))["scenes"] == {}


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        ("query", {"address": 64}, "address must be a short address 0-63, got 64"),
        ("query", {"address": 9}, "gear A9 did not answer QueryStatus"),
        ("fade", {"address": 1}, "give fade_time"),
        ("fade", {"address": 1, "group": 2, "fade_time": 1}, "give exactly one of address"),
        ("fade", {"group": 1, "fade_rate": 0}, "fade_rate must be 1-15, got 0"),
        ("group", {"address": 1, "group": 16}, "group must be 0-15"),
        ("scene", {"address": 1, "store": 2}, "level must be 0-100 %"),
        ("scene", {"address": 1, "go": 2, "remove": 2}, "give exactly one of store"),
        ("blink", {}, "unknown dali tool 'blink'"),
    ],
)
async def test_tool_errors(driver: DaliDriver, action: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(PointError, match=message.replace("(", r"\(")):
        await driver.tool(action, args, lambda _: None)


async def test_send_twice_at_real_frame_timing() -> None:
    # the LUBA repeats the frame itself (python-dali sets its send-twice flag): well within 100 ms
    async with DaliBusSim(lamps=2, timing=1.0) as sim, DaliDriver(bus(sim.path)) as d:
        await d.tool("fade", {"broadcast": True, "fade_time": 2}, lambda _: None)
        assert [sim.gear(n).fade_time for n in (0, 1)] == [2, 2]
        assert sim.stats.ignored_config == 0


# -- the CLI ------------------------------------------------------------------------------


async def cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_scan_without_a_daemon_writes_a_starter_config(sim: DaliBusSim, tmp_path: Path) -> None:
    sim.add_to_group(0, 2)
    out_file = tmp_path / "starter.yaml"
    rc, out, err = await cli("scan", "dali", "--port", sim.path, "--write-config", str(out_file))
    assert rc == 0, err
    assert "(no daemon: opening luba232:" in err
    assert "free short addresses: 3-63" in err and "Programming short address 6" in err
    assert "7 gear on bus dali1; 4 given a short address now" in out
    assert all(g.short_address is not None for g in sim.bus.gear)
    cfg = edge_config.load(out_file)  # a valid config, as written
    lamps = [d for d in cfg.devices if getattr(d, "address", None) is not None]
    assert len(lamps) == 7 and cfg.buses[0].serial_port == sim.path  # type: ignore[attr-defined]
    assert [p.id for p in lamps[0].points] == ["level", "lamp_failure", "gear_failure", "power_failure"]
    assert {d.id: d.members(cfg.devices) for d in cfg.devices}["dali1-G2"] == ("dali1-L00",)
    # not overwritten
    rc, _, err = await cli("scan", "dali", "--port", sim.path, "--write-config", str(out_file))
    assert rc == 2 and "exists: not overwritten" in err

    rc, out, err = await cli("dali", "query", "3", "--port", sim.path, "--json")
    assert rc == 0, err
    assert json.loads(out)["address"] == 3
    rc, out, err = await cli("dali", "scene", "--port", sim.path, "-a", "1", "--store", "2")
    assert rc == 2 and "--store needs --level" in err
    rc, out, err = await cli("dali", "query", "20", "--port", sim.path)
    assert rc == 2 and "gear A20 did not answer" in err


def edge_yaml(tmp_path: Path, socket: Path, serial_port: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(
        f"""
gateway: {{id: cab-dali-cli}}
mqtt: {{host: 127.0.0.1, port: 1, reconnect_max_s: 1}}
data_dir: {tmp_path / "edge"}
control_socket: {socket}
buses:
  - {{id: dali1, driver: dali, serial_port: {serial_port}}}
devices:
  - {{id: L-0, bus: dali1, address: 0, points: [{{id: level, interval_s: 0.05}}]}}
"""
    )
    return path


async def test_cli_goes_through_the_running_daemon(sim: DaliBusSim, tmp_path: Path) -> None:
    sock = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp")) / "edge.sock"  # AF_UNIX paths are short
    config = edge_yaml(tmp_path, sock, sim.path)
    edge = Edge(edge_config.load(config))
    task = asyncio.create_task(edge.run())
    try:
        poller = edge.pollers["dali1"]
        for _ in range(200):
            if poller.reads_total > 2:
                break
            await asyncio.sleep(0.05)
        assert poller.reads_total > 2
        rc, out, err = await cli("scan", "dali", "--config", str(config), "--json")
        assert rc == 0, err
        assert "(through the running daemon on" in err and "Programming short address 3" in err
        assert json.loads(out)["programmed"] == [3, 4, 5, 6]
        rc, out, err = await cli("dali", "identify", "5", "--socket", str(sock), "--bus", "dali1")
        assert rc == 0, err
        assert "method IDENTIFY DEVICE" in out and sim.identifying(5)
        rc, _, err = await cli("dali", "identify", "5", "--socket", str(sock), "--bus", "nope")
        assert rc == 2 and "unknown bus 'nope' (buses: dali1)" in err
        with pytest.raises(ValueError, match="args must be a JSON object, got list"):
            await edge.op_bus_tool({"bus": "dali1", "action": "query", "args": [1]}, lambda _: None)
        with pytest.raises(ValueError, match="PointError: unknown dali tool 'blink'"):
            await edge.op_bus_tool({"bus": "dali1", "action": "blink"}, lambda _: None)
        before = poller.reads_total
        for _ in range(200):  # the daemon polls on after the tools
            if poller.reads_total > before + 2:
                break
            await asyncio.sleep(0.05)
        assert poller.reads_total > before + 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
