"""The Modbus driver against the real cabinet simulator over TCP and over an RTU pty."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from drivers import DeviceUnavailable, PointError, ProtocolError, get_driver
from drivers.modbus import (
    ModbusBusConfig,
    ModbusDeviceConfig,
    ModbusDriver,
    ModbusPointConfig,
    plan_blocks,
)
from firmware_sim.modbus import CabinetSim
from wire import PointType, Quality


def bus(port: int, **kw: Any) -> ModbusBusConfig:
    return ModbusBusConfig.model_validate(
        {
            "id": "cab",
            "driver": "modbus",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.3,
            "retries": 1,
            **kw,
        }
    )


def pt(id: str, register: str, address: int, **kw: Any) -> ModbusPointConfig:
    return ModbusPointConfig.model_validate({"id": id, "register": register, "address": address, **kw})


def dev(*points: ModbusPointConfig, unit: int = 1) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(id="c1", bus="cab", unit=unit, kind="lamp", points=points)


def lamp_points(lamps: int) -> list[ModbusPointConfig]:
    out = []
    for n in range(lamps):
        out += [
            pt(f"l{n}.set", "holding", 100 + 10 * n, unit="%", writable=True, min=0, max=100),
            pt(f"l{n}.level", "input", 100 + 10 * n, unit="%"),
            pt(f"l{n}.power", "input", 101 + 10 * n, scale=0.1, unit="W"),
            pt(f"l{n}.energy", "input", 102 + 10 * n, type="u32", unit="Wh"),
        ]
    return out


@pytest.fixture
async def sim() -> AsyncIterator[CabinetSim]:
    async with CabinetSim(lamps=8, delay_s=0) as s:
        yield s


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"transport": "tcp"}, "transport tcp requires 'host'"),
        ({"transport": "rtu"}, "transport rtu requires 'serial_port'"),
        ({"transport": "tcp", "host": "h", "baudrate": 19200}, "'baudrate' only apply to transport rtu"),
        ({"transport": "rtu", "serial_port": "/dev/x", "host": "h"}, "'host' only apply to transport tcp"),
        ({"transport": "tcp", "host": "h", "max_block_registers": 126}, "less than or equal to 125"),
        ({"transport": "tcp", "host": "h", "colour": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bus_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusBusConfig.model_validate({"id": "b", "driver": "modbus", **data})


def test_bus_defaults_follow_the_serial_spec() -> None:
    b = ModbusBusConfig.model_validate({"id": "b", "transport": "rtu", "serial_port": "/dev/ttyS1"})
    assert (b.baudrate, b.parity, b.stopbits, b.bytesize) == (9600, "E", 1, 8)
    assert (b.max_block_registers, b.max_block_bits, b.max_gap) == (125, 2000, 0)
    assert get_driver("modbus").bus_model is ModbusBusConfig


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"register": "holding", "address": 1, "type": "bool"},
            "type bool needs register coil or discrete, not holding",
        ),
        (
            {"register": "coil", "address": 1, "type": "u16"},
            "register coil holds bits: type must be bool, not u16",
        ),
        ({"register": "input", "address": 1, "writable": True}, "register input is read-only"),
        ({"register": "discrete", "address": 1, "writable": True}, "register discrete is read-only"),
        ({"register": "holding", "address": 65535, "type": "u32"}, "u32 at address 65535 runs past 65535"),
        ({"register": "holding", "address": 65536}, "less than or equal to 65535"),
        ({"register": "holding", "address": 1, "scale": 0}, "scale must be finite and non-zero"),
        ({"register": "holding", "address": 1, "type": "u64"}, "type"),
    ],
)
def test_point_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusPointConfig.model_validate({"id": "p", **data})


def test_value_types() -> None:
    assert pt("a", "coil", 0).value_type() is PointType.BOOL
    assert pt("b", "holding", 0, type="i32").value_type() is PointType.INT
    assert pt("c", "holding", 0, scale=0.1).value_type() is PointType.FLOAT
    assert pt("d", "input", 0, type="f32").value_type() is PointType.FLOAT


def test_device_rejects_overlaps_and_broadcast_unit() -> None:
    with pytest.raises(ValidationError, match="points 'e' and 'x' overlap at input 103"):
        dev(pt("e", "input", 102, type="u32"), pt("x", "input", 103))
    dev(pt("h", "holding", 102, type="u32"), pt("i", "input", 103))  # other table: fine
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModbusDeviceConfig(id="d", bus="b", unit=0)


def test_plan_blocks_respects_gap_and_size() -> None:
    points = [
        pt("a", "holding", 0),
        pt("b", "holding", 2, type="u32"),
        pt("c", "holding", 10),
        pt("d", "coil", 5),
        pt("e", "coil", 6),
    ]
    tight = plan_blocks(points, max_registers=125, max_bits=2000, max_gap=0)
    assert [b.label for b in tight] == ["coil 5-6", "holding 0-0", "holding 2-3", "holding 10-10"]
    loose = plan_blocks(points, max_registers=125, max_bits=2000, max_gap=6)
    assert [b.label for b in loose] == ["coil 5-6", "holding 0-10"]
    small = plan_blocks(points, max_registers=4, max_bits=2000, max_gap=6)
    assert [b.label for b in small] == ["coil 5-6", "holding 0-3", "holding 10-10"]


# -- reading -----------------------------------------------------------------------------------


async def test_block_grouping_counts_requests(sim: CabinetSim) -> None:
    points = lamp_points(8)
    device = dev(*points)
    async with ModbusDriver(bus(sim.tcp_port, max_gap=9), [device]) as drv:
        readings = await drv.read(device, points)
        assert sim.request_count == 2  # holding 100-170 and input 100-173
        assert sorted(sim.request_log) == [(3, 100, 71), (4, 100, 74)]
        assert [r.point for r in readings] == [p.id for p in points]
        assert all(r.quality is Quality.GOOD for r in readings)
        assert [r.value for r in readings[:4]] == [100, 100, pytest.approx(60.0), 0]
    sim.reset_counters()
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:  # max_gap 0: one per lamp
        await drv.read(device, points)
        assert sim.request_count == 16


async def test_spanning_a_gap_gives_device_error_for_that_block_only(sim: CabinetSim) -> None:
    volts = pt("volts", "input", 0, scale=0.1)
    energy = pt("energy", "input", 2, type="f32")
    door = pt("door", "discrete", 0)
    device = dev(volts, energy, door)
    async with ModbusDriver(bus(sim.tcp_port, max_gap=1), [device]) as drv:
        r = await drv.read(device, [volts, energy, door])
    assert [x.quality for x in r] == [Quality.DEVICE_ERROR, Quality.DEVICE_ERROR, Quality.GOOD]
    assert r[0].error == "exception 2 ILLEGAL DATA ADDRESS at input 0-3"
    assert r[2].value is False


async def test_out_of_range_keeps_the_value(sim: CabinetSim) -> None:
    level = pt("level", "input", 100, max=50)
    device = dev(level)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        (r,) = await drv.read(device, [level])
    assert (r.value, r.quality) == (100, Quality.OUT_OF_RANGE)


async def test_failed_lamp_and_door_are_read(sim: CabinetSim) -> None:
    sim.fail_lamp(5)
    sim.set_door(True)
    points = [
        pt("door", "discrete", 0),
        pt("fail5", "discrete", 150),
        pt("fail4", "discrete", 140),
        pt("level5", "input", 150),
    ]
    device = dev(*points)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        r = await drv.read(device, points)
    assert [x.value for x in r] == [True, True, False, 0]


# -- data types and writes ---------------------------------------------------------------------


CASES = [
    ("u16", "big", 1, 0, 65535, [65535]),
    ("i16", "big", 1, 0, -2, [0xFFFE]),
    ("u32", "big", 1, 0, 70000, [1, 4464]),
    ("u32", "little", 1, 0, 70000, [4464, 1]),
    ("i32", "big", 1, 0, -70000, [0xFFFE, 0xEE90]),
    ("i32", "little", 1, 0, -70000, [0xEE90, 0xFFFE]),
    ("f32", "big", 1, 0, 1.5, list(struct.unpack(">HH", struct.pack(">f", 1.5)))),
    ("f32", "little", 1, 0, 1.5, list(struct.unpack(">HH", struct.pack(">f", 1.5)))[::-1]),
    ("i16", "big", 0.1, -40, -12.3, [277]),  # raw 277 * 0.1 - 40
    ("u32", "little", 0.01, 0, 1234.56, [123456 & 0xFFFF, 123456 >> 16]),
]


@pytest.mark.parametrize(("type_", "order", "scale", "offset", "value", "words"), CASES)
async def test_every_type_round_trips(
    sim: CabinetSim,
    type_: str,
    order: str,
    scale: float,
    offset: float,
    value: float,
    words: list[int],
) -> None:
    p = pt("x", "holding", 1004, type=type_, word_order=order, scale=scale, offset=offset, writable=True)
    device = dev(p)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        back = await drv.write(device, p, value)
        assert back == pytest.approx(value)
        assert sim.cabinet.holding_scratch[4 : 4 + len(words)] == words
        (r,) = await drv.read(device, [p])
        assert r.value == pytest.approx(value)
    fc = 6 if len(words) == 1 else 16
    assert sim.requests[fc] == 1


async def test_write_level_changes_the_lamp_and_reads_back(sim: CabinetSim) -> None:
    points = lamp_points(2)
    device = dev(*points)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        assert await drv.write(device, points[4], 35) == 35
        assert sim.level(1) == 35
        r = await drv.read(device, points[4:7])
        assert [x.value for x in r] == [35, 35, pytest.approx(21.0)]


async def test_coil_write_switches_the_contactor(sim: CabinetSim) -> None:
    contactor = pt("contactor", "coil", 0, writable=True)
    device = dev(contactor)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        assert await drv.write(device, contactor, False) is False
    assert sim.level(0) == 0 and sim.requests[5] == 1


async def test_rejected_writes_do_not_touch_the_device(sim: CabinetSim) -> None:
    level = pt("set", "holding", 100, writable=True, min=0, max=100)
    actual = pt("level", "input", 100)
    raw = pt("raw", "holding", 110, writable=True)
    small = pt("small", "holding", 1000, type="i16", writable=True)
    device = dev(level, actual, raw, small)
    async with ModbusDriver(bus(sim.tcp_port), [device]) as drv:
        with pytest.raises(PointError, match=r"c1.set: 120 is outside \[0.0, 100.0\]"):
            await drv.write(device, level, 120)
        with pytest.raises(PointError, match=r"c1\.level is read-only"):
            await drv.write(device, actual, 1)
        with pytest.raises(PointError, match="outside i16 range"):
            await drv.write(device, small, 40000)
        with pytest.raises(PointError, match="takes a number"):
            await drv.write(device, small, True)
        assert sim.request_count == 0
        # the device itself refuses: exception 3 from the cabinet
        with pytest.raises(PointError, match="exception 3 ILLEGAL DATA VALUE at holding 110"):
            await drv.write(device, raw, 101)
    assert sim.setpoint(0) == 100 and sim.setpoint(1) == 100


# -- faults ------------------------------------------------------------------------------------


async def test_exception_fault_gives_device_error(sim: CabinetSim) -> None:
    points = lamp_points(2)
    device = dev(*points)
    async with ModbusDriver(bus(sim.tcp_port, max_gap=9), [device]) as drv:
        sim.set_fault("exception", 4)
        r = await drv.read(device, points)
    assert {x.quality for x in r} == {Quality.DEVICE_ERROR}
    assert r[0].error == "exception 4 SLAVE DEVICE FAILURE at holding 100-110"


async def test_no_answer_raises_within_the_timeout_then_recovers(
    sim: CabinetSim, caplog: pytest.LogCaptureFixture
) -> None:
    p = pt("set", "holding", 100)
    device = dev(p)
    b = bus(sim.tcp_port, timeout_s=0.2, retries=1)
    caplog.set_level(logging.DEBUG, logger="drivers.modbus")
    async with ModbusDriver(b, [device]) as drv:
        sim.set_fault("no_answer")
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(DeviceUnavailable, match="no answer to read holding 100-100"):
                await drv.read(device, [p])
            assert time.monotonic() - started < 0.2 * 2 + 0.15
        sim.set_fault("none")
        (r,) = await drv.read(device, [p])
        assert r.value == 100
    messages = [rec.getMessage() for rec in caplog.records if rec.name.startswith("drivers.modbus")]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1


async def test_device_down_then_up(port: int) -> None:
    p = pt("set", "holding", 100)
    device = dev(p)
    async with ModbusDriver(bus(port, timeout_s=0.3), [device]) as drv:
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable):
            await drv.read(device, [p])
        assert time.monotonic() - started < 0.3 * 2 + 0.15
        async with CabinetSim(lamps=1, port=port, delay_s=0):
            (r,) = await drv.read(device, [p])
            assert r.value == 100
        with pytest.raises(DeviceUnavailable):  # the sim went away mid-session
            await drv.read(device, [p])


async def test_rtu_over_pty_end_to_end() -> None:
    async with CabinetSim(lamps=4, rtu_pty=True, baudrate=115200) as sim:
        assert sim.client_path is not None
        b = ModbusBusConfig.model_validate(
            {
                "id": "line1",
                "transport": "rtu",
                "serial_port": sim.client_path,
                "baudrate": 115200,
                "parity": "N",
                "timeout_s": 0.3,
                "retries": 0,
                "max_gap": 9,
            }
        )
        points = lamp_points(4)
        device = dev(*points)
        async with ModbusDriver(b, [device]) as drv:
            assert await drv.write(device, points[8], 55) == 55
            r = await drv.read(device, points)
            assert [x.value for x in r[8:12]] == [55, 55, pytest.approx(33.0), 0]
            assert sim.level(2) == 55
            sim.set_fault("garble")
            with pytest.raises(ProtocolError, match="garbled answer"):
                await drv.read(device, points[:1])
            sim.set_fault("none")
            assert (await drv.read(device, points[:1]))[0].value == 100
