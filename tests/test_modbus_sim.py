"""The Modbus cabinet simulator against a plain pymodbus client (no citynerve code involved)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from firmware_sim.modbus import Cabinet, CabinetSim, ControlServer


@pytest.fixture
async def sim() -> AsyncIterator[CabinetSim]:
    async with CabinetSim(lamps=4, delay_s=0, seed=1) as s:
        yield s


@pytest.fixture
async def client(sim: CabinetSim) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=sim.tcp_port, timeout=0.3, retries=0)
    assert await c.connect()
    yield c
    c.close()


def f32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


async def test_register_map(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    r = await client.read_holding_registers(100, count=31, device_id=1)
    assert r.registers[0::10] == [100, 100, 100, 100]  # setpoints
    assert r.registers[1:10] == [0] * 9  # reserved slots read 0
    r = await client.read_input_registers(100, count=4, device_id=1)
    assert r.registers[:2] == [100, 600]  # 100 %, 60.0 W
    volts = (await client.read_input_registers(0, count=1, device_id=1)).registers[0]
    assert 2280 <= volts <= 2320
    power = (await client.read_input_registers(4, count=2, device_id=1)).registers
    assert f32(*power) == pytest.approx(240.0)
    coil = await client.read_coils(0, count=1, device_id=1)
    assert coil.bits[0] is True


async def test_unmapped_addresses_answer_illegal_address(client: AsyncModbusTcpClient) -> None:
    # input 1 sits between the voltage and the energy float: a block across it fails whole
    r = await client.read_input_registers(0, count=6, device_id=1)
    assert r.isError() and r.exception_code == 2
    r = await client.read_holding_registers(140, count=1, device_id=1)  # lamp 4 of 4 lamps
    assert r.isError() and r.exception_code == 2
    r = await client.read_discrete_inputs(1, count=1, device_id=1)
    assert r.isError() and r.exception_code == 2


async def test_setpoint_write_and_illegal_value(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    assert not (await client.write_register(110, 40, device_id=1)).isError()
    assert sim.level(1) == 40
    r = await client.read_input_registers(110, count=2, device_id=1)
    assert r.registers == [40, 240]  # 24.0 W
    r = await client.write_register(110, 101, device_id=1)
    assert r.isError() and r.exception_code == 3
    assert sim.setpoint(1) == 40  # untouched
    r = await client.write_register(111, 5, device_id=1)  # reserved slot
    assert r.isError() and r.exception_code == 2


async def test_contactor_failure_and_door(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    sim.fail_lamp(2)
    sim.set_door(True)
    bits = (await client.read_discrete_inputs(100, count=31, device_id=1)).bits
    assert [bits[10 * n] for n in range(4)] == [False, False, True, False]
    assert not any(b for i, b in enumerate(bits[:31]) if i % 10)  # reserved offsets read false
    assert (await client.read_discrete_inputs(0, count=1, device_id=1)).bits[0] is True
    assert (await client.read_input_registers(120, count=2, device_id=1)).registers == [0, 0]
    await client.write_coil(0, False, device_id=1)
    assert [sim.level(n) for n in range(4)] == [0, 0, 0, 0]
    assert (await client.read_holding_registers(100, count=1, device_id=1)).registers == [100]


def test_energy_integrates_power_over_time() -> None:
    now = [0.0]
    cab = Cabinet(2, rated_w=100.0, clock=lambda: now[0])
    cab.lamps[1].setpoint = 50
    now[0] = 3600.0  # one hour: 100 Wh + 50 Wh
    regs = cab.read("input", 102, 2)
    assert regs == [0, 100]
    assert cab.read("input", 112, 2) == [0, 50]
    hi, lo = cab.read("input", 2, 2)  # type: ignore[misc]
    assert f32(hi, lo) == pytest.approx(0.150)
    cab.lamps[0].energy_wh = 70000.0  # above 16 bits: high word first
    assert cab.read("input", 102, 2) == [1, 70000 - 65536]


async def test_other_unit_gets_no_answer(client: AsyncModbusTcpClient) -> None:
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(100, count=1, device_id=2)


async def test_faults_exception_no_answer_clear(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    sim.set_fault("exception", 4)
    r = await client.read_holding_registers(100, count=1, device_id=1)
    assert r.isError() and r.exception_code == 4
    sim.set_fault("no_answer")
    started = time.monotonic()
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(100, count=1, device_id=1)
    assert time.monotonic() - started < 1.0
    sim.clear()
    assert (await client.read_holding_registers(100, count=1, device_id=1)).registers == [100]
    assert sim.requests[3] == 3


async def test_request_counter_counts_requests(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    await client.read_input_registers(100, count=40, device_id=1)
    await client.write_register(100, 7, device_id=1)
    assert sim.request_count == 2
    assert list(sim.request_log) == [(4, 100, 40), (6, 100, 1)]


async def test_rtu_over_pty_and_garble() -> None:
    async with CabinetSim(lamps=2, rtu_pty=True, baudrate=115200) as sim:
        assert sim.client_path and os.path.exists(sim.client_path)
        c = AsyncModbusSerialClient(sim.client_path, baudrate=115200, parity="N", timeout=0.3, retries=0)
        assert await c.connect()
        try:
            assert (await c.write_register(110, 30, device_id=1)).registers == [30]
            assert (await c.read_input_registers(110, count=2, device_id=1)).registers == [30, 180]
            sim.set_fault("garble")
            with pytest.raises(ModbusIOException):  # bad CRC: pymodbus drops the frame
                await c.read_holding_registers(100, count=1, device_id=1)
            sim.set_fault("none")
            await asyncio.sleep(0.05)
            assert (await c.read_holding_registers(100, count=1, device_id=1)).registers == [100]
        finally:
            c.close()


def test_pty_refuses_parity() -> None:
    with pytest.raises(ValueError, match="parity 'N'"):
        CabinetSim(rtu_pty=True, parity="E")


async def test_control_port(sim: CabinetSim, client: AsyncModbusTcpClient) -> None:
    async with ControlServer(sim) as control, aiohttp.ClientSession(control.url) as http:
        async with http.post("/lamps/3/fail") as resp:
            assert resp.status == 200
        async with http.post("/door", json={"open": True}) as resp:
            assert (await resp.json()) == {"door_open": True}
        async with http.post("/faults", json={"mode": "exception", "code": 6}) as resp:
            assert resp.status == 200
        r = await client.read_holding_registers(100, count=1, device_id=1)
        assert r.isError() and r.exception_code == 6
        async with http.post("/faults", json={"mode": "sideways"}) as resp:
            assert resp.status == 400
            assert "unknown mode 'sideways'" in (await resp.json())["error"]
        async with http.post("/lamps/9/fail") as resp:
            assert resp.status == 404
        async with http.get("/state") as resp:
            state = await resp.json()
        assert state["fault"] == {"mode": "exception", "code": 6}
        assert state["lamps"][3]["failed"] is True
        assert state["registers"]["discrete"]["130"] is True
        assert state["registers"]["input"]["130"] == 0
        assert state["registers"]["holding"]["100"] == 100
        async with http.post("/clear") as resp:
            assert resp.status == 200
        assert sim.fault.mode == "none" and not sim.cabinet.door_open and sim.level(3) == 100


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.cli", "modbus", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_cli_ready_line_serves_and_exits_on_sigterm() -> None:
    proc = _start_cli("--port", "0", "--lamps", "3", "--unit", "7", "--control-port", "0")
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.startswith("modbus-sim ready tcp=127.0.0.1:"), line
        assert "unit=7 lamps=3 control=http://127.0.0.1:" in line
        port = int(line.split()[2].rsplit(":", 1)[1])
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        assert await c.connect()
        assert (await c.read_holding_registers(120, count=1, device_id=7)).registers == [100]
        c.close()
        control = line.split("control=")[1].strip()
        async with aiohttp.ClientSession() as http, http.get(control + "/state") as resp:
            assert (await resp.json())["unit"] == 7
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_cli_rtu_pty_prints_client_path() -> None:
    proc = _start_cli("--rtu-pty", "--lamps", "1", "--baudrate", "115200")
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        path = line.split("rtu=")[1].split()[0]
        c = AsyncModbusSerialClient(path, baudrate=115200, parity="N", timeout=1, retries=0)
        assert await c.connect()
        assert (await c.read_input_registers(100, count=1, device_id=1)).registers == [100]
        c.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_both_rtu_options() -> None:
    proc = _start_cli("--rtu", "/dev/null", "--rtu-pty")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2 and "not allowed with argument" in err
