"""ModbusDriver: reads and writes the points of the devices on one Modbus bus (TCP or RTU)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.base import (
    DeviceConfigBase,
    DeviceUnavailable,
    DriverError,
    PointConfigBase,
    PointError,
    PointReading,
    ProtocolError,
    as_device,
    as_points,
)
from wire import Quality, Value

from .codec import Block, encode, exception_text, plan_blocks
from .config import ModbusBusConfig, ModbusDeviceConfig, ModbusPointConfig

log = logging.getLogger(__name__)

_READ_METHOD = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}
# Exceptions 10/11 come from a TCP-to-RTU gateway whose device behind did not answer.
_GATEWAY_CODES = frozenset({10, 11})
_PLAN_CACHE_MAX = 1024


class ModbusDriver:
    """One Modbus bus: one pymodbus client, one lock, block plans cached per point set."""

    def __init__(self, bus: ModbusBusConfig, devices: Sequence[ModbusDeviceConfig] = ()) -> None:
        self.bus = bus
        self.devices = tuple(devices)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        # (id(device), ids of points) -> (device, points, blocks); the refs keep the ids unique
        self._plans: dict[tuple[int, tuple[int, ...]], tuple[object, object, tuple[Block, ...]]] = {}
        self._failing: set[str] = set()  # devices whose last request failed
        self._labels: dict[tuple[int, str], ModbusDeviceConfig] = {}
        self._rx_seen = False  # bytes arrived since the last request was sent
        self._gap_s = bus.inter_request_delay_ms / 1000.0

    # -- lifecycle -------------------------------------------------------------------------

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        b = self.bus
        # retries=0 and reconnect_delay=0: retries and reconnection happen here, inside one
        # deadline, instead of in pymodbus background tasks.
        common: dict[str, Any] = {
            "timeout": b.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace_packet,
            "name": b.id,
        }
        if b.transport == "tcp":
            assert b.host is not None
            return AsyncModbusTcpClient(b.host, port=b.port, **common)
        assert b.serial_port is not None
        return AsyncModbusSerialClient(
            b.serial_port,
            framer=FramerType.RTU,
            baudrate=b.baudrate,
            parity=b.parity,
            stopbits=b.stopbits,
            bytesize=b.bytesize,
            **common,
        )

    async def __aenter__(self) -> Self:
        self._client = self._make_client()
        try:
            async with asyncio.timeout(self.bus.timeout_s):
                ok = await self._client.connect()
        except (TimeoutError, OSError, ModbusException) as err:
            ok = False
            log.debug("connect to %s failed: %s", self.bus.describe(), err)
        if not ok:  # not fatal: the next read or write tries again
            log.warning("modbus bus %s (%s) not reachable yet", self.bus.id, self.bus.describe())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx_seen = False
        elif data:
            self._rx_seen = True
        return data

    # -- requests --------------------------------------------------------------------------

    async def _request(
        self, device: ModbusDeviceConfig, call: Callable[[Any], Awaitable[ModbusPDU]], what: str
    ) -> ModbusPDU:
        """One request with retries, all within timeout_s * (retries + 1); DriverError only."""
        client = self._client
        if client is None:
            raise DeviceUnavailable(f"modbus bus {self.bus.id} is not open")
        b = self.bus
        noisy = False
        try:
            async with asyncio.timeout(b.timeout_s * (b.retries + 1)):
                for attempt in range(b.retries + 1):
                    if not client.connected and not await client.connect():
                        raise ConnectionException(f"cannot connect to {b.describe()}")
                    try:
                        response = await call(client)
                    except ModbusIOException:
                        noisy = noisy or self._rx_seen
                        if attempt == b.retries:
                            raise
                        continue
                    finally:
                        if self._gap_s:
                            await asyncio.sleep(self._gap_s)
                    break
        except (TimeoutError, ModbusIOException, ConnectionException, OSError) as err:
            noisy = noisy or self._rx_seen
            if noisy:
                error: DriverError = ProtocolError(
                    f"{device.id} (unit {device.unit}) on {b.describe()}: garbled answer to "
                    f"{what} (bad CRC or framing)"
                )
            else:
                error = DeviceUnavailable(
                    f"{device.id} (unit {device.unit}) on {b.describe()}: no answer to {what}"
                    f" ({type(err).__name__}{': ' + str(err) if str(err) else ''})"
                )
            self._mark_failing(device, error)
            raise error from err
        except ModbusException as err:
            error = ProtocolError(f"{device.id} on {b.describe()}: {what}: {err}")
            self._mark_failing(device, error)
            raise error from err
        if response.isError() and response.exception_code in _GATEWAY_CODES:
            error = DeviceUnavailable(
                f"{device.id} (unit {device.unit}): " + exception_text(response.exception_code, what)
            )
            self._mark_failing(device, error)
            raise error
        if device.id in self._failing:
            self._failing.discard(device.id)
            # The edge's poller logs loss and recovery once per device; this is for debugging.
            log.debug("modbus device %s on bus %s recovered", device.id, b.id)
        return response

    def _mark_failing(self, device: ModbusDeviceConfig, error: DriverError) -> None:
        if device.id not in self._failing:
            self._failing.add(device.id)
            log.debug("modbus device %s on bus %s unavailable: %s", device.id, self.bus.id, error)

    # -- read ------------------------------------------------------------------------------

    def _plan(
        self,
        device: ModbusDeviceConfig,
        points: Sequence[ModbusPointConfig],
        members: Sequence[ModbusDeviceConfig] = (),
    ) -> tuple[Block, ...]:
        key = (id(device), tuple(map(id, points)))
        cached = self._plans.get(key)
        if cached is not None:
            return cached[2]
        b = self.bus
        blocks = plan_blocks(
            points,
            max_registers=b.max_block_registers,
            max_bits=b.max_block_bits,
            max_gap=b.max_gap,
        )
        if len(self._plans) >= _PLAN_CACHE_MAX:
            self._plans.clear()
        self._plans[key] = ((device, *members), tuple(points), blocks)
        return blocks

    async def read(self, device: DeviceConfigBase, points: Sequence[PointConfigBase]) -> list[PointReading]:
        """Read points of one device in as few block requests as the config allows."""
        dev = _device(device)
        pts = _points(points)
        blocks = self._plan(dev, pts)
        async with self._lock:
            return await self._read_blocks(dev, blocks, len(pts))

    async def read_many(
        self, items: Sequence[tuple[DeviceConfigBase, Sequence[PointConfigBase]]]
    ) -> list[list[PointReading] | DriverError]:
        """Read several devices at once: devices that share a unit id share block requests.

        A cabinet controller exposes its lamps as register slots of one unit; reading them
        lamp by lamp would cost one request per lamp and register kind. The result has one
        entry per item: its readings, or the error that made its unit unreadable.
        """
        results: list[list[PointReading] | DriverError] = [[] for _ in items]
        by_unit: dict[int, list[int]] = {}
        for i, (device, _) in enumerate(items):
            by_unit.setdefault(_device(device).unit, []).append(i)
        async with self._lock:
            for unit, idxs in by_unit.items():
                if len(idxs) == 1:
                    dev = _device(items[idxs[0]][0])
                    pts = _points(items[idxs[0]][1])
                    try:
                        results[idxs[0]] = await self._read_blocks(dev, self._plan(dev, pts), len(pts))
                    except DriverError as err:
                        results[idxs[0]] = err
                    continue
                devs = [_device(items[i][0]) for i in idxs]
                allpts = [p for i in idxs for p in _points(items[i][1])]
                label = self._unit_label(unit, devs)
                try:
                    readings = await self._read_blocks(label, self._plan(label, allpts, devs), len(allpts))
                except DriverError as err:
                    for i in idxs:
                        results[i] = err
                    continue
                pos = 0
                for i in idxs:
                    n = len(items[i][1])
                    results[i] = readings[pos : pos + n]
                    pos += n
        return results

    def _unit_label(self, unit: int, devs: Sequence[ModbusDeviceConfig]) -> ModbusDeviceConfig:
        """A stand-in device naming a unit shared by several devices, for errors and logs."""
        name = f"{devs[0].id} .. {devs[-1].id}"
        label = self._labels.get((unit, name))
        if label is None:
            label = ModbusDeviceConfig.model_construct(id=name, bus=self.bus.id, unit=unit, points=())
            self._labels[(unit, name)] = label
        return label

    async def _read_blocks(
        self, dev: ModbusDeviceConfig, blocks: tuple[Block, ...], n: int
    ) -> list[PointReading]:
        out: list[PointReading | None] = [None] * n
        unit = dev.unit
        for block in blocks:
            method, start, count = _READ_METHOD[block.register], block.start, block.count

            def call(c: Any, m: str = method, s: int = start, k: int = count) -> Any:
                return getattr(c, m)(s, count=k, device_id=unit)

            response = await self._request(dev, call, f"read {block.label}")
            if response.isError():
                text = exception_text(response.exception_code, block.label)
                for item in block.items:
                    out[item.index] = PointReading(item.point.id, None, Quality.DEVICE_ERROR, text)
                continue
            bits = block.register in ("coil", "discrete")
            data: Sequence[int] = response.bits if bits else response.registers
            if len(data) < count:
                error = ProtocolError(
                    f"{dev.id}: read {block.label} answered {len(data)} values, expected {count}"
                )
                self._mark_failing(dev, error)
                raise error
            for item in block.items:
                value = item.decode(data, item.offset)
                low, high = item.low, item.high
                if (low is not None or high is not None) and (
                    value != value  # NaN is in no range
                    or (low is not None and value < low)  # type: ignore[operator]
                    or (high is not None and value > high)  # type: ignore[operator]
                ):
                    out[item.index] = PointReading(
                        item.point.id,
                        value,
                        Quality.OUT_OF_RANGE,
                        f"{value} outside [{low}, {high}]",
                    )
                else:
                    out[item.index] = PointReading(item.point.id, value)
        return out  # type: ignore[return-value]

    # -- write -----------------------------------------------------------------------------

    async def write(self, device: DeviceConfigBase, point: PointConfigBase, value: Value) -> Value:
        """Write one value (FC5 coil, FC6 16-bit, FC16 32-bit), then read it back."""
        dev = _device(device)
        (p,) = _points((point,))
        where = f"{dev.id}.{p.id}"
        if not p.writable:
            raise PointError(f"{where} is read-only")
        if not isinstance(value, bool) and isinstance(value, int | float):
            if (
                (p.min is not None and value < p.min)
                or (p.max is not None and value > p.max)
                or (isinstance(value, float) and math.isnan(value))
            ):
                raise PointError(f"{where}: {value!r} is outside [{p.min}, {p.max}]")
        payload = encode(p, value)
        unit, addr = dev.unit, p.address
        call: Callable[[Any], Awaitable[ModbusPDU]]
        if isinstance(payload, bool):
            call = lambda c: c.write_coil(addr, payload, device_id=unit)  # noqa: E731
        elif len(payload) == 1:
            call = lambda c: c.write_register(addr, payload[0], device_id=unit)  # noqa: E731
        else:
            call = lambda c: c.write_registers(addr, payload, device_id=unit)  # noqa: E731
        label = f"{p.register_kind} {addr}" + (f"-{addr + p.width - 1}" if p.width > 1 else "")
        async with self._lock:
            response = await self._request(dev, call, f"write {label}")
            if response.isError():
                raise PointError(
                    f"{where}: device refused the write of {value!r}: "
                    + exception_text(response.exception_code, label)
                )
            (reading,) = await self._read_blocks(dev, self._plan(dev, (p,)), 1)
        if reading.quality is Quality.DEVICE_ERROR:
            raise PointError(f"{where}: written, but the read-back failed: {reading.error}")
        return reading.value


def _device(device: DeviceConfigBase) -> ModbusDeviceConfig:
    return as_device(device, ModbusDeviceConfig, "modbus")


def _points(points: Sequence[PointConfigBase]) -> Sequence[ModbusPointConfig]:
    return as_points(points, ModbusPointConfig, "modbus")
