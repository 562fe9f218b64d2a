"""The edge daemon: composes pollers, uplink, command executor and control socket, supervised.

``asyncio.run(run(config))``: every long-running task is named and supervised; a crash is
logged with its traceback, counted, and the task restarted with backoff. Nothing but
cancellation (SIGTERM) ends the daemon.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from drivers import BusDriver, DriverError, get_driver

from . import control, systemd
from .backoff import Backoff
from .buffer import DiskBuffer
from .commands import CommandExecutor
from .config import EdgeConfig, devices_on
from .outbox import Outbox
from .plan import PlanRunner
from .poller import BusPoller
from .seqstore import SeqStore
from .state import Counters, DeviceState, Health, now_ms
from .uplink import SOFTWARE_VERSION, Uplink

log = logging.getLogger(__name__)


@dataclass
class TaskHealth:
    """Restarts and last crash of one supervised task."""

    restarts: int = 0
    last_error: str = ""
    running: bool = False


@dataclass
class Edge:
    """Everything the running daemon holds, built from a validated config."""

    config: EdgeConfig
    counters: Counters = field(default_factory=Counters)
    started_ms: int = field(default_factory=now_ms)

    def __post_init__(self) -> None:
        self.seqs = SeqStore(self.config.data_dir)
        self.buffer = open_buffer(self.config)
        self.outbox = Outbox(
            self.config.publish.queue_max,
            self.counters,
            buffer=self.buffer,
            next_seq=self.seqs.next,
            max_batch=self.config.publish.max_batch,
            max_delay_ms=self.config.publish.max_delay_ms,
            gateway_id=self.config.gateway.id,
        )
        self.buffer.on_error = lambda err: self.outbox.gateway_event(
            "buffer_error", f"buffer write failed ({err}); holding messages in memory", severity="alarm"
        )
        self.devices = {d.id: DeviceState.of(d) for d in self.config.devices}
        self.pollers: dict[str, BusPoller] = {}
        for bus in self.config.buses:
            spec = get_driver(bus.driver)
            devs = devices_on(self.config, bus.id)
            self.pollers[bus.id] = BusPoller(
                bus,
                [self.devices[d.id] for d in devs],
                functools.partial(spec.factory, bus, devs),
                self.outbox,
                self.config.publish.full_report_s,
            )
        self.executor = CommandExecutor(
            self.config.gateway.id, self.devices, self.pollers, self.outbox, self.counters
        )
        self.executor.seen_log = self.buffer  # command ids survive restarts
        self.uplink = Uplink(self.config, self.outbox, self.seqs, self.counters, self.executor.submit)
        for poller in self.pollers.values():  # units learned from devices go into the birth
            poller.learned_units = self.uplink.learned_units
            poller.on_units = self.uplink.rebirth
        self.plan = PlanRunner(
            self.config.gateway.id, self.config.data_dir, self.devices, self.executor, _groups(self.config)
        )
        self.uplink.on_plan = self.plan.on_plan
        self.executor.write_listeners.append(self.plan.on_hub_write)
        for poller in self.pollers.values():  # presence events reach the plan at once
            poller.event_listeners.append(self.plan.on_event)
        self.tasks: dict[str, TaskHealth] = {}
        self.stall_min_s = 120.0  # a running poller whose loop has not turned for this long is stalled

    # -- supervision --------------------------------------------------------------------------

    async def supervise(
        self, name: str, fn: Callable[[], Awaitable[Any]], on_crash: Callable[[], None] | None = None
    ) -> None:
        """Run ``fn`` forever: log and count each crash, restart it with backoff."""
        health = self.tasks.setdefault(name, TaskHealth())
        backoff = Backoff(1.0, 60.0)
        while True:
            started = time.monotonic()
            health.running = True
            try:
                await fn()
                log.error("task %s returned; restarting it", name)
            except asyncio.CancelledError:
                health.running = False
                raise
            except Exception as err:
                health.restarts += 1
                health.last_error = f"{type(err).__name__}: {err}"
                log.exception("task %s crashed (restart %d)", name, health.restarts)
            health.running = False
            if on_crash is not None:
                on_crash()
            if time.monotonic() - started > 300:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    def _mark_bus_failed(self, bus_id: str) -> Callable[[], None]:
        def mark() -> None:
            for dev in self.devices.values():
                if dev.config.bus == bus_id:
                    dev.health = Health.COMM_ERROR
                    dev.last_error = (
                        f"bus {bus_id} poller crashed: {self.tasks[f'poller-{bus_id}'].last_error}"
                    )

        return mark

    def healthy(self) -> bool:
        """True unless a running poller has stalled.

        Gates the systemd watchdog. A poller crashing and being restarted by its supervisor is
        not unhealthy (its devices show ``comm_error``; restarting the daemon would not help); a
        poller whose loop has not turned for ``stall_s`` (a hung driver call) is.
        """
        now = time.monotonic()
        for bus_id, p in self.pollers.items():
            longest = max((pt.interval_s for d in p.devices for pt in d.config.points), default=1.0)
            stall_s = max(self.stall_min_s, 3 * longest)
            if p.running and now - p.heartbeat > stall_s:
                log.error("bus %s poller stalled %.0fs: watchdog not pinged", bus_id, now - p.heartbeat)
                return False
        return True

    # -- control socket -----------------------------------------------------------------------

    async def op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        """Uplink state, per-device health, counters."""
        up = self.uplink
        m = self.config.mqtt
        return {
            "gateway": self.config.gateway.id,
            "version": SOFTWARE_VERSION,
            "config": self.config.source,
            "config_hash": self.config.config_hash,
            "session": self.seqs.session,
            "seq": self.seqs.last,
            "uptime_s": round((now_ms() - self.started_ms) / 1000, 1),
            "uplink": {
                "broker": f"{m.host}:{m.port}",
                "connected": up.connected,
                "connected_since_ms": up.connected_since_ms if up.connected else None,
                "last_error": up.last_error,
                "hub_online": up.hub_online,
                "queued_samples": len(self.outbox.samples),
                "queued_urgent": len(self.outbox.urgent),
                "buffered": len(self.buffer),
                "replay": self.uplink.replay.get("state"),
            },
            "buses": [
                {
                    "id": bus_id,
                    "driver": p.bus.driver,
                    "running": p.running,
                    "reads": p.reads_total,
                    "points_read": p.points_read,
                    "restarts": self.tasks.get(f"poller-{bus_id}", TaskHealth()).restarts,
                    "pushed": p.pushed_total,
                    "budget": _budget(p),
                    "cov": _cov(p),
                }
                for bus_id, p in self.pollers.items()
            ],
            "devices": [
                {
                    "id": d.config.id,
                    "bus": d.config.bus,
                    "kind": d.config.kind,
                    "health": d.health.value,
                    "failures": d.failures,
                    "errors_total": d.errors_total,
                    "last_error": d.last_error,
                    "last_ok_ms": d.last_ok_ms or None,
                }
                for d in self.devices.values()
            ],
            "tasks": {k: vars(v) for k, v in self.tasks.items()},
            "counters": vars(self.counters),
            "recent_commands": self.executor.last_results,
            "plan": self.plan.status(),
        }

    async def op_buffer(self, req: dict[str, Any]) -> dict[str, Any]:
        """The store-and-forward buffer: what waits, how old, what was dropped, the replay."""
        return buffer_report(self)

    async def op_points(self, req: dict[str, Any]) -> dict[str, Any]:
        """Live value, quality and time of every point (optionally of one device)."""
        want = req.get("device")
        if want is not None and want not in self.devices:
            raise KeyError(f"unknown device {want!r}")
        rows = []
        for d in self.devices.values():
            if want is not None and d.config.id != want:
                continue
            for ps in d.points.values():
                rows.append(
                    {
                        "device": d.config.id,
                        "point": ps.config.id,
                        "value": ps.value,
                        "unit": ps.config.unit
                        or self.uplink.learned_units.get((d.config.id, ps.config.id), ""),
                        "quality": ps.quality.value if ps.quality else None,
                        "ts_ms": ps.ts_ms or None,
                        "writable": ps.config.writable,
                        "error": ps.error,
                    }
                )
        return {"points": rows}

    async def op_bus_tool(self, req: dict[str, Any], progress: control.Progress) -> dict[str, Any]:
        """A technician tool on a bus (``citynerve-edge scan dali``, ``dali identify`` ...).

        Runs in the bus's poller, ahead of polling: the daemon owns the port.
        """
        bus_id = str(req.get("bus"))
        poller = self.pollers.get(bus_id)
        if poller is None:
            raise ValueError(f"unknown bus {bus_id!r} (buses: {', '.join(self.pollers) or 'none'})")
        if not callable(getattr(poller.driver, "tool", None)):
            raise ValueError(f"bus {bus_id} ({poller.bus.driver}) is not running or has no technician tools")
        action, args = str(req.get("action")), req.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"args must be a JSON object, got {type(args).__name__}")

        async def run(driver: BusDriver) -> Any:
            return await driver.tool(action, args, progress)  # type: ignore[attr-defined]

        try:
            return {"result": await poller.call(run)}
        except DriverError as err:
            raise ValueError(f"{type(err).__name__}: {err}") from err

    # -- the whole daemon ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        server = await control.serve(
            self.config.socket_path,
            {"status": self.op_status, "points": self.op_points, "buffer": self.op_buffer},
            {"bus_tool": self.op_bus_tool},
        )
        log.info(
            "citynerve-edge %s: gateway %s, %d buses, %d devices, control socket %s",
            SOFTWARE_VERSION,
            self.config.gateway.id,
            len(self.pollers),
            len(self.devices),
            self.config.socket_path,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for bus_id, poller in self.pollers.items():
                    tg.create_task(
                        self.supervise(f"poller-{bus_id}", poller.run, self._mark_bus_failed(bus_id)),
                        name=f"poller-{bus_id}",
                    )
                tg.create_task(self.supervise("uplink", self.uplink.run), name="uplink")
                tg.create_task(self.supervise("commands", self.executor.run), name="commands")
                tg.create_task(self.supervise("buffer-writer", self.outbox.run_writer), name="buffer-writer")
                tg.create_task(self.supervise("plan", self._run_plan), name="plan")
                tg.create_task(self._watchdog(), name="watchdog")
        finally:
            server.close()
            await server.wait_closed()
            self.config.socket_path.unlink(missing_ok=True)

    async def _run_plan(self) -> None:
        self.plan.load()
        await self.plan.run()

    async def _watchdog(self) -> None:
        # Ready once the config is valid and the pollers have opened their buses; not gated on
        # the broker, because the street must run while the network is down.
        await asyncio.sleep(0.2)
        systemd.notify("READY=1\nSTATUS=polling")
        interval = systemd.watchdog_interval()
        while True:
            await asyncio.sleep(interval or 3600)
            if interval and self.healthy():
                systemd.notify("WATCHDOG=1")


def open_buffer(config: EdgeConfig) -> DiskBuffer:
    """The on-disk buffer named by the config (kept across restarts and config reloads)."""
    b = config.buffer
    return DiskBuffer(
        b.path or config.data_dir / "buffer.db",
        max_bytes=b.max_bytes,
        max_age_s=b.max_age_h * 3600,
        sync=b.sync,
        memory_max_bytes=b.memory_max_bytes,
    )


def buffer_report(edge: Edge) -> dict[str, Any]:
    """What ``citynerve-edge buffer`` shows."""
    buf = edge.buffer
    oldest = buf.oldest_ms()
    st = buf.stats
    return {
        "path": str(buf.path),
        **buf.counts(),
        "waiting_in_memory": len(edge.outbox.samples) + len(edge.outbox.urgent),
        "oldest_ms": oldest,
        "oldest_age_s": None if oldest is None else round((now_ms() - oldest) / 1000, 1),
        "max_bytes": buf.max_bytes,
        "max_age_h": edge.config.buffer.max_age_h,
        "disk_ok": buf.disk_ok,
        "write_errors": st.write_errors,
        "last_error": st.last_error,
        "dropped_messages": st.dropped_messages,
        "dropped_samples": st.dropped_samples,
        "drops_unreported": vars(st.pending_drops),
        "appended": st.appended,
        "acked": st.acked,
        "uplink_connected": edge.uplink.connected,
        "hub_online": edge.uplink.hub_online,
        "replay": dict(edge.uplink.replay),
        "messages_replayed": edge.counters.messages_replayed,
        "samples_replayed": edge.counters.samples_replayed,
    }


def _groups(config: EdgeConfig) -> dict[str, tuple[str, ...]]:
    """Group/broadcast devices and the lamps each reaches with one frame (DALI groups)."""
    out = {}
    for d in config.devices:
        members = d.members([x for x in config.devices if x.bus == d.bus])
        if members:
            out[d.id] = tuple(members)
    return out


def _budget(poller: BusPoller) -> dict[str, Any] | None:
    """The bus budget of a driver that keeps one (``budget()``: frames/s used vs available)."""
    budget = getattr(poller.driver, "budget", None)
    if not callable(budget):
        return None
    result: dict[str, Any] = budget()
    return result


def _cov(poller: BusPoller) -> list[dict[str, Any]] | None:
    """COV subscriptions of a driver that keeps them (``cov_status()``: state, renewals ...)."""
    status = getattr(poller.driver, "cov_status", None)
    if not callable(status):
        return None
    result: list[dict[str, Any]] = status()
    return result


async def run(config: EdgeConfig) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    edge = Edge(config)
    try:
        await edge.run()
    except asyncio.CancelledError:
        log.info("stopping on signal")
        systemd.notify("STOPPING=1")
