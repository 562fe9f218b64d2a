"""DaliBusSim: a bus of DALI control gear behind an emulated Lunatone LUBA RS232 master, on a pty.

The LUBA protocol (Lunatone "LUBA Protocol" EN, 2021): every message is ``0x59 ('Y'), command,
length, payload..., checksum`` with the checksum the XOR of command, length and payload. The
host queues a DALI frame with ADD DALI FRAME TO TX (0x32); the interface answers 0x33 with a
frame id, puts the frame on the bus and reports it with an EVENT (0x31, type 0 "sent"); a
backward frame or a framing error (several gear answering) comes as an EVENT of type 2.

The simulator holds the slave side of the pty open for its whole life: without it, reads on the
master return EIO (and spin) whenever no client has the port open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from functools import reduce
from operator import xor
from types import TracebackType
from typing import Self

from .gear import GARBLED, MASK, BusStats, Gear, GearBus
from .sensor import OccupancySensor

SYNC = 0x59
CMD_DEVICE_INFO, RSP_DEVICE_INFO = 0x20, 0x21
CMD_DESCRIPTOR, RSP_DESCRIPTOR = 0x28, 0x29
CMD_SETTINGS, RSP_SETTINGS = 0x2A, 0x2B
CMD_STATUS, RSP_STATUS = 0x2C, 0x2D
EVENT = 0x31
CMD_TX, RSP_TX = 0x32, 0x33
TX_SYNTAX_ERROR, TX_BUFFER_FULL = 6, 4
EVENT_SENT, EVENT_RECEIVED = 0 << 6, 2 << 6
EVENT_FRAMING_ERROR = 63
# article number and GTIN of a Lunatone DALI RS232 LUBA (the driver warns on unknown articles)
ARTICLE = 24166096
GTIN = 9010342016609
TX_BUFFER = 16

# DALI timing at 1200 bit/s (IEC 62386-101 §8): a bit lasts 1/1200 s; a 16-bit forward frame is
# start + 16 + 2 stop bits, a backward frame start + 8 + 2 stop bits.
BIT_S = 1 / 1200
FORWARD_16_S = 19 * BIT_S  # 15.8 ms
FORWARD_24_S = 27 * BIT_S  # 22.5 ms
BACKWARD_S = 11 * BIT_S  # 9.2 ms
# settling time between a forward frame and its answer: 5.5..10.5 ms (101 Table 20)
SETTLE_BACKWARD_S = 0.007
# settling time before a forward frame, by transmit priority 1..5 (101 Table 22, lower bounds)
SETTLE_FORWARD_S = {1: 0.0135, 2: 0.0149, 3: 0.0163, 4: 0.0179, 5: 0.0195}
# after a backward frame the next forward frame may follow after 2.4 ms (101 Table 21):
# a query costs 2.4 + 15.8 + 7 + 9.2 ~ 35 ms, a command ~ 30 ms
SETTLE_AFTER_BACKWARD_S = 0.0024


_SPIN_S = 0.002  # the last part of a wait on the bus's timing is spent yielding, not sleeping


def luba_message(command: int, payload: bytes | list[int]) -> bytes:
    """One LUBA message with its sync byte, length and XOR checksum."""
    body = bytes([command, len(payload), *payload])
    return bytes([SYNC, *body, reduce(xor, body)])


class DaliBusSim:
    """``lamps`` control gear at short addresses 0.. behind a LUBA interface on a new pty.

    ``timing`` scales the bus's frame timing: 1.0 is the real 1200 bit/s bus (~35 ms per query),
    0 answers as fast as the pty allows (for tests that do not measure timing).
    """

    def __init__(
        self,
        lamps: int = 64,
        *,
        timing: float = 1.0,
        fade_time: int = 0,
        physical_min: int = 1,
        level: int = 254,
        sensors: int = 0,
        unaddressed: int = 0,
        seed: int | None = None,
    ) -> None:
        if not 0 <= lamps + unaddressed <= 64:
            raise ValueError("a DALI bus has 0..64 control gear (short addresses 0-63)")
        if not 0 <= sensors <= 64:
            raise ValueError("a DALI bus has 0..64 control devices (short addresses 0-63)")
        if timing < 0:
            raise ValueError("timing must be >= 0")
        gear = []
        for n in range(lamps + unaddressed):
            # the unaddressed ones are new gear, as delivered: no short address yet
            address = n if n < lamps else None
            g = Gear(short_address=address, fade_time=fade_time, physical_min=physical_min)
            g.min_level = physical_min
            g.go_to(level, 0.0, fade=False)
            g.power_cycle_seen = True
            gear.append(g)
        self.bus = GearBus(gear, seed)
        # occupancy sensors: control devices at short addresses 0.., instance 0 each
        self.sensors = [OccupancySensor(short_address=n) for n in range(sensors)]
        self.timing = timing
        self.path = ""
        self._master = self._slave = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx = bytearray()
        # frames waiting for the bus: (frame, send twice, priority, LUBA frame id); frame id None
        # is an input device's event frame, which the master receives rather than sends
        self._txq: asyncio.Queue[tuple[bytes, bool, int, int | None]] = asyncio.Queue(maxsize=TX_BUFFER)
        self._worker: asyncio.Task[None] | None = None
        self._tx_id = 0
        self._t_start = 0.0
        self._bus_free_at = 0.0
        self._answered = False  # the last frame on the bus was a backward frame
        self.settings = bytes(3)
        self.luba_errors = 0  # bad checksums and unknown commands from the host

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._t_start = self._loop.time()
        for g in self.bus.gear:
            g.start(self._t_start)  # energy and times count from the simulator's start
        self._loop.add_reader(self._master, self._on_readable)
        self._worker = asyncio.create_task(self._run_bus(), name="dali-sim-bus")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._loop is not None:
            self._loop.remove_reader(self._master)
            self._loop = None
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def describe(self) -> str:
        """Where to connect: the python-dali URI of the serial port."""
        return f"luba232:{self.path}"

    # -- control API -------------------------------------------------------------------------

    def gear(self, n: int) -> Gear:
        """The gear with short address ``n``."""
        for g in self.bus.gear:
            if g.short_address == n:
                return g
        raise KeyError(f"no gear with short address {n}")

    def _now(self) -> float:
        assert self._loop is not None, "the simulator is not running"
        return self._loop.time()

    def level(self, n: int) -> int:
        """The arc power level (0-254) gear ``n`` drives now (its lamp's state aside)."""
        return self.gear(n).level_at(self._now())

    def fading(self, n: int) -> bool:
        """Whether gear ``n`` is fading now."""
        return self.gear(n).fading(self._now())

    def fail_lamp(self, n: int, failed: bool = True) -> None:
        """Break (or repair) the lamp of gear ``n``: status bit 1, QUERY LAMP FAILURE."""
        self.gear(n).integrate(self._now())  # the energy up to now at the old power
        self.gear(n).lamp_failure = failed

    def repair_lamp(self, n: int) -> None:
        """Replace the failed lamp of gear ``n``."""
        self.fail_lamp(n, False)

    def garble(self, n: int, times: int = -1) -> None:
        """Make gear ``n``'s next ``times`` answers (-1: all) reach the master garbled; 0 heals it."""
        self.gear(n).garble = times

    def power_cycle(self, n: int) -> None:
        """Switch gear ``n``'s mains off and on: power-on level, power failure bit, start counter."""
        self.gear(n).power_cycle(self._now())

    def identifying(self, n: int) -> bool:
        """Whether gear ``n`` is running its identification (blinking) after IDENTIFY DEVICE."""
        return self.gear(n).identifying(self._now())

    def add_gear(self, short_address: int | None = None, **kw: object) -> Gear:
        """Connect one more gear (by default a new one without a short address)."""
        if len(self.bus.gear) >= 64:
            raise ValueError("a DALI bus has at most 64 control gear")
        g = Gear(short_address=short_address, **kw)  # type: ignore[arg-type]
        g.start(self._now())
        self.bus.gear.append(g)
        return g

    def fail_gear(self, n: int, failed: bool = True) -> None:
        """Set (or clear) the control gear failure of gear ``n`` (status bit 0)."""
        self.gear(n).gear_failure = failed

    def disconnect(self, n: int, gone: bool = True) -> None:
        """Cut gear ``n`` off the bus (it stops answering), or reconnect it."""
        self.gear(n).connected = not gone

    def add_to_group(self, n: int, group: int) -> None:
        """Make gear ``n`` a member of group 0-15."""
        self.gear(n).groups |= 1 << group

    def set_fade_time(self, n: int, code: int) -> None:
        """Set gear ``n``'s fade time code (0-15, IEC 62386-102 Table 5)."""
        self.gear(n).fade_time = code

    def sensor(self, n: int) -> OccupancySensor:
        """The occupancy sensor with short address ``n``."""
        for s in self.sensors:
            if s.short_address == n:
                return s
        raise KeyError(f"no occupancy sensor with short address {n}")

    def occupancy(self, n: int, occupied: bool = True, *, movement: bool | None = None) -> None:
        """Sensor ``n`` detects (or stops detecting) presence: it sends one event frame.

        The frame goes on the bus after the frame in flight, at priority 4 (IEC 62386-103
        §9.6.1: event priority default), and reaches the master as a received 24-bit frame.
        """
        s = self.sensor(n)
        s.occupied = occupied
        s.events_sent += 1
        frame = s.event_frame(movement=occupied if movement is None else movement)
        self._txq.put_nowait((frame, False, 4, None))

    def energy_wh(self, n: int) -> float:
        """The active energy gear ``n`` has used since the start (D4i, memory bank 202)."""
        return self.gear(n).energy_wh(self._now())

    def power_w(self, n: int) -> float:
        """The active power of gear ``n`` now."""
        return self.gear(n).power_w(self._now())

    @property
    def stats(self) -> BusStats:
        """Frame counters since the start or the last ``reset_stats``."""
        return self.bus.stats

    @property
    def frames(self) -> int:
        """Forward frames put on the bus."""
        return self.bus.stats.forward_frames

    def reset_stats(self) -> None:
        """Zero the frame counters."""
        self.bus.stats = BusStats()

    # -- the serial side ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except OSError:
            pass  # the host is not reading and the pty buffer is full: bytes lost on the line

    def _tick(self) -> list[int]:
        ms = int((self._now() - self._t_start) * 1000) & 0xFFFF
        return [ms >> 8, ms & 0xFF]

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO cannot happen while we hold the slave open; never crash on it
            return
        self._rx += data
        while self._rx:
            start = self._rx.find(SYNC)
            if start < 0:
                self._rx.clear()
                return
            del self._rx[:start]
            if len(self._rx) < 3 or len(self._rx) < 4 + self._rx[2]:
                return  # incomplete
            n = self._rx[2]
            msg = bytes(self._rx[: 4 + n])
            del self._rx[: 4 + n]
            if reduce(xor, msg[1:-1]) != msg[-1]:
                self.luba_errors += 1
                continue
            self._handle(msg[1], msg[3:-1])

    def _handle(self, cmd: int, payload: bytes) -> None:
        if cmd == CMD_DEVICE_INFO:
            info = (
                GTIN.to_bytes(6, "big")
                + (0x0123456789ABCDEF).to_bytes(8, "big")
                + bytes([1, 1])
                + ARTICLE.to_bytes(4, "big")
            )
            self._send(luba_message(RSP_DEVICE_INFO, info))
        elif cmd == CMD_SETTINGS:
            if len(payload) >= 3:
                self.settings = bytes(payload[:3])
            self._send(luba_message(RSP_SETTINGS, self.settings))
        elif cmd == CMD_STATUS:
            # line, tick, id, entries in the TX buffer, status (bit 7: bus voltage error)
            self._send(luba_message(RSP_STATUS, [0, *self._tick(), self._tx_id, self._txq.qsize(), 0]))
        elif cmd == CMD_DESCRIPTOR:
            self._send(luba_message(RSP_DESCRIPTOR, bytes(19)))
        elif cmd == CMD_TX:
            self._queue_frame(payload)
        else:
            self.luba_errors += 1

    def _queue_frame(self, payload: bytes) -> None:
        # payload: line, bits, mode (bit 7 send twice, bits 0-2 priority), 3 data bytes, pad
        if len(payload) < 6 or payload[1] not in (16, 24):
            self._send(luba_message(RSP_TX, [TX_SYNTAX_ERROR]))
            return
        nbytes = payload[1] // 8
        frame = bytes(payload[3 : 3 + nbytes])
        self._tx_id = (self._tx_id + 1) & 0xFF
        try:
            self._txq.put_nowait((frame, bool(payload[2] & 0x80), payload[2] & 0x07 or 1, self._tx_id))
        except asyncio.QueueFull:
            self._send(luba_message(RSP_TX, [TX_BUFFER_FULL]))
            return
        self._send(luba_message(RSP_TX, [self._tx_id, TX_BUFFER - self._txq.qsize()]))

    async def _sleep_until(self, t: float) -> None:
        """Wait until loop time ``t``, to within a fraction of a millisecond.

        A plain asyncio.sleep wakes up to ~2 ms late (epoll's millisecond timeout, rounded up),
        which would make the simulated bus slower than a real one: sleep short, then yield
        until the time has come.
        """
        delay = t - self._now()
        if delay > _SPIN_S:
            await asyncio.sleep(delay - _SPIN_S)
        while self._now() < t:  # noqa: ASYNC110 (a deliberate spin: no event marks a time)
            await asyncio.sleep(0)

    def _event(self, status: int, data: list[int] | bytes) -> None:
        # settings byte 1 (event filter): bit 7 all off, bit 6 "sent" off, bit 5 "received" off
        flt = self.settings[1]
        if flt & 0x80 or (status >> 6 == 0 and flt & 0x40) or (status >> 6 == 2 and flt & 0x20):
            return
        self._send(luba_message(EVENT, [*self._tick(), 0, status, *data]))

    async def _run_bus(self) -> None:
        """Put queued frames on the bus one by one, with the bus's timing."""
        scale = self.timing
        while True:
            frame, twice, priority, tx_id = await self._txq.get()
            duration = (FORWARD_16_S if len(frame) == 2 else FORWARD_24_S) * scale
            for _ in range(2 if twice else 1):
                end = self._now()
                if scale:
                    settle = SETTLE_AFTER_BACKWARD_S if self._answered else SETTLE_FORWARD_S[min(priority, 5)]
                    start = max(self._now(), self._bus_free_at + settle * scale)
                    end = start + duration
                    await self._sleep_until(end)
                answers = self.bus.forward(frame, self._now())
                if tx_id is None:  # an input device's event: the master hears it on the bus
                    self._event(EVENT_RECEIVED | len(frame) * 8, frame)
                else:
                    self._event(EVENT_SENT | len(frame) * 8, [tx_id, *frame])
                if answers and scale:
                    end += (SETTLE_BACKWARD_S + BACKWARD_S) * scale
                    await self._sleep_until(end)
                if len(answers) == 1 and answers[0] != GARBLED:
                    self.bus.stats.backward_frames += 1
                    self._event(EVENT_RECEIVED | 8, [answers[0] & MASK])
                elif answers:
                    # several gear answering at once, or one answer hit by noise: the master
                    # sees a framing error (101 §8.3)
                    if len(answers) > 1:
                        self.bus.stats.collisions += 1
                    else:
                        self.bus.stats.garbled += 1
                    self._event(EVENT_RECEIVED | EVENT_FRAMING_ERROR, [])
                # the bus's own timeline: a late wake-up above does not stretch the frames
                self._bus_free_at = end
                self._answered = bool(answers)
