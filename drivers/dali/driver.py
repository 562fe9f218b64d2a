"""DaliDriver: levels and status of DALI control gear through python-dali's serial master driver."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from dali import address
from dali.command import Command
from dali.driver.serial import DriverLubaRs232
from dali.exceptions import (
    DALIError,
    DALISequenceError,
    MemoryLocationNotImplemented,
    ProgramShortAddressFailure,
    ResponseError,
    TransmissionError,
)
from dali.gear import general as gg
from dali.gear import sequences as gear_sequences
from dali.gear.colour import QueryColourValueDTR
from dali.memory import diagnostics, energy
from dali.memory.location import FlagValue
from serialx import SerialException

from drivers.base import (
    DeviceConfigBase,
    DeviceUnavailable,
    DriverError,
    PointConfigBase,
    PointError,
    PointReading,
    ProtocolError,
    PushedUpdate,
    as_device,
    as_points,
)
from wire import Quality, Value

from . import tools
from .budget import BusBudget
from .config import DaliBusConfig, DaliDeviceConfig, DaliPointConfig
from .curve import Curve, arc_to_percent, percent_to_arc
from .events import SensorIndex, instance_map

log = logging.getLogger(__name__)

MASK = 0xFF
# QUERY STATUS bits (IEC 62386-102 §11.5.2 Table 17)
GEAR_FAILURE, LAMP_FAILURE, LAMP_ON, LIMIT_ERROR = 0x01, 0x02, 0x04, 0x08
FADE_RUNNING, RESET_STATE, MISSING_SHORT_ADDRESS, POWER_FAILURE = 0x10, 0x20, 0x40, 0x80
_STATUS_BIT = {
    "lamp_failure": LAMP_FAILURE,
    "gear_failure": GEAR_FAILURE,
    "power_failure": POWER_FAILURE,
    "missing_short_address": MISSING_SHORT_ADDRESS,
}
_STATUS_BIT_NAME = {
    "lamp_failure": "bit 1 lamp failure",
    "gear_failure": "bit 0 control gear failure",
    "power_failure": "bit 7 power cycle seen",
    "missing_short_address": "bit 6 missing short address",
}
_LEVEL_SOURCES = frozenset({"level", "actual_level"})
# D4i memory bank values: bank 202 (DiiA Part 252, each with its scale byte) and the
# diagnostics banks 205/206 (DiiA Part 253), read rarely (give them a long interval_s)
_D4I: dict[str, Any] = {
    "energy": energy.ActiveEnergy,
    "power": energy.ActivePower,
    "operating_time": diagnostics.ControlGearOperatingTime,
    "gear_starts": diagnostics.ControlGearStartCounter,
    "lamp_on_time": diagnostics.LightSourceOnTime,
    "lamp_starts": diagnostics.LightSourceStartCounter,
}
Sequence_ = Generator[Command, Any, Any]
# Transmit priorities (IEC 62386-101 Table 22, chosen per 103 §9.14): an operator's command
# goes before routine polling when several masters share the bus.
PRIORITY_COMMAND = 2
PRIORITY_POLL = 5


class DaliDriver:
    """One DALI bus: one serial master, one lock (the bus's scheduler), frames counted."""

    def __init__(self, bus: DaliBusConfig, devices: Sequence[DaliDeviceConfig] = ()) -> None:
        self.bus = bus
        self.devices = tuple(devices)
        self._by_id = {d.id: d for d in self.devices}
        self._master: DriverLubaRs232 | None = None
        self._lock = asyncio.Lock()
        self._failing: set[str] = set()  # devices whose last exchange failed
        self._targets: dict[str, int] = {}  # device id -> arc level it is fading to
        self._group_levels: dict[str, float] = {}  # group/broadcast device id -> last commanded %
        self._scenes: dict[str, int] = {}  # device id -> last scene commanded to it
        self._group_tc: dict[str, int] = {}  # group/broadcast device id -> last colour temperature (K)
        self.frames_sent = 0  # forward frames handed to the master
        self._budget = BusBudget()
        self._sensors = SensorIndex(self.devices)
        # python-dali's queue of frames heard on the bus, one per connection (a new protocol
        # object each time); None between connections. None on the queue: connection closed.
        self._rx: asyncio.Queue[Any] | None = None
        self._rx_ready = asyncio.Event()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._connect()
        except DeviceUnavailable as err:  # not fatal: the next read or write tries again
            log.warning("dali bus %s not reachable yet: %s", self.bus.id, err)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._close()
        self._rx_ready.set()  # wake updates() so that it ends

    def _close(self) -> None:
        rx, self._rx = self._rx, None
        self._rx_ready.clear()
        if rx is not None:
            rx.put_nowait(None)
        master, self._master = self._master, None
        # python-dali's serial drivers have no close(): the asyncio transport is theirs to hold
        transport = getattr(master, "_transport", None)
        if transport is not None:
            transport.close()

    async def _connect(self) -> DriverLubaRs232:
        """Open the serial port and run the LUBA handshake (device info, settings)."""
        master = DriverLubaRs232(
            self.bus.describe(), dev_inst_map=instance_map(self.devices), bus_power=self.bus.bus_power
        )
        self._master = master
        try:
            async with asyncio.timeout(self.bus.connect_timeout_s):
                await master.connect()
        except (TimeoutError, OSError, RuntimeError, ValueError, DALIError, SerialException) as err:
            self._close()
            raise DeviceUnavailable(
                f"dali master {self.bus.describe()} did not come up "
                f"({type(err).__name__}{': ' + str(err) if str(err) else ''})"
            ) from err
        log.info("dali bus %s connected (%s)", self.bus.id, self.bus.describe())
        if self._sensors:
            self._rx = master.new_dali_rx_queue()
            self._rx_ready.set()
        return master

    async def _ready(self) -> DriverLubaRs232:
        master = self._master
        if master is None or not master.is_connected:
            self._close()
            master = await self._connect()
        return master

    # -- frames ----------------------------------------------------------------------------

    def _count(self, cmd: Command) -> None:
        frames = 2 if cmd.sendtwice else 1
        self.frames_sent += frames
        self._budget.record("command" if cmd.response is None else "query", frames)

    def _counted(self, seq: Sequence_) -> Sequence_:
        """Pass a python-dali sequence through, counting the frames it sends."""
        response = None
        while True:
            try:
                cmd = seq.send(response)
            except StopIteration as stop:
                return stop.value
            if isinstance(cmd, Command):
                self._count(cmd)
            response = yield cmd

    async def _send(
        self,
        dev: DaliDeviceConfig,
        cmd: Command | Sequence_,
        priority: int,
        progress: Callable[[Any], None] | None = None,
    ) -> Any:
        """One frame (and its answer, for a query), or a sequence as one transaction; DriverError only.

        A sequence goes out at ``priority`` for its first frame and 1 for the rest
        (IEC 62386-101 §9.3 transaction), so DTR1/DTR0/READ MEMORY LOCATION stay together.
        """
        where = f"{dev.id} ({dev.target()}) on {self.bus.describe()}"
        try:
            master = await self._ready()
            if isinstance(cmd, Command):
                self._count(cmd)
                result = await master.send(cmd, priority=priority)
            else:
                result = await master.send(self._counted(cmd), priority=priority, progress=progress)
            _raise_if_cancelled()
            return result
        except TransmissionError as err:
            raise self._fail(dev, DeviceUnavailable(f"{where}: the master refused {cmd}: {err}")) from err
        except MemoryLocationNotImplemented as err:
            # no answer to READ MEMORY LOCATION: the gear has no such bank (not D4i) or is gone
            raise _MemoryNotImplemented(f"{where}: {err}") from err
        except ResponseError as err:
            raise self._fail(dev, ProtocolError(f"{where}: garbled answer reading memory: {err}")) from err
        except ProgramShortAddressFailure as err:
            raise ProtocolError(
                f"{where}: a gear did not take short address {err} (VERIFY SHORT ADDRESS got no YES)"
            ) from err
        except DALISequenceError as err:
            raise ProtocolError(f"{where}: {err}") from err
        except (TimeoutError, OSError, DALIError) as err:
            # The master stopped confirming frames or the port went away: reconnect next time.
            self._close()
            raise self._fail(
                dev,
                DeviceUnavailable(f"{where}: {cmd} not sent ({type(err).__name__}: {err or 'timeout'})"),
            ) from err

    async def _query(self, dev: DaliDeviceConfig, cmd: Command, priority: int = PRIORITY_POLL) -> int:
        """A query's 8-bit answer; a gear that must answer and does not is unavailable.

        A garbled answer is asked again like a missing one (noise on the bus passes); one that
        stays garbled is a ProtocolError, never a value.
        """
        garbled = 0
        for _ in range(self.bus.retries + 1):
            response = await self._send(dev, cmd, priority)
            raw = response.raw_value
            if raw is None:
                continue
            if raw.error:
                garbled += 1
                continue
            self._recovered(dev)
            return int(raw.as_integer)
        if garbled:
            # IEC 62386-101 §8.3: a backward frame with a framing error is noise on the bus or
            # several gear answering at once (two gear sharing the short address); a LUBA
            # reports both as "framing error", so only a repeat tells them apart a little.
            raise self._fail(
                dev,
                ProtocolError(
                    f"{dev.id} ({dev.target()}): garbled answer to {cmd} {garbled} of "
                    f"{self.bus.retries + 1} times (framing error: several gear answered, "
                    "duplicate short address? or noise on the bus)"
                ),
            )
        raise self._fail(
            dev, DeviceUnavailable(f"{dev.id} ({dev.target()}) on {self.bus.describe()}: no answer to {cmd}")
        )

    # The poller logs device state changes (one line each); the driver only at debug.
    def _fail(self, dev: DaliDeviceConfig, error: DriverError) -> DriverError:
        if dev.id not in self._failing:
            self._failing.add(dev.id)
            log.debug("dali device %s on bus %s unavailable: %s", dev.id, self.bus.id, error)
        return error

    def _recovered(self, dev: DaliDeviceConfig) -> None:
        if dev.id in self._failing:
            self._failing.discard(dev.id)
            log.debug("dali device %s on bus %s recovered", dev.id, self.bus.id)

    def describe(self, device: str, point: PointConfigBase) -> str:
        """What a status point is on the bus, for alarm event details (no I/O)."""
        dev = self._by_id.get(device)
        source = getattr(point, "source", "")
        if dev is None or source not in _STATUS_BIT_NAME:
            return ""
        if dev.address is None:  # a broadcast device's missing_short_address
            return (
                f"gear without a short address on bus {self.bus.id}: "
                f"commission it with citynerve-edge scan dali --bus {self.bus.id}"
            )
        return f"{dev.target()} QUERY STATUS {_STATUS_BIT_NAME[source]}"

    def budget(self) -> dict[str, float | int]:
        """Frames/s used on this bus vs available at 1200 bit/s (``citynerve-edge status``)."""
        return self._budget.snapshot()

    # -- pushed updates --------------------------------------------------------------------

    async def updates(self) -> AsyncIterator[PushedUpdate]:
        """Presence updates from the configured sensors' event frames; ends when the driver closes.

        Follows reconnects: each connection has its own receive queue.
        """
        while not self._closed:
            rx = self._rx
            if rx is None:
                await self._rx_ready.wait()
                continue
            frame = await rx.get()
            if frame is None:
                continue  # that connection closed: wait for the next one
            self._budget.record("event")
            for update in self._sensors.update(frame):
                yield update

    # -- read ------------------------------------------------------------------------------

    async def read(self, device: DeviceConfigBase, points: Sequence[PointConfigBase]) -> list[PointReading]:
        """QUERY ACTUAL LEVEL and/or QUERY STATUS once each, whatever points ask for them."""
        dev = _device(device)
        pts = _points(points)
        if dev.sensor_address is not None:
            return await self._sensor_readings(dev, pts)
        if dev.address is None:
            unaddressed = None
            if any(p.source == "missing_short_address" for p in pts):
                async with self._lock:
                    unaddressed = await self._unaddressed_present(dev)
            return [
                PointReading(p.id, unaddressed)
                if p.source == "missing_short_address"
                else self._scene_reading(dev, p)
                if p.source == "scene"
                else self._group_tc_reading(dev, p)
                if p.source == "colour_temperature"
                else self._group_reading(dev, p)
                for p in pts
            ]
        sources = {p.source for p in pts}
        addr = address.GearShort(dev.address)
        d4i: dict[str, PointReading] = {}
        async with self._lock:
            actual = status = None
            for source in sorted(sources & _D4I.keys()):
                d4i[source] = await self._read_d4i(dev, source)
            if "colour_temperature" in sources:
                tc = await self._colour_temperature(dev, PRIORITY_POLL)
                d4i["colour_temperature"] = (
                    PointReading("colour_temperature", tc)
                    if tc is not None
                    else PointReading(
                        "colour_temperature",
                        None,
                        Quality.DEVICE_ERROR,
                        "no DT8 colour temperature (not DT8 Tc?)",
                    )
                )
            if sources & {"level", "actual_level"}:
                actual = await self._query(dev, gg.QueryActualLevel(addr))
            target = self._targets.get(dev.id)
            if sources - _LEVEL_SOURCES - _D4I.keys() - {"scene", "colour_temperature"} or (
                "level" in sources and target is not None and target != actual
            ):
                status = await self._query(dev, gg.QueryStatus(addr))
        if target is not None and "level" in sources:
            if target == actual or (status is not None and not status & FADE_RUNNING):
                self._targets.pop(dev.id, None)  # the fade is over (or was stopped)
                target = None
        return [self._reading(dev, p, actual, status, target, d4i) for p in pts]

    async def _unaddressed_present(self, dev: DaliDeviceConfig) -> bool:
        """Whether gear without a short address is on the bus (a new or replaced lamp).

        QUERY MISSING SHORT ADDRESS to broadcast-unaddressed: only such gear answer YES; a
        framing error means several of them answered, which is a YES too (102 §11.5).
        """
        cmd = gg.QueryMissingShortAddress(address.GearBroadcastUnaddressed())
        for _ in range(self.bus.retries + 1):
            response = await self._send(dev, cmd, PRIORITY_POLL)
            if response.raw_value is not None:
                return True
        return False

    async def _read_d4i(self, dev: DaliDeviceConfig, source: str) -> PointReading:
        """A D4i memory bank value: energy (Wh) or power (W) from bank 202 with its scale byte
        applied, operating times (s) and start counters from the diagnostics banks 205/206."""
        value_type = _D4I[source]
        bank = value_type.bank.address
        assert dev.address is not None
        try:
            value = await self._send(dev, value_type.read(address.GearShort(dev.address)), PRIORITY_POLL)
        except _MemoryNotImplemented as err:
            return PointReading(source, None, Quality.DEVICE_ERROR, f"no D4i memory bank {bank} ({err})")
        if isinstance(value, FlagValue | bool) or not isinstance(value, int | Decimal):
            # MASK/TMASK/invalid scale (DiiA Part 252 §9, Part 253)
            return PointReading(source, None, Quality.DEVICE_ERROR, f"memory bank {bank} {source}: {value}")
        self._recovered(dev)
        return PointReading(source, float(value) if isinstance(value, Decimal) else int(value))

    def _reading(
        self,
        dev: DaliDeviceConfig,
        p: DaliPointConfig,
        actual: int | None,
        status: int | None,
        target: int | None,
        d4i: dict[str, PointReading],
    ) -> PointReading:
        if p.source in _D4I or p.source == "colour_temperature":
            got = d4i[p.source]
            if got.value is None:
                return got._replace(point=p.id)
            assert isinstance(got.value, int | float)
            return _ranged(p, got.value)
        if p.source == "scene":
            return self._scene_reading(dev, p)
        if p.source == "status":
            assert status is not None
            return PointReading(p.id, status)
        if p.source in _STATUS_BIT:
            assert status is not None
            return PointReading(p.id, bool(status & _STATUS_BIT[p.source]))
        assert actual is not None
        if p.source == "level" and target is not None:
            actual = target  # fading: the level is where the gear is going
        if actual == MASK:
            return PointReading(
                p.id, None, Quality.DEVICE_ERROR, "gear answers MASK to QUERY ACTUAL LEVEL (lamp failure?)"
            )
        return _ranged(p, arc_to_percent(actual, dev.curve))

    async def _sensor_readings(
        self, dev: DaliDeviceConfig, pts: Sequence[DaliPointConfig]
    ) -> list[PointReading]:
        """A sensor's last event; opens the bus if it is down, so that events keep coming."""
        async with self._lock:
            try:
                await self._ready()
            except DeviceUnavailable as err:
                raise self._fail(dev, err) from err
        occupied = self._sensors.occupied.get(dev.id)
        if occupied is None:
            return [PointReading(p.id, None, Quality.STALE, f"no event from {dev.target()} yet") for p in pts]
        return [PointReading(p.id, occupied) for p in pts]

    def _group_reading(self, dev: DaliDeviceConfig, p: DaliPointConfig) -> PointReading:
        level = self._group_levels.get(dev.id)
        if level is None:
            return PointReading(
                p.id, None, Quality.STALE, f"no level commanded to {dev.target()} since the start or a scene"
            )
        return PointReading(p.id, level)

    def _group_tc_reading(self, dev: DaliDeviceConfig, p: DaliPointConfig) -> PointReading:
        tc = self._group_tc.get(dev.id)
        if tc is None:
            return PointReading(
                p.id, None, Quality.STALE, f"no colour temperature commanded to {dev.target()} yet"
            )
        return PointReading(p.id, tc)

    def _scene_reading(self, dev: DaliDeviceConfig, p: DaliPointConfig) -> PointReading:
        """The last scene commanded to the device (DALI has no query for it)."""
        n = self._scenes.get(dev.id)
        if n is None:
            return PointReading(p.id, None, Quality.STALE, f"no scene commanded to {dev.target()} yet")
        return PointReading(p.id, n)

    # -- write -----------------------------------------------------------------------------

    async def write(self, device: DeviceConfigBase, point: PointConfigBase, value: Value) -> Value:
        """DAPC to the device's address (one frame), then read back where the gear is going."""
        dev = _device(device)
        (p,) = _points((point,))
        where = f"{dev.id}.{p.id}"
        if p.writable and p.source == "scene":
            return await self._go_to_scene(dev, where, value)
        if p.writable and p.source == "colour_temperature":
            return await self._set_colour_temperature(dev, where, value)
        if not p.writable or p.source != "level":
            raise PointError(f"{where} is read-only")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise PointError(f"{where}: {value!r} is not a level in percent")
        if (
            not 0 <= value <= 100
            or (p.min is not None and value < p.min)
            or (p.max is not None and value > p.max)
        ):
            raise PointError(
                f"{where}: {value!r} is outside [{p.min or 0}, {100 if p.max is None else p.max}]"
            )
        arc = percent_to_arc(float(value), dev.curve)
        if dev.address is None:
            await self._set(dev, arc)
            return self._group_levels[dev.id]
        addr = address.GearShort(dev.address)
        async with self._lock:
            await self._send(dev, gg.DAPC(addr, arc), PRIORITY_COMMAND)
            status = await self._query(dev, gg.QueryStatus(addr), PRIORITY_COMMAND)
            if status & FADE_RUNNING:
                final = arc
                if arc and status & LIMIT_ERROR:  # clamped to MIN..MAX LEVEL (102 §9.6)
                    low = await self._query(dev, gg.QueryMinLevel(addr), PRIORITY_COMMAND)
                    high = await self._query(dev, gg.QueryMaxLevel(addr), PRIORITY_COMMAND)
                    final = min(max(arc, low), high)
                self._targets[dev.id] = final
            else:
                self._targets.pop(dev.id, None)
                final = await self._query(dev, gg.QueryActualLevel(addr), PRIORITY_COMMAND)
        if final == MASK or status & LAMP_FAILURE:
            raise PointError(f"{where}: written, but the gear reports a lamp failure")
        return arc_to_percent(final, dev.curve)

    async def _go_to_scene(self, dev: DaliDeviceConfig, where: str, value: Value) -> int:
        """GO TO SCENE n: one frame to the gear, group or bus; each gear fades to its stored level."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value != int(value)
            or not 0 <= value <= 15
        ):
            raise PointError(f"{where}: {value!r} is not a scene number 0-15")
        n = int(value)
        addr: address.GearAddress
        if dev.address is not None:
            addr = address.GearShort(dev.address)
        elif dev.group is not None:
            addr = address.GearGroup(dev.group)
        else:
            addr = address.GearBroadcast()
        async with self._lock:
            await self._send(dev, gg.GoToScene(addr, n), PRIORITY_COMMAND)
        # the levels are now the gear's stored scene levels: read them afresh
        self._targets.clear()
        self._group_levels.clear()
        self._scenes[dev.id] = n
        return n

    async def _set_colour_temperature(self, dev: DaliDeviceConfig, where: str, value: Value) -> int:
        """DT8 colour temperature in kelvin (IEC 62386-209): DTR0/DTR1 = mirek, SET TEMPORARY
        COLOUR TEMPERATURE, ACTIVATE (python-dali sends ENABLE DEVICE TYPE 8 before each);
        read back from one gear, remembered for a group or the bus."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1000 <= value <= 20000:
            raise PointError(f"{where}: {value!r} is not a colour temperature in kelvin (1000-20000)")
        mirek = round(1_000_000 / value)
        addr: address.GearAddress
        if dev.address is not None:
            addr = address.GearShort(dev.address)
        elif dev.group is not None:
            addr = address.GearGroup(dev.group)
        else:
            addr = address.GearBroadcast()
        async with self._lock:
            await self._send(dev, gear_sequences.SetDT8ColourValueTc(addr, mirek), PRIORITY_COMMAND)
            if dev.address is None:
                self._group_tc[dev.id] = round(1_000_000 / mirek)
                return self._group_tc[dev.id]
            back = await self._colour_temperature(dev, PRIORITY_COMMAND)
        if back is None:
            raise PointError(
                f"{where}: written, but the gear reports no DT8 colour temperature (not DT8 Tc?)"
            )
        return back

    async def _colour_temperature(self, dev: DaliDeviceConfig, priority: int) -> int | None:
        """One gear's colour temperature in kelvin; None when it has none (not DT8)."""
        assert dev.address is not None
        seq = gear_sequences.QueryDT8ColourValue(
            address.GearShort(dev.address), QueryColourValueDTR.ColourTemperatureTC
        )
        mirek = await self._send(dev, seq, priority)
        return round(1_000_000 / mirek) if mirek else None

    async def set_level(
        self, percent: float, *, group: int | None = None, curve: Curve = "logarithmic"
    ) -> int:
        """Dim every gear of ``group`` (0-15), or of the bus, with ONE frame; the arc level sent.

        A command to all lamps of a cabinet costs one ~30 ms frame instead of 64 of them.
        """
        if not 0 <= percent <= 100:
            raise PointError(f"{percent!r} is outside 0..100 %")
        target = DaliDeviceConfig.model_construct(
            id="broadcast" if group is None else f"group-{group}",
            bus=self.bus.id,
            address=None,
            group=group,
            broadcast=group is None,
            curve=curve,
            points=(),
        )
        arc = percent_to_arc(percent, curve)
        await self._set(target, arc)
        return arc

    async def _set(self, dev: DaliDeviceConfig, arc: int) -> None:
        addr: address.GearAddress = (
            address.GearBroadcast() if dev.group is None else address.GearGroup(dev.group)
        )
        async with self._lock:
            await self._send(dev, gg.DAPC(addr, arc), PRIORITY_COMMAND)
        # Which gear belong to the group is the gear's business: forget every remembered fade
        # target, so that level reads report what each gear says.
        self._targets.clear()
        self._group_levels[dev.id] = arc_to_percent(arc, dev.curve)

    async def transaction(
        self, target: str, msg: Command | Sequence_, *, progress: Callable[[Any], None] | None = None
    ) -> Any:
        """Run one command or python-dali sequence as one transaction at operator priority.

        For the technician tools (``tools.py``); ``target`` names what it addresses in errors.
        """
        dev = DaliDeviceConfig.model_construct(
            id=target, bus=self.bus.id, address=None, group=None, broadcast=True, sensor_address=None
        )
        async with self._lock:
            return await self._send(dev, msg, PRIORITY_COMMAND, progress)

    async def tool(
        self, action: str, args: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """A technician tool on this bus (scan, query, fade, identify, group, scene): see tools.py."""
        # Which gear is where may have changed: read the levels afresh.
        self._targets.clear()
        return await tools.run(self, action, args, progress or (lambda _: None))

    async def query(self, short_address: int, cmd: type[Command]) -> int:
        """Send one standard query to one gear and return its answer (technician tools)."""
        dev = DaliDeviceConfig.model_construct(
            id=f"A{short_address}", bus=self.bus.id, address=short_address, group=None, broadcast=False
        )
        async with self._lock:
            return await self._query(dev, cmd(address.GearShort(short_address)))


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation python-dali swallowed.

    python-dali waits for the master's confirmations and answers with ``asyncio.wait_for``; on
    Python 3.11 a cancel that arrives just as the awaited frame does is lost (wait_for returns
    the result, gh-86296). Without this check a poller told to stop (SIGTERM) would go on
    polling; the task's ``cancelling()`` count still says it was asked to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _MemoryNotImplemented(PointError):
    """READ MEMORY LOCATION got no answer: the bank is not implemented."""


def _ranged(p: DaliPointConfig, value: float) -> PointReading:
    if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
        return PointReading(p.id, value, Quality.OUT_OF_RANGE, f"{value} outside [{p.min}, {p.max}]")
    return PointReading(p.id, value)


def _device(device: DeviceConfigBase) -> DaliDeviceConfig:
    return as_device(device, DaliDeviceConfig, "dali")


def _points(points: Sequence[PointConfigBase]) -> Sequence[DaliPointConfig]:
    return as_points(points, DaliPointConfig, "dali")
