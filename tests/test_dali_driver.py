"""The DALI driver: python-dali's unmodified LUBA serial driver against the bus simulator on a pty."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cnconfig import ConfigError
from drivers import DeviceUnavailable, PointError, PointReading, ProtocolError, PushedUpdate, get_driver
from drivers.dali import (
    DaliBusConfig,
    DaliDeviceConfig,
    DaliDriver,
    DaliPointConfig,
    arc_to_percent,
    percent_to_arc,
)
from drivers.dali.budget import BusBudget
from edge import config as edge_config
from edge.uplink import birth_message
from firmware_sim.dali import FADE_TIMES_S, DaliBusSim
from wire import PointType, Quality

# -- percent <-> arc power ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "arc"),
    [(0, 0), (0.1, 1), (1, 85), (10, 170), (100, 254), (0.01, 1), (40, 220)],
)
def test_log_curve_table(percent: float, arc: int) -> None:
    # IEC 62386-102 Table 3: 0.1 % at 1, 1 % at 85, 10 % at 170, 100 % at 254
    assert percent_to_arc(percent) == arc


@pytest.mark.parametrize("curve", ["logarithmic", "linear"])
def test_curve_ends(curve: Any) -> None:
    assert percent_to_arc(0, curve) == 0
    assert arc_to_percent(0, curve) == 0
    assert percent_to_arc(100, curve) == 254
    assert arc_to_percent(254, curve) == 100
    assert arc_to_percent(127, "linear") == 50


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan")])
def test_percent_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percent_to_arc(bad)


percents = st.floats(min_value=0, max_value=100, allow_nan=False)
curves = st.sampled_from(["logarithmic", "linear"])


@given(percents, percents, curves)
def test_percent_to_arc_is_monotonic(a: float, b: float, curve: Any) -> None:
    lo, hi = sorted((a, b))
    assert percent_to_arc(lo, curve) <= percent_to_arc(hi, curve)


@given(st.integers(0, 253), curves)
def test_arc_to_percent_is_strictly_increasing(n: int, curve: Any) -> None:
    assert arc_to_percent(n, curve) < arc_to_percent(n + 1, curve)


@given(st.integers(0, 254), curves)
def test_arc_round_trips_exactly(n: int, curve: Any) -> None:
    assert percent_to_arc(arc_to_percent(n, curve), curve) == n


@given(percents, curves)
def test_percent_round_trips_within_one_arc_step(p: float, curve: Any) -> None:
    n = percent_to_arc(p, curve)
    assert 0 < n or p == 0
    assert arc_to_percent(max(n - 1, 0), curve) <= p <= arc_to_percent(min(n + 1, 254), curve)


# -- config ---------------------------------------------------------------------------------


def test_point_types_and_defaults() -> None:
    assert DaliPointConfig(id="level", writable=True).value_type() is PointType.FLOAT
    assert DaliPointConfig(id="lamp_failure").value_type() is PointType.BOOL
    assert DaliPointConfig(id="status").value_type() is PointType.INT
    assert DaliPointConfig.model_validate({"id": "lf", "source": "lamp_failure"}).source == "lamp_failure"
    assert get_driver("dali").bus_model is DaliBusConfig


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"id": "d", "bus": "b"},
            "set exactly one of 'address', 'group', 'broadcast: true' or 'sensor_address' (got none)",
        ),
        (
            {"id": "d", "bus": "b", "address": 1, "group": 2},
            "set exactly one of 'address', 'group', 'broadcast: true' or 'sensor_address' "
            "(got address and group)",
        ),
        ({"id": "d", "bus": "b", "sensor_address": 1, "instance": 32}, "less than or equal to 31"),
        (
            {"id": "d", "bus": "b", "sensor_address": 1, "points": [{"id": "level"}]},
            "an occupancy sensor (sensor_address) has only 'presence' points",
        ),
        (
            {"id": "d", "bus": "b", "address": 1, "points": [{"id": "presence"}]},
            "'presence' comes from an occupancy sensor: set 'sensor_address'",
        ),
        ({"id": "d", "bus": "b", "address": 64}, "less than or equal to 63"),
        ({"id": "d", "bus": "b", "group": 16}, "less than or equal to 15"),
        ({"id": "d", "bus": "b", "address": 1, "curve": "square"}, "'logarithmic' or 'linear'"),
        ({"id": "d", "bus": "b", "group": 1, "groups": [2]}, "only a gear with a short 'address'"),
        ({"id": "d", "bus": "b", "address": 1, "groups": [16]}, "less than or equal to 15"),
        (
            {"id": "d", "bus": "b", "group": 1, "points": [{"id": "status"}]},
            "a group device can only have 'colour_temperature', 'level' or 'scene' points",
        ),
        ({"id": "d", "bus": "b", "address": 1, "points": [{"id": "colour"}]}, "'colour' is not a DALI point"),
        (
            {"id": "d", "bus": "b", "address": 1, "points": [{"id": "status", "writable": True}]},
            "source status is read-only",
        ),
    ],
)
def test_device_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DaliDeviceConfig.model_validate(data)


def test_edge_config_with_a_dali_bus(tmp_path: Path) -> None:
    good = textwrap.dedent(
        """\
        gateway:
          id: cab-7
        buses:
          - {id: dali1, driver: dali, interface: luba232, serial_port: /dev/ttyUSB0}
        devices:
          - id: L-1
            bus: dali1
            kind: lamp
            address: 0
            points:
              - {id: level, writable: true, unit: "%", min: 0, max: 100}
              - {id: lamp_failure, interval_s: 60}
          - {id: street-3, bus: dali1, group: 3, points: [{id: level, writable: true}]}
        """
    )
    path = tmp_path / "edge.yaml"
    path.write_text(good)
    cfg = edge_config.load(path)
    assert [d.id for d in cfg.devices] == ["L-1", "street-3"]
    # the birth tells the hub which gear a group or broadcast device reaches with one frame
    with_groups = good.replace("address: 0\n", "address: 0\n    groups: [3, 5]\n")
    with_groups += "  - {id: L-2, bus: dali1, address: 1, groups: [5]}\n"
    with_groups += "  - {id: all, bus: dali1, broadcast: true, points: [{id: level, writable: true}]}\n"
    path.write_text(with_groups)
    cfg = edge_config.load(path)
    members = {d.id: d.members for d in birth_message(cfg, 1).devices}
    assert members == {"L-1": (), "street-3": ("L-1",), "L-2": (), "all": ("L-1", "L-2")}
    bad = good.replace("address: 0", "address: 70").replace("interface: luba232", "interface: hasseb")
    bad = bad.replace("{id: lamp_failure, interval_s: 60}", "{id: lamp_failure, writable: true}")
    bad += "  - {id: L-2, bus: dali1, address: 2, points: [{id: colour}]}\n"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    issues = [str(i).replace(str(path), "edge.yaml") for i in info.value.issues]
    assert issues == [
        "edge.yaml:4: buses[0].interface: Input should be 'luba232'",
        # the bus is invalid, so its devices are not checked further: fix it and see the rest
        "edge.yaml:7: devices[0].bus: unknown bus 'dali1' (buses: none defined)",
        "edge.yaml:13: devices[1].bus: unknown bus 'dali1' (buses: none defined)",
        "edge.yaml:14: devices[2].bus: unknown bus 'dali1' (buses: none defined)",
    ]
    path.write_text(bad.replace("interface: hasseb", "interface: luba232"))
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    issues = [str(i).replace(str(path), "edge.yaml") for i in info.value.issues]
    assert issues == [
        "edge.yaml:9: devices[0].address: Input should be less than or equal to 63",
        "edge.yaml:12: devices[0].points[1].writable: source lamp_failure is read-only: "
        "only level, scene and colour_temperature are writable",
        "edge.yaml:14: devices[2].points[0].id: 'colour' is not a DALI point: use one of level, "
        "actual_level, lamp_failure, gear_failure, power_failure, missing_short_address, status, energy, "
        "power, operating_time, gear_starts, lamp_on_time, lamp_starts, scene, colour_temperature, presence as the id, "
        "or set 'source' to one of them",
    ]


# -- against the simulator ------------------------------------------------------------------


def bus(path: str, **kw: Any) -> DaliBusConfig:
    return DaliBusConfig(id="dali1", serial_port=path, **kw)


ALL_POINTS = tuple(
    DaliPointConfig.model_validate(p)
    for p in (
        {"id": "level", "writable": True, "unit": "%"},
        {"id": "actual_level", "unit": "%"},
        {"id": "lamp_failure"},
        {"id": "gear_failure"},
        {"id": "power_failure"},
        {"id": "status"},
    )
)


def lamp(n: int, **kw: Any) -> DaliDeviceConfig:
    return DaliDeviceConfig(id=f"L-{n}", bus="dali1", kind="lamp", address=n, points=ALL_POINTS, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[DaliBusSim]:
    async with DaliBusSim(lamps=64, timing=0) as s:
        yield s


@pytest.fixture
async def driver(sim: DaliBusSim) -> AsyncIterator[DaliDriver]:
    async with DaliDriver(bus(sim.path)) as d:
        yield d


def values(readings: list[Any]) -> dict[str, Any]:
    return {r.point: r.value for r in readings}


async def test_read_levels_and_status(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.gear(5).go_to(170, 0, fade=False)  # 10.09 %
    got = values(await driver.read(lamp(5), ALL_POINTS))
    assert got == {
        "level": 10.0914,
        "actual_level": 10.0914,
        "lamp_failure": False,
        "gear_failure": False,
        "power_failure": False,  # cleared by the arc power command above
        "status": 0x04,  # lamp on
    }
    fresh = values(await driver.read(lamp(6), ALL_POINTS))
    assert fresh["level"] == 100.0
    assert fresh["power_failure"] is True  # set since power-on (IEC 62386-102 status bit 7)
    # one QUERY ACTUAL LEVEL and one QUERY STATUS per read, whatever the points
    assert sim.frames == 4


async def test_linear_curve_device(sim: DaliBusSim, driver: DaliDriver) -> None:
    dev = lamp(2, curve="linear")
    assert await driver.write(dev, ALL_POINTS[0], 50) == pytest.approx(50, abs=0.4)
    assert sim.level(2) == 127


async def test_write_40_percent_fades_to_the_right_arc_level(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.set_fade_time(3, 1)  # 0.7 s (IEC 62386-102 Table 5)
    dev = lamp(3)
    back = await driver.write(dev, ALL_POINTS[0], 40)
    assert back == pytest.approx(40, rel=0.02)  # the level it is fading to
    assert sim.fading(3)
    during = values(await driver.read(dev, ALL_POINTS[:2]))
    assert during["level"] == back  # where it is going
    assert during["actual_level"] > 40  # still on its way down from 100 %
    await asyncio.sleep(FADE_TIMES_S[1] + 0.05)
    assert sim.level(3) == percent_to_arc(40) == 220
    after = values(await driver.read(dev, ALL_POINTS[:2]))
    assert after["level"] == after["actual_level"] == back


async def test_write_0_is_off_and_limits_clamp(sim: DaliBusSim, driver: DaliDriver) -> None:
    assert await driver.write(lamp(1), ALL_POINTS[0], 0) == 0
    assert sim.level(1) == 0
    sim.gear(4).min_level = 170  # 10.09 %
    assert await driver.write(lamp(4), ALL_POINTS[0], 1) == 10.0914  # gear clamps to MIN LEVEL
    with pytest.raises(PointError, match="read-only"):
        await driver.write(lamp(4), ALL_POINTS[1], 10)
    with pytest.raises(PointError, match="outside"):
        await driver.write(lamp(4), ALL_POINTS[0], 101)


async def test_lamp_failure_sets_the_status_bit(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.fail_lamp(7)
    got = {r.point: r for r in await driver.read(lamp(7), ALL_POINTS)}
    assert got["lamp_failure"].value is True
    assert got["status"].value & 0x02
    assert got["level"].quality is Quality.DEVICE_ERROR
    assert "MASK" in got["level"].error
    with pytest.raises(PointError, match="lamp failure"):
        await driver.write(lamp(7), ALL_POINTS[0], 50)
    sim.repair_lamp(7)
    assert values(await driver.read(lamp(7), ALL_POINTS))["lamp_failure"] is False
    sim.fail_gear(8)
    assert values(await driver.read(lamp(8), ALL_POINTS))["gear_failure"] is True


async def test_missing_gear_is_unavailable_and_recovers(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.disconnect(9)
    with pytest.raises(DeviceUnavailable, match=r"L-9 \(A9\) .* no answer to"):
        await driver.read(lamp(9), ALL_POINTS)
    assert sim.frames == 2  # one retry
    sim.disconnect(9, gone=False)
    assert values(await driver.read(lamp(9), ALL_POINTS))["level"] == 100.0


async def test_two_gear_on_one_address_is_a_protocol_error(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.gear(11).short_address = 10
    with pytest.raises(ProtocolError, match="framing error: several gear answered"):
        await driver.read(lamp(10), ALL_POINTS)
    assert sim.stats.collisions == 2  # asked again (retries: 1), garbled again: not a value


async def test_broadcast_to_64_lamps_is_one_frame(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.reset_stats()
    assert await driver.set_level(40) == 220
    assert sim.frames == 1
    assert {sim.level(n) for n in range(64)} == {220}
    for n in (1, 2, 3):
        sim.add_to_group(n, 5)
    street = DaliDeviceConfig(id="street", bus="dali1", group=5, points=(ALL_POINTS[0],))
    assert await driver.write(street, ALL_POINTS[0], 10) == 10.0914  # arc 170
    assert sim.frames == 2
    assert [sim.level(n) for n in range(5)] == [220, 170, 170, 170, 220]
    assert values(await driver.read(street, (ALL_POINTS[0],))) == {"level": 10.0914}
    assert sim.frames == 2  # a group is not queried


PRESENCE = DaliPointConfig(id="presence")


def sensor(n: int, instance: int = 0) -> DaliDeviceConfig:
    return DaliDeviceConfig(
        id=f"S-{n}", bus="dali1", kind="sensor", sensor_address=n, instance=instance, points=(PRESENCE,)
    )


async def next_update(updates: AsyncIterator[PushedUpdate]) -> PushedUpdate:
    return await asyncio.wait_for(anext(updates), 5)


async def test_occupancy_events_become_presence_updates() -> None:
    async with (
        DaliBusSim(lamps=2, sensors=3, timing=0) as sim,
        DaliDriver(bus(sim.path), [lamp(0), sensor(0), sensor(2)]) as d,
    ):
        assert await d.read(sensor(2), (PRESENCE,)) == [
            PointReading("presence", None, Quality.STALE, "no event from D2.I0 yet")
        ]
        updates = d.updates()
        sim.occupancy(2)
        u = await next_update(updates)
        assert (u.device, u.reading, u.event) == ("S-2", PointReading("presence", True), "presence")
        assert abs(u.ts_ms - time.time() * 1000) < 5000
        sim.occupancy(1)  # not configured: ignored
        sim.occupancy(0, occupied=False)
        u = await next_update(updates)
        assert (u.device, u.reading.value) == ("S-0", False)
        assert values(await d.read(sensor(2), (PRESENCE,))) == {"presence": True}
        assert sim.stats.forward_frames == 3  # the event frames share the bus with the master's

        # The master reconnects (port reopened after an error): events keep coming.
        d._close()
        assert values(await d.read(lamp(0), ALL_POINTS[:1])) == {"level": 100.0}
        sim.occupancy(2, occupied=False)
        u = await next_update(updates)
        assert (u.device, u.reading.value) == ("S-2", False)
    with pytest.raises(StopAsyncIteration):  # closing the driver ends the iterator
        await next_update(updates)


ENERGY = DaliPointConfig(id="energy", unit="Wh", interval_s=900)
POWER = DaliPointConfig(id="power", unit="W", interval_s=900)


async def test_d4i_energy_and_power_from_memory_bank_202(sim: DaliBusSim, driver: DaliDriver) -> None:
    g = sim.gear(4)
    g.set_energy(12345.6, asyncio.get_running_loop().time())  # a lamp that has run for years
    got = values(await driver.read(lamp(4), (ENERGY, POWER)))
    assert got["power"] == 60.0  # rated 60 W at 100 %
    assert got["energy"] == pytest.approx(sim.energy_wh(4), abs=0.05)  # scale -1: 0.1 Wh
    assert got["energy"] >= 12345.6
    sim.reset_stats()
    await driver.read(lamp(4), (ENERGY,))
    # DTR1, DTR0, then 7 READ MEMORY LOCATION (scale byte + 6 bytes): the value is read rarely
    assert sim.frames == 9

    # at 10 % light (arc 170) the power is 10 % of the rated power
    await driver.write(lamp(4), ALL_POINTS[0], 10)
    assert values(await driver.read(lamp(4), (POWER,))) == {"power": 6.1}
    # another scale: 0.01 W and 10 Wh resolution
    g.power_scale, g.energy_scale = -2, 1
    got = values(await driver.read(lamp(4), (ENERGY, POWER)))
    assert got["power"] == round(60 * arc_to_percent(170) / 100, 2)
    assert got["energy"] == round(sim.energy_wh(4), -1)


async def test_d4i_energy_is_the_integral_of_power(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.gear(1).energy_scale = -3  # mWh
    before = values(await driver.read(lamp(1), (ENERGY,)))["energy"]
    t0 = time.monotonic()
    await asyncio.sleep(0.5)
    after = values(await driver.read(lamp(1), (ENERGY,)))["energy"]
    elapsed = time.monotonic() - t0
    # 60 W for ~0.5 s is ~8.3 mWh
    assert after - before == pytest.approx(60 * elapsed / 3600, abs=0.002)


async def test_gear_without_d4i(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.gear(2).d4i = False
    readings = await driver.read(lamp(2), (ENERGY, ALL_POINTS[0]))
    assert readings[0].quality is Quality.DEVICE_ERROR
    assert "no D4i memory bank 202" in readings[0].error
    assert readings[1] == PointReading("level", 100.0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bus_budget_counts_a_sliding_window() -> None:
    clock = FakeClock()
    b = BusBudget(window_s=10, clock=clock)
    clock.t += 20
    assert b.snapshot()["utilisation"] == 0
    assert b.snapshot()["max_frames_per_s"] == 30.0  # an idle bus: all commands
    b.record("command", 100)  # 100 commands and 100 queries in 10 s
    b.record("query", 100)
    snap = b.snapshot()
    assert snap["frames_per_s"] == 20.0
    assert (snap["commands_per_s"], snap["queries_per_s"]) == (10.0, 10.0)
    assert snap["utilisation"] == round(10 / 30 + 10 / 25, 3)  # 73 % of the bus time
    assert snap["max_frames_per_s"] == round(2 / (1 / 30 + 1 / 25), 1)  # 27.3 at this mix
    assert (snap["max_commands_per_s"], snap["max_queries_per_s"]) == (30, 25)
    clock.t += 10.5
    b.record("event")
    snap = b.snapshot()
    assert (snap["frames_per_s"], snap["events_per_s"], snap["frames_total"]) == (0.1, 0.1, 201)


def test_bus_budget_over_a_short_uptime() -> None:
    clock = FakeClock()
    b = BusBudget(window_s=10, clock=clock)
    clock.t += 2
    b.record("query", 50)  # 25 queries/s for 2 s: the bus is full
    snap = b.snapshot()
    assert (snap["window_s"], snap["queries_per_s"], snap["utilisation"]) == (2.0, 25.0, 1.0)


async def test_driver_budget_at_real_timing() -> None:
    async with DaliBusSim(lamps=4, timing=1.0) as s, DaliDriver(bus(s.path)) as d:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            await d.read(lamp(0), ALL_POINTS[:1])
        snap = d.budget()
        # one QUERY ACTUAL LEVEL after the other: the bus is (nearly) full
        assert 15 <= snap["queries_per_s"] <= 30, snap
        assert snap["commands_per_s"] == 0
        assert 0.6 <= snap["utilisation"] <= 1.25, snap
        assert snap["frames_total"] == s.frames


async def test_no_master_is_unavailable(tmp_path: Path) -> None:
    async with DaliDriver(bus(str(tmp_path / "ttyNONE"), connect_timeout_s=0.5)) as d:
        with pytest.raises(DeviceUnavailable, match="did not come up"):
            await d.read(lamp(0), ALL_POINTS)


async def test_real_frame_timing() -> None:
    async with DaliBusSim(lamps=4, timing=1.0) as s, DaliDriver(bus(s.path)) as d:
        t0 = time.monotonic()
        for n in range(4):
            await d.read(lamp(n), ALL_POINTS[:1])
        per_query = (time.monotonic() - t0) / 4
        # start + 16 + 2 stop bits, 7 ms settling, start + 8 + 2 stop bits at 1200 bit/s, 2.4 ms
        assert 0.030 < per_query < 0.060


async def test_sim_cli_prints_the_pty_and_serves_it() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_sim.cli",
        "dali",
        "--lamps",
        "63",
        "--unaddressed",
        "1",
        "--timing",
        "0",
        "--sensors",
        "2",
        "--occupancy-every",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("dali-sim ready /dev/pts/") and "lamps=63 sensors=2 unaddressed=1" in line
        async with DaliDriver(bus(line.split()[2]), [sensor(0), sensor(1)]) as d:
            assert values(await d.read(lamp(62), ALL_POINTS[:1])) == {"level": 100.0}
            everyone = DaliDeviceConfig(id="all", bus="dali1", broadcast=True, points=(MISSING,))
            assert values(await d.read(everyone, (MISSING,))) == {"missing_short_address": True}
            # the sensors take turns: S-0 occupied, S-1 occupied, S-0 vacant, ...
            seen = [(u.device, u.reading.value) async for u in _take(d.updates(), 3)]
            assert len(seen) == 3 and {dev for dev, _ in seen} == {"S-0", "S-1"}, seen
    finally:
        proc.terminate()
        assert await proc.wait() == 0


async def _take(updates: AsyncIterator[PushedUpdate], n: int) -> AsyncIterator[PushedUpdate]:
    for _ in range(n):
        yield await next_update(updates)


# -- D4i diagnostics (banks 205/206), status bits as alarms, garbled answers -------------------

DIAG = tuple(
    DaliPointConfig.model_validate({"id": name, "interval_s": 3600})
    for name in ("operating_time", "gear_starts", "lamp_on_time", "lamp_starts")
)


async def test_d4i_diagnostics_from_banks_205_and_206(sim: DaliBusSim, driver: DaliDriver) -> None:
    now = asyncio.get_running_loop().time()
    g = sim.gear(6)
    g.set_times(now, operating_s=40_000 * 3600, lamp_on_s=12_000 * 3600)  # years on the street
    assert all(p.value_type() is PointType.INT for p in DIAG)
    got = values(await driver.read(lamp(6), DIAG))
    assert got["operating_time"] == pytest.approx(40_000 * 3600, abs=2)  # seconds, whole ones
    assert got["lamp_on_time"] == pytest.approx(12_000 * 3600, abs=2)
    assert (got["gear_starts"], got["lamp_starts"]) == (1, 0)  # powered once, lit since before

    # the lamp goes off and on twice; the mains is switched off and on once
    for _ in range(2):
        await driver.write(lamp(6), ALL_POINTS[0], 0)
        await driver.write(lamp(6), ALL_POINTS[0], 50)
    sim.power_cycle(6)
    t0 = time.monotonic()
    before = values(await driver.read(lamp(6), DIAG))
    await driver.write(lamp(6), ALL_POINTS[0], 0)  # off: the lamp's on time stops counting
    await asyncio.sleep(1.2)
    after = values(await driver.read(lamp(6), DIAG))
    elapsed = time.monotonic() - t0
    assert (after["gear_starts"], after["lamp_starts"]) == (2, 2)
    assert after["operating_time"] - before["operating_time"] in (int(elapsed), int(elapsed) + 1)
    assert after["lamp_on_time"] - before["lamp_on_time"] <= 1
    assert after["operating_time"] == int(sim.gear(6).operating_s(asyncio.get_running_loop().time()))
    sim.reset_stats()
    await driver.read(lamp(6), DIAG[:1])
    assert sim.frames == 2 + 4  # DTR1, DTR0, 4 x READ MEMORY LOCATION: read rarely

    sim.gear(7).diagnostics = False
    (reading,) = await driver.read(lamp(7), DIAG[:1])
    assert reading.quality is Quality.DEVICE_ERROR and "no D4i memory bank 205" in reading.error


async def test_status_bit_points_are_alarms_by_default(tmp_path: Path) -> None:
    p = DaliPointConfig.model_validate({"id": "gear_failure"})
    assert p.alarm == "gear_failure"
    assert DaliPointConfig.model_validate({"id": "pf", "source": "power_failure"}).alarm == "power_failure"
    assert DaliPointConfig.model_validate({"id": "lamp_failure", "alarm": None}).alarm is None
    assert DaliPointConfig.model_validate({"id": "status"}).alarm is None
    # a gear without points gets its level and its fault bits, each an alarm
    dev = DaliDeviceConfig.model_validate({"id": "L", "bus": "b", "address": 3})
    assert [(p.id, p.alarm, p.writable) for p in dev.points] == [
        ("level", None, True),
        ("lamp_failure", "lamp_failure", False),
        ("gear_failure", "gear_failure", False),
        ("power_failure", "power_failure", False),
    ]
    assert DaliDeviceConfig.model_validate({"id": "L", "bus": "b", "address": 3, "points": []}).points == ()
    bc = DaliDeviceConfig.model_validate(
        {"id": "all", "bus": "b", "broadcast": True, "points": [{"id": "missing_short_address"}]}
    )
    assert bc.points[0].alarm == "missing_short_address"
    with pytest.raises(
        ValidationError, match="a group device can only have 'colour_temperature', 'level' or 'scene' points"
    ):
        DaliDeviceConfig.model_validate(
            {"id": "g", "bus": "b", "group": 1, "points": [{"id": "missing_short_address"}]}
        )


MISSING = DaliPointConfig(id="missing_short_address")


async def test_gear_without_a_short_address_on_the_bus() -> None:
    async with DaliBusSim(lamps=4, timing=0) as sim, DaliDriver(bus(sim.path)) as driver:
        everyone = DaliDeviceConfig(id="all", bus="dali1", broadcast=True, points=(MISSING,))
        assert values(await driver.read(everyone, (MISSING,))) == {"missing_short_address": False}
        new = sim.add_gear()  # a lamp replaced: the new gear comes without a short address
        assert values(await driver.read(everyone, (MISSING,))) == {"missing_short_address": True}
        sim.add_gear()  # two of them answer at once: a framing error, still a YES
        assert values(await driver.read(everyone, (MISSING,))) == {"missing_short_address": True}
        assert await driver.tool("scan", {"addresses": [10, 11]}, lambda _: None)
        assert new.short_address in (10, 11)  # in the order of their random addresses
        assert values(await driver.read(everyone, (MISSING,))) == {"missing_short_address": False}
        d = DaliDriver(bus(sim.path), [everyone, lamp(2)])
        assert "scan dali --bus dali1" in d.describe("all", MISSING)
        assert d.describe("L-2", ALL_POINTS[2]) == "A2 QUERY STATUS bit 1 lamp failure"
        assert d.describe("L-2", ALL_POINTS[0]) == ""


async def test_power_cycle_sets_the_power_failure_bit(sim: DaliBusSim, driver: DaliDriver) -> None:
    await driver.write(lamp(1), ALL_POINTS[0], 10)
    assert values(await driver.read(lamp(1), ALL_POINTS))["power_failure"] is False
    sim.power_cycle(1)
    got = values(await driver.read(lamp(1), ALL_POINTS))
    assert (got["power_failure"], got["level"]) == (True, 100.0)  # back at its power-on level


async def test_a_garbled_answer_is_asked_again_and_never_a_value(sim: DaliBusSim, driver: DaliDriver) -> None:
    sim.garble(3, times=1)  # noise on one answer: the repeat is good
    assert values(await driver.read(lamp(3), ALL_POINTS[:1])) == {"level": 100.0}
    assert (sim.stats.garbled, sim.stats.collisions) == (1, 0)
    sim.garble(3)  # every answer garbled: a ProtocolError, not a value
    with pytest.raises(ProtocolError, match=r"L-3 \(A3\): garbled answer to .* 2 of 2 times"):
        await driver.read(lamp(3), ALL_POINTS)
    with pytest.raises(ProtocolError, match="garbled answer reading memory"):
        await driver.read(lamp(3), (ENERGY,))
    with pytest.raises(ProtocolError, match="garbled answer to QueryStatus"):
        await driver.tool("query", {"address": 3}, lambda _: None)
    sim.garble(3, times=0)
    assert values(await driver.read(lamp(3), ALL_POINTS[:1])) == {"level": 100.0}


async def test_a_cancel_lost_inside_python_dali_still_stops_the_driver(
    sim: DaliBusSim, driver: DaliDriver
) -> None:
    # python-dali's wait_for can swallow a cancel that arrives with the frame (Python 3.11):
    # the next exchange must still end the task, or a stopping poller would poll on.
    async def poll_after_a_lost_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # what wait_for does when the awaited frame is there at the same moment
        await driver.read(lamp(1), ALL_POINTS[:1])
        raise AssertionError("the driver went on after the task was cancelled")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(poll_after_a_lost_cancel())
    assert values(await driver.read(lamp(1), ALL_POINTS[:1])) == {"level": 100.0}  # still usable


SCENE = DaliPointConfig(id="scene", writable=True)


async def test_scene_point_recalls_stored_levels_with_one_frame(sim: DaliBusSim, driver: DaliDriver) -> None:
    assert (SCENE.value_type(), SCENE.min, SCENE.max) == (PointType.INT, 0, 15)
    with pytest.raises(ValidationError, match=r"a scene is 0\.\.15, max 16\.0 is outside"):
        DaliPointConfig.model_validate({"id": "scene", "max": 16})
    for n, level in ((1, 170), (2, 220)):  # scene 3 stored in two gear of group 4 (commissioning)
        await driver.tool("scene", {"address": n, "store": 3, "level": arc_to_percent(level)}, lambda _: None)
        sim.add_to_group(n, 4)
    sim.add_to_group(5, 4)  # a member without scene 3: it stays where it is
    street = DaliDeviceConfig(id="street", bus="dali1", group=4, points=(ALL_POINTS[0], SCENE))
    assert await driver.read(street, (SCENE,)) == [
        PointReading("scene", None, Quality.STALE, "no scene commanded to G4 yet")
    ]
    await driver.write(street, ALL_POINTS[0], 50)
    sim.reset_stats()
    assert await driver.write(street, SCENE, 3) == 3
    assert sim.frames == 1  # GO TO SCENE 3 to group 4
    assert [sim.level(n) for n in (1, 2, 5)] == [170, 220, percent_to_arc(50)]
    got = {r.point: r for r in await driver.read(street, (ALL_POINTS[0], SCENE))}
    assert got["scene"].value == 3
    assert got["level"].quality is Quality.STALE  # the group's level is the scenes' now
    assert values(await driver.read(lamp(1), ALL_POINTS[:1])) == {"level": arc_to_percent(170)}
    for bad in (16, 2.5, True):
        with pytest.raises(PointError, match="is not a scene number 0-15"):
            await driver.write(street, SCENE, bad)


TC = DaliPointConfig(id="colour_temperature", unit="K", writable=True)


async def test_dt8_colour_temperature(sim: DaliBusSim, driver: DaliDriver) -> None:
    assert TC.value_type() is PointType.INT
    for n in (1, 2):
        sim.gear(n).colour_tc = True  # DT8 gear with colour temperature (IEC 62386-209)
    assert values(await driver.read(lamp(1), (TC,))) == {"colour_temperature": 4000}
    assert await driver.write(lamp(1), TC, 3000) == 3003  # 333 mirek
    assert sim.gear(1).tc_mirek == 333
    assert await driver.write(lamp(1), TC, 10000) == 6536  # clamped to the gear's coolest
    # a group: one set of frames, every DT8 member follows; a plain LED gear ignores it
    for n in (1, 2, 3):
        sim.add_to_group(n, 6)
    street = DaliDeviceConfig(id="street", bus="dali1", group=6, points=(TC,))
    assert await driver.read(street, (TC,)) == [
        PointReading("colour_temperature", None, Quality.STALE, "no colour temperature commanded to G6 yet")
    ]
    assert await driver.write(street, TC, 2700) == 2703
    assert [sim.gear(n).tc_mirek for n in (1, 2)] == [370, 370]
    assert values(await driver.read(street, (TC,))) == {"colour_temperature": 2703}
    (plain,) = await driver.read(lamp(3), (TC,))
    assert plain.quality is Quality.DEVICE_ERROR and "no DT8 colour temperature" in plain.error
    with pytest.raises(PointError, match="reports no DT8 colour temperature"):
        await driver.write(lamp(3), TC, 3000)
    with pytest.raises(PointError, match="not a colour temperature in kelvin"):
        await driver.write(lamp(1), TC, 500)
    info = await driver.tool("query", {"address": 2}, lambda _: None)
    assert info["device_types"] == [8]
