"""One poller per bus: owns the driver, reads due points, reports by exception, runs writes.

Writes (commands) jump ahead of polling: the queue is checked before every device read.
A device that stops answering is marked ``comm_error`` once and retried with backoff; it never
stops the poller or its neighbours on the bus. A driver with ``updates()`` (COV, DALI events)
has its pushed updates consumed by a second task beside the polling loop, for the same driver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers import (
    BusConfigBase,
    BusDriver,
    DeviceConfigBase,
    DriverError,
    PointConfigBase,
    PointReading,
    PushedUpdate,
)
from wire import Quality, Value

from .backoff import Backoff
from .outbox import Outbox, PendingEvent
from .state import DeviceState, Health, PointState, now_ms

log = logging.getLogger(__name__)


@dataclass
class _WriteRequest:
    device: DeviceState
    point: PointConfigBase
    value: Value
    done: asyncio.Future[Value] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _CallRequest:
    """A technician operation on the bus (scan, identify ...): runs with the driver, ahead of polling."""

    fn: Callable[[BusDriver], Awaitable[Any]]
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Group:
    """Points of one device that share a poll interval."""

    device: DeviceState
    points: tuple[PointConfigBase, ...]
    interval: float
    due: float = 0.0


def _changed(ps: PointState, value: Value, quality: Quality, deadband: float) -> bool:
    if quality != ps.reported_quality:
        return True
    if value is None or ps.reported_value is None:
        return value is not ps.reported_value
    if isinstance(value, bool) or isinstance(ps.reported_value, bool):
        return value != ps.reported_value
    if deadband <= 0:
        return value != ps.reported_value
    return abs(float(value) - float(ps.reported_value)) > deadband


class BusPoller:
    """Polls the devices of one bus through its driver and queues their samples."""

    def __init__(
        self,
        bus: BusConfigBase,
        devices: Sequence[DeviceState],
        driver_factory: Callable[[], BusDriver],
        outbox: Outbox,
        full_report_s: float,
        retry_cap_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.devices = list(devices)
        self._driver_factory = driver_factory
        self.outbox = outbox
        self.full_report_s = full_report_s
        self.retry_cap_s = retry_cap_s
        self._writes: asyncio.Queue[_WriteRequest | _CallRequest] = asyncio.Queue(maxsize=1000)
        self._wake = asyncio.Event()
        self._backoff: dict[str, Backoff] = {d.config.id: Backoff(0.5, retry_cap_s) for d in self.devices}
        self._groups = self._make_groups()
        self.running = False
        self.reads_total = 0
        self.points_read = 0
        self.pushed_total = 0
        self.driver: BusDriver | None = None  # the open driver, while running
        self.heartbeat = time.monotonic()  # each turn of the polling loop: the watchdog checks it
        # Units read from the devices (drivers with ``units()``), for points without a configured
        # unit; ``on_units`` is called when one is learned (the daemon publishes a new birth).
        self.learned_units: dict[tuple[str, str], str] = {}
        self.on_units: Callable[[], None] | None = None
        self._units_asked: set[str] = set()
        #: Called with every event this bus raises, right after it is queued for the hub (the
        #: edge's lighting plan listens for presence). Must not block or raise.
        self.event_listeners: list[Callable[[PendingEvent], None]] = []

    def _make_groups(self) -> list[_Group]:
        groups = []
        for dev in self.devices:
            by_interval: dict[float, list[PointConfigBase]] = {}
            for p in dev.config.points:
                by_interval.setdefault(p.interval_s, []).append(p)
            for interval, points in sorted(by_interval.items()):
                groups.append(_Group(dev, tuple(points), interval))
        return groups

    async def write(self, device: DeviceState, point: PointConfigBase, value: Value) -> Value:
        """Queue a write ahead of polling and wait for its read-back value."""
        req = _WriteRequest(device, point, value)
        self._writes.put_nowait(req)
        self._wake.set()
        return await req.done

    def record_now(self, device: DeviceState, point: PointConfigBase, value: Value) -> None:
        """Record a value the driver just read back (after a relinquish), reported at once."""
        self._record(device, device.points[point.id], value, Quality.GOOD, "", now_ms(), force=True)

    async def call(self, fn: Callable[[BusDriver], Awaitable[Any]]) -> Any:
        """Run ``fn(driver)`` on this bus ahead of polling (as writes are) and return its result.

        For technician operations while the daemon owns the bus; DriverError if it stops first.
        """
        req = _CallRequest(fn)
        self._writes.put_nowait(req)
        self._wake.set()
        return await req.done

    async def run(self) -> None:
        """Poll forever; returns only by cancellation. Driver errors never escape."""
        driver = self._driver_factory()
        async with driver:
            self._units_asked = set()
            self.running = True
            self.driver = driver
            try:
                updates = getattr(driver, "updates", None)
                if updates is None:
                    await self._loop(driver)
                else:
                    # Either task failing cancels the other; the supervisor restarts both.
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._consume(updates()), name=f"updates-{self.bus.id}")
                        await self._loop(driver)
            finally:
                self.running = False
                self.driver = None
                self._fail_pending_writes()

    def _fail_pending_writes(self) -> None:
        while not self._writes.empty():
            req = self._writes.get_nowait()
            if not req.done.done():
                req.done.set_exception(DriverError(f"bus {self.bus.id} poller stopped"))

    async def _loop(self, driver: BusDriver) -> None:
        for g in self._groups:
            g.due = time.monotonic()
        read_many = getattr(driver, "read_many", None)
        # A library that awaits with asyncio.wait_for (pymodbus does) returns an answer that
        # lands together with our cancellation on Python 3.11 and swallows the cancellation; the
        # request is still counted on the task, so honour it here, or a busy bus would poll on
        # forever and the daemon would never stop (seen under load). Compared with the count at
        # the start, not with 0: on 3.11 a TaskGroup whose child failed while it waited in its
        # exit leaves the count raised for good, and that must not stop a poller.
        task = asyncio.current_task()
        cancels_before = 0 if task is None else task.cancelling()
        while True:
            if task is not None and task.cancelling() > cancels_before:
                raise asyncio.CancelledError
            await self._run_writes(driver)
            now = self.heartbeat = time.monotonic()
            due = [g for g in self._groups if g.due <= now and g.device.retry_at <= now]
            if due:
                if read_many is not None:
                    await self._poll_many(read_many, due)
                else:
                    for g in due:
                        await self._poll(driver, g)
                        await self._run_writes(driver)
                now = time.monotonic()
                for g in due:
                    # Keep the cadence, but do not try to catch up on missed cycles.
                    g.due = max(g.due + g.interval, now)
                continue
            next_due = min((max(g.due, g.device.retry_at) for g in self._groups), default=now + 1.0)
            delay = next_due - now
            if delay > 0 and self._writes.empty():
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # lands as the wait completes, and the poller would then never stop.
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _poll_many(self, read_many: Any, due: list[_Group]) -> None:
        """One batched read of every due group (devices sharing an address share requests)."""
        results = await read_many([(g.device.config, g.points) for g in due])
        ts = now_ms()
        failed: set[str] = set()
        retry_at = 0.0
        for g, result in zip(due, results, strict=True):
            dev = g.device
            dev.polls_total += 1
            if isinstance(result, DriverError):
                if dev.config.id not in failed:
                    failed.add(dev.config.id)
                    self._device_failed(dev, result)
                    # Devices that failed together (one unit) are retried together, not each
                    # at its own jittered time, which would multiply timeouts on the bus.
                    retry_at = retry_at or dev.retry_at
                    dev.retry_at = retry_at
                continue
            self._device_ok(dev, ts)
            self.reads_total += 1
            self.points_read += len(result)
            self._record_all(dev, result, ts)

    async def _run_writes(self, driver: BusDriver) -> None:
        while not self._writes.empty():
            req = self._writes.get_nowait()
            if req.done.cancelled():
                continue
            if isinstance(req, _CallRequest):
                try:
                    result = await req.fn(driver)
                except Exception as err:  # the caller reports it; the poller goes on polling
                    if not req.done.done():
                        req.done.set_exception(err)
                else:
                    if not req.done.done():
                        req.done.set_result(result)
                continue
            # The waiter may have given up (timeout, cancellation) while the write ran: its
            # future is then cancelled, and setting it would crash the poller.
            try:
                value = await driver.write(req.device.config, req.point, req.value)
            except DriverError as err:
                if not req.done.done():
                    req.done.set_exception(err)
                continue
            except Exception as err:  # a driver bug must not leave the command hanging
                if not req.done.done():
                    req.done.set_exception(DriverError(f"driver error: {type(err).__name__}: {err}"))
                raise
            if not req.done.done():
                req.done.set_result(value)
            ps = req.device.points[req.point.id]
            self._record(req.device, ps, value, Quality.GOOD, "", now_ms(), force=True)

    async def _poll(self, driver: BusDriver, group: _Group) -> None:
        dev = group.device
        dev.polls_total += 1
        try:
            readings = await driver.read(dev.config, group.points)
        except DriverError as err:
            self._device_failed(dev, err)
            return
        ts = now_ms()
        self.reads_total += 1
        self.points_read += len(readings)
        self._device_ok(dev, ts)
        self._record_all(dev, readings, ts)
        if dev.config.id not in self._units_asked:
            await self._learn_units(driver, dev)

    async def _learn_units(self, driver: BusDriver, dev: DeviceState) -> None:
        """Once per driver opening, after the device's first good read: the units of its points
        that have none configured, from the device (``driver.units``); new ones -> ``on_units``."""
        self._units_asked.add(dev.config.id)
        units = getattr(driver, "units", None)
        if not callable(units):
            return
        learned = 0
        for p in dev.config.points:
            if p.unit:
                continue
            try:
                unit = await units(dev.config, p)
            except DriverError as err:
                log.debug("bus %s: units of %s.%s not read: %s", self.bus.id, dev.config.id, p.id, err)
                continue
            if unit and self.learned_units.get((dev.config.id, p.id)) != unit:
                self.learned_units[(dev.config.id, p.id)] = unit
                learned += 1
        if learned:
            log.info("bus %s: %d units learned from device %s", self.bus.id, learned, dev.config.id)
            if self.on_units is not None:
                self.on_units()

    async def _consume(self, updates: AsyncIterator[PushedUpdate]) -> None:
        """Record pushed updates as they come; an update with an event kind is an event at once."""
        by_id = {d.config.id: d for d in self.devices}
        async for update in updates:
            dev = by_id.get(update.device)
            ps = dev.points.get(update.reading.point) if dev is not None else None
            if dev is None or ps is None:
                log.debug("bus %s: pushed update for unknown point %s", self.bus.id, update)
                continue
            self.pushed_total += 1
            point, value, quality, error = update.reading
            if update.event:
                self._event(
                    PendingEvent(
                        ts_ms=update.ts_ms,
                        device=update.device,
                        kind=update.event,
                        active=bool(value),
                        severity="info",
                        point=point,
                        detail=f"{update.device} {point} {value}",
                    )
                )
            self._record(dev, ps, value, quality, error, update.ts_ms, force=True)

    def _event(self, ev: PendingEvent) -> None:
        """Queue an event for the hub and tell the local listeners."""
        self.outbox.add_urgent(ev)
        for listener in self.event_listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("bus %s: event listener failed on %s %s", self.bus.id, ev.device, ev.kind)

    def _device_ok(self, dev: DeviceState, ts: int) -> None:
        if dev.health != Health.OK:
            if dev.health == Health.COMM_ERROR:
                log.info(
                    "device %s on bus %s recovered after %d failed polls",
                    dev.config.id,
                    self.bus.id,
                    dev.failures,
                )
            dev.health = Health.OK
            dev.last_error = ""
            dev.failures = 0
            self._backoff[dev.config.id].reset()
        dev.last_ok_ms = ts

    def _device_failed(self, dev: DeviceState, err: DriverError) -> None:
        dev.failures += 1
        dev.errors_total += 1
        dev.last_error = f"{type(err).__name__}: {err}"
        delay = self._backoff[dev.config.id].next()
        dev.retry_at = time.monotonic() + delay
        if dev.health != Health.COMM_ERROR:
            log.warning(
                "device %s on bus %s not answering (%s); retrying with backoff up to %.0fs",
                dev.config.id,
                self.bus.id,
                dev.last_error,
                self.retry_cap_s,
            )
            dev.health = Health.COMM_ERROR
        ts = now_ms()
        for ps in dev.points.values():
            self._record(dev, ps, None, Quality.COMM_ERROR, dev.last_error, ts)

    def _record_all(self, dev: DeviceState, readings: Sequence[PointReading], ts: int) -> None:
        """The hot path: store each reading, queue the ones that changed (report by exception)."""
        points = dev.points
        mono = time.monotonic()
        full = self.full_report_s
        dev_id = dev.config.id
        good = Quality.GOOD
        for point_id, value, quality, error in readings:
            ps = points[point_id]
            if quality is not good and quality is not Quality.OUT_OF_RANGE:
                value = None
            ps.quality = quality
            ps.error = error
            ps.ts_ms = ts
            if value is not None:
                ps.value = value
            if (
                quality is good
                and ps.reported_quality is good
                and value == ps.reported_value
                and mono - ps.reported_at < full
            ):
                continue  # unchanged: nothing to report
            if _changed(ps, value, quality, ps.config.deadband) or mono - ps.reported_at >= full:
                self._report(dev_id, ps, value, quality, ts, mono)

    def _record(
        self,
        dev: DeviceState,
        ps: PointState,
        value: Value,
        quality: Quality,
        error: str,
        ts: int,
        *,
        force: bool = False,
    ) -> None:
        if quality != Quality.GOOD and quality != Quality.OUT_OF_RANGE:
            # Keep the last good value for display; the quality says it is not current.
            value = None
        ps.quality = quality
        ps.error = error
        ps.ts_ms = ts
        if value is not None:
            ps.value = value
        mono = time.monotonic()
        if (
            force
            or _changed(ps, value, quality, ps.config.deadband)
            or mono - ps.reported_at >= self.full_report_s
        ):
            self._report(dev.config.id, ps, value, quality, ts, mono)

    def _report(
        self, dev_id: str, ps: PointState, value: Value, quality: Quality, ts: int, mono: float
    ) -> None:
        """Queue a sample; for an alarm point whose state changed, an alarm event first."""
        ps.reported_value = value
        ps.reported_quality = quality
        ps.reported_at = mono
        kind = ps.config.alarm
        if kind is not None and isinstance(value, bool) and value != ps.alarm_active:
            # The first reading raises an active alarm but does not "clear" one never raised.
            if value or ps.alarm_active is not None:
                self._event(
                    PendingEvent(
                        ts_ms=ts,
                        device=dev_id,
                        kind=kind,
                        active=value,
                        severity="alarm",
                        point=ps.config.id,
                        detail=f"{dev_id} {ps.config.id}{self._describe(dev_id, ps.config)} "
                        f"{'raised' if value else 'cleared'}",
                    )
                )
            ps.alarm_active = value
        self.outbox.add_sample((dev_id, ps.config.id, ts, value, quality.value))

    def _describe(self, dev_id: str, point: PointConfigBase) -> str:
        """`` (what the driver calls the point)`` for an event's detail, when the driver says."""
        describe = getattr(self.driver, "describe", None)
        text = describe(dev_id, point) if callable(describe) else ""
        return f" ({text})" if text else ""


def device_for(devices: Sequence[DeviceState], device_id: str) -> DeviceState | None:
    """Find a device state by id."""
    for d in devices:
        if d.config.id == device_id:
            return d
    return None


__all__ = ["BusPoller", "DeviceConfigBase", "device_for"]
