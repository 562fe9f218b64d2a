"""Commands from the hub: deduplicated, validated, applied through the bus poller, acknowledged.

Every command gets exactly one ack with a precise status: ``rejected`` before anything touches
the field (unknown device or point, read-only, wrong type, out of range), ``expired`` when it
arrived too late, ``failed`` when the device did not take it, ``ok`` with the read-back value.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

from drivers import DriverError, PointConfigBase
from wire import Ack, AckStatus, Command, CommandAction, PointType, Value

from .outbox import Outbox
from .poller import BusPoller
from .state import Counters, DeviceState, now_ms

log = logging.getLogger(__name__)

DEDUPE_WINDOW = 10_000  # remembered command ids
MAX_WRITE_WAIT_S = 30.0  # a write never waits longer than this, whatever its expiry


def check_value(point: PointConfigBase, value: Value) -> str | None:
    """Why a value cannot be written to a point, or None when it can."""
    if not point.writable:
        return f"point {point.id!r} is read-only"
    ptype = point.value_type()
    if value is None:
        return "value is missing (null)"
    if ptype is PointType.BOOL:
        if not isinstance(value, bool):
            return f"point {point.id!r} takes true/false, got {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"point {point.id!r} takes a number, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"value {value!r} is not a finite number"
    if ptype is PointType.INT and float(value) != int(value):
        return f"point {point.id!r} takes a whole number, got {value!r}"
    lo, hi = point.min, point.max
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "+inf" if hi is None else f"{hi:g}"
        return f"value {value:g} is out of range [{lo_s}, {hi_s}] for point {point.id!r}"
    return None


class CommandLog(Protocol):
    """Where command ids are remembered across restarts (:class:`edge.buffer.DiskBuffer`)."""

    def command_seen(self, cmd_id: str) -> bool:
        """True if the id was handled before."""
        ...

    def remember_command(self, cmd_id: str) -> None:
        """Remember the id."""
        ...


class CommandExecutor:
    """Takes commands from the uplink and runs each through the right bus poller."""

    def __init__(
        self,
        gateway_id: str,
        devices: Mapping[str, DeviceState],
        pollers: Mapping[str, BusPoller],
        outbox: Outbox,
        counters: Counters,
    ) -> None:
        self.gateway_id = gateway_id
        self.devices = devices
        self.pollers = pollers
        self.outbox = outbox
        self.counters = counters
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.seen_log: CommandLog | None = None  # persistent ids (the buffer db), across restarts
        self._queue: asyncio.Queue[Command] = asyncio.Queue(maxsize=1000)
        self.last_results: list[dict[str, object]] = []
        self._local = 0  # writes decided on this gateway (apply_local)
        #: Called with (command, read-back value) after each hub command written successfully
        #: (the edge's plan learns which levels the hub's policy set). Must not block or raise.
        self.write_listeners: list[Callable[[Command, Value], None]] = []

    def submit(self, cmd: Command) -> None:
        """Accept a command from the uplink (never blocks); duplicates are acknowledged once."""
        self.counters.commands_received += 1
        if cmd.id in self._seen or (self.seen_log is not None and self.seen_log.command_seen(cmd.id)):
            self.counters.commands_duplicate += 1
            log.info("command %s received again: already handled, ignoring the repeat", cmd.id)
            return
        self._seen[cmd.id] = None
        if self.seen_log is not None:
            self.seen_log.remember_command(cmd.id)
        if len(self._seen) > DEDUPE_WINDOW:
            self._seen.popitem(last=False)
        try:
            self._queue.put_nowait(cmd)
        except asyncio.QueueFull:
            self._ack(cmd, AckStatus.REJECTED, "gateway busy: too many commands queued")

    async def run(self) -> None:
        """Execute commands concurrently (each bus serialises its own writes)."""
        async with asyncio.TaskGroup() as tg:
            while True:
                cmd = await self._queue.get()
                tg.create_task(self.execute(cmd), name=f"command-{cmd.id}")

    def _ack(self, cmd: Command, status: AckStatus, detail: str, value: Value = None) -> None:
        log_fn = log.info if status is AckStatus.OK else log.warning
        log_fn(
            "command %s %s.%s%s from %s: %s %s",
            cmd.id,
            cmd.device,
            cmd.point,
            " relinquish" if cmd.action is CommandAction.RELINQUISH else f"={cmd.value!r}",
            cmd.source or "?",
            status.value,
            detail,
        )
        self.outbox.add_urgent(Ack(id=cmd.id, status=status, detail=detail, ts_ms=now_ms(), value=value))
        self.last_results.append(
            {"id": cmd.id, "device": cmd.device, "point": cmd.point, "status": status.value, "detail": detail}
        )
        del self.last_results[:-20]

    async def execute(self, cmd: Command) -> None:
        """Validate, apply and acknowledge one command."""
        status, detail, value = await self._apply(cmd)
        self._ack(cmd, status, detail, value)
        if status is AckStatus.OK:
            for fn in self.write_listeners:
                fn(cmd, value)

    async def apply_local(
        self, device: str, point: str, value: Value, source: str = "plan"
    ) -> tuple[AckStatus, str, Value]:
        """A write decided on this gateway (the lighting plan): the same checks and bus path as a
        hub command, but the outcome is returned instead of acknowledged to the hub."""
        self._local += 1
        cmd = Command(
            id=f"{source}-{self._local}",
            device=device,
            point=point,
            value=value,
            expires_at_ms=now_ms() + int(MAX_WRITE_WAIT_S * 1000),
            source=source,
        )
        return await self._apply(cmd)

    async def _apply(self, cmd: Command) -> tuple[AckStatus, str, Value]:
        """Validate and write one command; (status, detail, read-back value)."""
        now = now_ms()
        if cmd.expires_at_ms <= now:
            return AckStatus.EXPIRED, f"expired {now - cmd.expires_at_ms} ms before it could be applied", None
        dev = self.devices.get(cmd.device)
        if dev is None:
            return AckStatus.REJECTED, f"unknown device {cmd.device!r} on gateway {self.gateway_id}", None
        ps = dev.points.get(cmd.point)
        if ps is None:
            known = ", ".join(sorted(dev.points)) or "none"
            return (
                AckStatus.REJECTED,
                f"device {cmd.device!r} has no point {cmd.point!r} (points: {known})",
                None,
            )
        relinquish = cmd.action is CommandAction.RELINQUISH
        if relinquish:
            problem = None if ps.config.writable else f"point {ps.config.id!r} is read-only"
        else:
            problem = check_value(ps.config, cmd.value)
        if problem:
            return AckStatus.REJECTED, problem, None
        poller = self.pollers[dev.config.bus]
        wait = min(MAX_WRITE_WAIT_S, max(0.1, (cmd.expires_at_ms - now) / 1000))
        if relinquish:
            return await self._relinquish(poller, dev, ps.config, wait)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the write completes, and the daemon would never stop.
            async with asyncio.timeout(wait):
                value = await poller.write(dev, ps.config, cmd.value)
        except TimeoutError:
            return (
                AckStatus.FAILED,
                f"bus {dev.config.bus} did not complete the write within {wait:.1f}s",
                None,
            )
        except DriverError as err:
            return AckStatus.FAILED, f"{type(err).__name__}: {err}", None
        detail = "written and read back"
        if value != cmd.value:
            detail = f"written; device reads back {value!r}"
        return AckStatus.OK, detail, value

    async def _relinquish(
        self, poller: BusPoller, dev: DeviceState, point: PointConfigBase, wait: float
    ) -> tuple[AckStatus, str, Value]:
        """Hand the point back (BACnet: NULL at its priority) through the driver, ahead of polling."""

        async def run(driver: object) -> Value:
            fn = getattr(driver, "relinquish", None)
            if not callable(fn):
                raise DriverError(f"{poller.bus.driver} points cannot be relinquished")
            value: Value = await fn(dev.config, point)
            return value

        try:
            async with asyncio.timeout(wait):  # not wait_for (see _apply)
                value = await poller.call(run)
        except TimeoutError:
            what = f"bus {dev.config.bus} did not complete the relinquish within {wait:.1f}s"
            return AckStatus.FAILED, what, None
        except DriverError as err:
            return AckStatus.FAILED, f"{type(err).__name__}: {err}", None
        poller.record_now(dev, point, value)
        return AckStatus.OK, f"relinquished; device reads back {value!r}", value
