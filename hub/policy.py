"""The hub's lighting-policy runner: evaluates the city's policy on every change, commands lamps
whose level changed (group commands where a whole group agrees, rate-limited per gateway),
records why each lamp has its level, and publishes each gateway's retained plan.

Changes that wake it: the next schedule step (`rules.next_change`), a presence event from ingest
(`IngestWriter.event_listeners`), a policy write through the REST API (profiles, calendars,
zones, lamps, presence rules, overrides, crisis). Time comes from an injectable clock
(`app[POLICY_CLOCK]`, epoch ms) so tests can run a simulated night fast. See docs/policy.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

import wire
from rules import (
    City,
    Decision,
    PolicyData,
    PolicySettings,
    PresenceEvent,
    PresenceState,
    command_level,
    diff_commands,
    plan_for,
)
from rules.model import (
    Calendar,
    Crisis,
    Lamp,
    Loc,
    Override,
    PresenceRule,
    Profile,
    Zone,
    check_references,
)

from .counters import Counters
from .errors import ApiError
from .keys import DISPATCHER, LINK, REGISTRY, STORAGE
from .mqtt import BrokerUnavailable, MqttLink
from .registry import Registry
from .storage.policy_store import PolicyStore

log = logging.getLogger(__name__)

Clock = Callable[[], int]
LEVEL_POINT = "level"
#: Policy list name -> item model (REST bodies are validated with these).
MODELS: dict[str, type[Any]] = {
    "profiles": Profile,
    "calendars": Calendar,
    "zones": Zone,
    "lamps": Lamp,
    "presence_rules": PresenceRule,
    "overrides": Override,
    "crises": Crisis,
}
COMMAND_TTL_S = 30.0
PRESENCE_KINDS = frozenset({"presence"})


def wall_clock() -> int:
    """The real time in epoch ms (the default clock)."""
    return int(time.time() * 1000)


@dataclass
class RunnerSettings:
    """Knobs of the runner (defaults suit a city; tests shorten them)."""

    #: At most this many commands per second per gateway (a DALI bus carries ~40 frames/s;
    #: the rest of the budget stays for polling and sensors).
    rate_per_gateway: float = 10.0
    #: The longest the runner sleeps without re-evaluating (a safety net: it also wakes at the
    #: next schedule change and on every event).
    max_sleep_s: float = 30.0


class PolicyInvalid(Exception):
    """A policy write would break the policy; `errors` are (loc, message) pairs."""

    def __init__(self, errors: list[tuple[Loc, str]], status: int = 422) -> None:
        super().__init__("; ".join(f"{_loc(loc)}: {msg}" for loc, msg in errors))
        self.errors = errors
        self.status = status


def _loc(loc: Loc) -> str:
    return ".".join(str(x) for x in loc) or "body"


def validation_errors(err: ValidationError, prefix: Loc = ()) -> list[tuple[Loc, str]]:
    """A pydantic error as (loc, message) pairs (loc prefixed, e.g. ("steps", 2, "level"))."""
    return [((*prefix, *e["loc"]), e["msg"]) for e in err.errors()]


@dataclass
class _Sender:
    """The rate-limited command queue of one gateway: latest level per target wins."""

    pending: dict[str, int] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class PolicyRunner:
    """Runs the city's lighting policy on the hub."""

    def __init__(
        self,
        store: PolicyStore,
        registry: Registry,
        submit: Callable[..., Any],
        link: MqttLink,
        counters: Counters,
        clock: Clock = wall_clock,
        settings: RunnerSettings | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._submit = submit
        self._link = link
        self._counters = counters
        self.clock = clock
        self.settings = settings or RunnerSettings()
        self.raw: dict[str, Any] = {"settings": {}, "default_calendar": "default", **{k: [] for k in MODELS}}
        self.sensors: dict[str, list[str]] = {}  # lamp -> sensor devices standing at it
        self.city: City | None = None
        self.problems: list[tuple[Loc, str]] = []
        self.presence = PresenceState()
        self.decisions: dict[str, Decision] = {}
        self.sent: dict[str, int] = {}  # lamp -> last commanded level
        self.plan_versions: dict[str, str] = {}
        self.commands_sent = 0
        self.evaluations = 0
        #: perf_counter of the last presence event, for the latency bench
        self.last_presence_at: float | None = None
        self.on_command: list[Callable[[str, str, int], None]] = []  # (gateway, target, level)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._senders: dict[str, _Sender] = {}
        self._plans_dirty = True
        self._plan_key: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ policy state

    async def load(self) -> None:
        """Load the stored policy (an incomplete one is kept and reported, not run)."""
        raw, sensors = await self._store.load()
        self.raw, self.sensors = raw, sensors
        self.city, self.problems = self._build(raw)
        if self.problems:
            log.warning("lighting policy incomplete, not running: %s", PolicyInvalid(self.problems))

    def _build(self, raw: dict[str, Any]) -> tuple[City | None, list[tuple[Loc, str]]]:
        """The city, or None and every problem (loc, message) that stops it from running."""
        problems: list[tuple[Loc, str]] = []
        items: dict[str, list[Any]] = {}
        try:
            settings = PolicySettings.model_validate(raw["settings"])
        except ValidationError as err:
            return None, validation_errors(err, ("settings",))
        for name, model in MODELS.items():
            items[name] = []
            for i, body in enumerate(raw[name]):
                try:
                    items[name].append(model.model_validate(body))
                except ValidationError as err:
                    problems += validation_errors(err, (name, i))
        if problems:
            return None, problems
        draft = PolicyData.model_construct(
            None, settings=settings, default_calendar=raw["default_calendar"], **items
        )
        refs = [(loc, msg) for loc, msg, _ in check_references(draft)]
        if not items["lamps"] and not refs:
            refs = [(("lamps",), "no lamps yet")]
        if refs:
            return None, refs
        return City.model_validate(raw), []

    def _item_loc(self, kind: str, item_id: str) -> Loc:
        for i, x in enumerate(self.raw[kind]):
            if x.get("id") == item_id:
                return (kind, i)
        return (kind, len(self.raw[kind]))

    async def write(self, kind: str, body: dict[str, Any], *, delete: bool = False,
                    sensors: list[str] | None = None) -> None:
        """Create, replace (by id) or delete one policy object, refusing a write that breaks a
        reference (PolicyInvalid naming it); then persist, re-plan and re-evaluate."""
        async with self._lock:
            raw = copy.deepcopy(self.raw)
            item_id = str(body["id"])
            items = [x for x in raw[kind] if x.get("id") != item_id]
            if not delete:
                idx = next((i for i, x in enumerate(raw[kind]) if x.get("id") == item_id), len(items))
                items.insert(idx, body)
            raw[kind] = items
            _, before = self._build(self.raw)
            city, after = self._build(raw)
            old = {(loc[0] if loc else "", msg) for loc, msg in before}
            new = [(loc, msg) for loc, msg in after if (loc[0] if loc else "", msg) not in old]
            new = [p for p in new if p[1] != "no lamps yet"]
            if new:
                raise PolicyInvalid(new, 409 if delete else 422)
            now = self.clock()
            if delete:
                await self._store.delete(kind, item_id)
            else:
                extra = {"sensors": sensors} if kind == "lamps" and sensors is not None else {}
                await self._store.put(kind, item_id, body, now, **extra)
                if extra:
                    self.sensors[item_id] = list(sensors or [])
            if delete and kind == "lamps":
                self.sensors.pop(item_id, None)
            self.raw, self.city, self.problems = raw, city, after
            self._plans_dirty = True
            self.poke()

    async def write_settings(self, settings: dict[str, Any], default_calendar: str) -> None:
        """Replace the city settings and default calendar (validated like the rest)."""
        async with self._lock:
            try:
                PolicySettings.model_validate(settings)
            except ValidationError as err:
                raise PolicyInvalid(validation_errors(err, ("settings",))) from None
            raw = {**self.raw, "settings": settings, "default_calendar": default_calendar}
            city, problems = self._build(raw)
            await self._store.put_config(settings, default_calendar)
            self.raw, self.city, self.problems = raw, city, problems
            self._plans_dirty = True
            self.poke()

    def get(self, kind: str, item_id: str) -> dict[str, Any] | None:
        """The stored body of one policy object."""
        return next((x for x in self.raw[kind] if x.get("id") == item_id), None)

    # ------------------------------------------------------------------ events

    def poke(self) -> None:
        """Re-evaluate now (after a policy change, a presence event, or a clock jump in tests)."""
        self._wake.set()

    def sensor_lamp(self, device: str) -> str | None:
        """The lamp a presence event from `device` is at: the lamp itself or its sensor's lamp."""
        city = self.city
        if city is None:
            return None
        if device in city.lamp_by_id:
            return device
        for lamp, devs in self.sensors.items():
            if device in devs and lamp in city.lamp_by_id:
                return lamp
        return None

    def on_event(self, gateway: str, ev: wire.Event) -> None:
        """Ingest listener: a presence event raises its lamp and neighbours (any gateway)."""
        if ev.kind not in PRESENCE_KINDS or not ev.active or self.city is None:
            return
        if ev.historical:
            # replayed from a gateway's buffer after an outage: that passer-by is long gone, and
            # lighting the street now for them would be wrong (the edge lit it at the time)
            self._counters.inc("policy.presence_historical")
            return
        lamp = self.sensor_lamp(ev.device)
        if lamp is None:
            self._counters.inc("policy.presence_unmapped")
            return
        now = self.clock()
        # The hold starts when the sensor saw someone (the event's time), not when the event got
        # here: a delayed event holds only for what is left; never later than now (a gateway
        # clock ahead of the hub's must not stretch the hold).
        at = min(ev.ts_ms, now)
        self.presence = self.city.evaluator.apply_event(self.presence, PresenceEvent(lamp, at), now)
        self._counters.inc("policy.presence")
        self.last_presence_at = time.perf_counter()
        self.poke()

    # ------------------------------------------------------------------ evaluation

    def gateway_of(self, lamp: Lamp) -> str | None:
        """The gateway driving a lamp: as declared, else as the registry knows its device."""
        if lamp.gateway:
            return lamp.gateway
        dev = self._registry.devices.get(lamp.id)
        return None if dev is None else self._registry.gateway_of(dev).name

    def _groups(self, gateway: str) -> dict[str, tuple[str, ...]]:
        gw = self._registry.gateways.get(gateway)
        if gw is None:
            return {}
        devs = self._registry.devices.values()
        return {d.name: d.members for d in devs if d.members and d.gateway_id == gw.id}

    async def evaluate(self) -> None:
        """Evaluate every lamp now; queue the commands whose level changed; record decisions."""
        city = self.city
        if city is None:
            return
        now = self.clock()
        self.evaluations += 1
        self.presence = self.presence.pruned(now)
        decisions = city.evaluator.evaluate_all(now, self.presence)
        by_gw: dict[str, dict[str, int]] = defaultdict(dict)
        for lid, d in decisions.items():
            if lid not in self._registry.devices:
                continue  # not reported by any gateway yet: decided, nothing to command
            gw = self.gateway_of(city.lamp_by_id[lid])
            if gw is not None:
                by_gw[gw][lid] = command_level(d.level)
        for gw, desired in by_gw.items():
            last = {k: v for k, v in self.sent.items() if k in desired}
            cmds, new_last = diff_commands(desired, last, self._groups(gw))
            for target, level in cmds:
                self._enqueue(gw, target, int(level))
            self.sent.update({k: int(v) for k, v in new_last.items()})
        changed = [
            (lid, d.level, d.source, d.detail, now, None)
            for lid, d in decisions.items()
            if (old := self.decisions.get(lid)) is None or (old.level, old.source) != (d.level, d.source)
        ]
        self.decisions = decisions
        if changed:
            try:
                await self._store.record_decisions(changed)
            except Exception:
                self._counters.inc("errors.policy_decisions")
                log.exception("recording %d policy decisions failed", len(changed))

    def _enqueue(self, gateway: str, target: str, level: int) -> None:
        s = self._senders.get(gateway)
        if s is None:
            s = self._senders[gateway] = _Sender()
            s.task = asyncio.create_task(self._send_loop(gateway, s), name=f"hub-policy-send-{gateway}")
        s.pending.pop(target, None)
        s.pending[target] = level
        s.wake.set()

    async def _send_loop(self, gateway: str, s: _Sender) -> None:
        """Send the queued commands of one gateway, at most rate_per_gateway per second."""
        gap = 1.0 / self.settings.rate_per_gateway
        while True:
            await s.wake.wait()
            s.wake.clear()
            while s.pending:
                target = next(iter(s.pending))
                level = s.pending.pop(target)
                try:
                    await self._submit(target, LEVEL_POINT, level, COMMAND_TTL_S, "policy")
                except (ApiError, BrokerUnavailable) as err:
                    self._counters.inc("policy.command_errors")
                    log.warning("policy: command %s.%s=%s to gateway %s not sent: %s",
                                target, LEVEL_POINT, level, gateway, err)
                    dev = self._registry.devices.get(target)
                    for lamp in (target, *(dev.members if dev is not None else ())):
                        self.sent.pop(lamp, None)  # resent on the next evaluation
                else:
                    self.commands_sent += 1
                    self._counters.inc("policy.commands")
                    for fn in self.on_command:
                        fn(gateway, target, level)
                await asyncio.sleep(gap)

    # ------------------------------------------------------------------ plans

    async def publish_plans(self) -> None:
        """Publish each gateway's retained plan whose content changed (versioned by content)."""
        city = self.city
        key = (id(city), len(self._registry.devices))
        if city is None or (not self._plans_dirty and key == self._plan_key):
            return
        lamps: dict[str, list[str]] = defaultdict(list)
        for lamp in city.lamps:
            gw = self.gateway_of(lamp)
            if gw is not None:
                lamps[gw].append(lamp.id)
        ok = True
        for gw, ids in lamps.items():
            plan = plan_for(city, ids, gw)
            if self.plan_versions.get(gw) == plan.version:
                continue
            sensors = {dev: lid for lid in ids for dev in self.sensors.get(lid, ())}
            msg = wire.PlanMessage(gw, plan.version, self.clock(), plan.to_wire(), sensors)
            try:
                await self._link.publish(self._link.topics.plan(gw), wire.encode_plan(msg), retain=True)
            except BrokerUnavailable as err:
                ok = False
                log.info("plan for %s not published yet: %s", gw, err)
                continue
            self.plan_versions[gw] = plan.version
            self._counters.inc("policy.plans")
            log.info("published plan %s for gateway %s (%d lamps)", plan.version, gw, len(ids))
        self._plans_dirty = not ok
        self._plan_key = key

    async def run(self) -> None:
        """Evaluate, publish plans, sleep until the next change or a poke; forever."""
        while True:
            self._wake.clear()
            try:
                await self.publish_plans()
                await self.evaluate()
            except Exception:
                self._counters.inc("errors.policy")
                log.exception("policy evaluation failed; retrying")
            delay = self.settings.max_sleep_s
            city = self.city
            if city is not None:
                now = self.clock()
                delay = min(delay, max(0.0, (city.evaluator.next_change(now, self.presence) - now) / 1000))
            if self._plans_dirty:
                delay = min(delay, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def close(self) -> None:
        """Stop the senders."""
        for s in self._senders.values():
            if s.task is not None:
                s.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await s.task


POLICY = web.AppKey("policy", PolicyRunner)
POLICY_CLOCK: web.AppKey[Clock] = web.AppKey("policy_clock")
POLICY_SETTINGS = web.AppKey("policy_settings", RunnerSettings)


def _runner_settings(app: web.Application) -> RunnerSettings:
    """The runner's knobs from the hub config's `policy:` section."""
    from .keys import SETTINGS

    p = app[SETTINGS].policy
    return RunnerSettings(rate_per_gateway=p.rate_per_gateway, max_sleep_s=p.max_sleep_s)


async def policy_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: load the policy, hook ingest's events, run until the app stops."""
    from .keys import COUNTERS, WRITER

    runner = PolicyRunner(
        PolicyStore(app[STORAGE]),
        app[REGISTRY],
        app[DISPATCHER].submit,
        app[LINK],
        app[COUNTERS],
        clock=app.get(POLICY_CLOCK, wall_clock),
        settings=app.get(POLICY_SETTINGS) or _runner_settings(app),
    )
    await runner.load()
    app[POLICY] = runner
    app[WRITER].event_listeners.append(runner.on_event)
    task = asyncio.create_task(runner.run(), name="hub-policy")
    yield
    app[WRITER].event_listeners.remove(runner.on_event)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await runner.close()
