"""The edge's lighting-plan runner: runs the hub's retained plan for this gateway's own lamps.

The hub publishes a versioned plan (`wire.PlanMessage` on `cn/v1/gw/{gw}/plan`, retained); the
uplink hands every one received to `PlanRunner.on_plan`, which validates it (`rules.Plan`, its
content version included), persists it (`<data_dir>/plan.msgpack`, write + fsync + rename) and
runs it: the levels of the schedule, overrides and crisis are applied at each change through the
command executor's bus path (`CommandExecutor.apply_local`: same checks, same per-bus write
queue, no ack to the hub), so with the hub or the network gone the street still follows its
night. A presence event on one of its lamps (a poller event of kind `presence`) raises the lamp
and its neighbours on this gateway at once, without a round trip to the hub.

Time: `clock()` (epoch ms) is the wall clock shifted by `CITYNERVE_CLOCK_OFFSET_S` seconds
(read once at start; for tests and rehearsals); `PlanRunner.clock` can be replaced in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

import wire
from rules import Decision, Plan, PresenceEvent, PresenceState, command_level, diff_commands
from wire import AckStatus

from .commands import CommandExecutor
from .fsutil import write_atomic
from .outbox import PendingEvent
from .state import DeviceState, now_ms

log = logging.getLogger(__name__)

CLOCK_ENV = "CITYNERVE_CLOCK_OFFSET_S"
LEVEL_POINT = "level"
PLAN_FILE = "plan.msgpack"
PRESENCE_KINDS = frozenset({"presence"})
HUB_POLICY_SOURCE = "policy"  # the source of the commands the hub's policy runner sends


def _offset_ms() -> int:
    raw = os.environ.get(CLOCK_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(float(raw) * 1000)
    except ValueError:
        log.error("%s=%r is not a number of seconds; using the real clock", CLOCK_ENV, raw)
        return 0


_OFFSET_MS = _offset_ms()


def clock() -> int:
    """Now in epoch ms, shifted by CITYNERVE_CLOCK_OFFSET_S."""
    return int(time.time() * 1000) + _OFFSET_MS




class PlanRunner:
    """Holds the current plan and applies its levels to this gateway's lamps."""

    def __init__(
        self,
        gateway_id: str,
        data_dir: Path,
        devices: Mapping[str, DeviceState],
        executor: CommandExecutor,
        groups: Mapping[str, tuple[str, ...]] | None = None,
        max_sleep_s: float = 30.0,
        verify_s: float = 2.0,
    ) -> None:
        self.gateway_id = gateway_id
        self.path = data_dir / PLAN_FILE
        self.devices = devices
        self.executor = executor
        self.groups = dict(groups or {})
        self.max_sleep_s = max_sleep_s
        self.verify_s = verify_s
        self._written_ms: dict[str, int] = {}  # lamp -> wall time of our last write (poll freshness)
        # lamp -> (level, monotonic time) of the hub policy's last raise of it: presence the hub
        # saw on another gateway (neighbours across a cabinet boundary), which this plan cannot see
        self._hub_raised: dict[str, tuple[int, float]] = {}
        # lamp -> (level, what the plan wanted then) of an operator's direct command
        self._manual: dict[str, tuple[int, int | None]] = {}
        self.corrections = 0
        self.clock: Callable[[], int] = clock
        self.plan: Plan | None = None
        self.received_ts_ms = 0
        self.sensors: dict[str, str] = {}
        self.presence = PresenceState()
        self.decisions: dict[str, Decision] = {}
        self.applied: dict[str, int] = {}  # lamp -> level last written
        self.writes = 0
        self.write_failures = 0
        self.plans_refused = 0
        self.last_error = ""
        #: Called with (target device, level) after each successful write (tests, benchmarks).
        self.on_apply: list[Callable[[str, int], None]] = []
        self._wake = asyncio.Event()
        self._retry = False

    # ------------------------------------------------------------------ plan in

    def load(self) -> None:
        """Load the last plan persisted on disk (if any) so the street runs before the broker."""
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return
        if self._accept(payload, persist=False):
            log.info("plan %s loaded from %s", self.version, self.path)

    @property
    def version(self) -> str | None:
        """The running plan's content version."""
        return None if self.plan is None else self.plan.version

    def on_plan(self, payload: bytes) -> None:
        """Uplink hook: a retained plan arrived; an invalid one is refused and the old one kept."""
        self._accept(payload, persist=True)

    def _accept(self, payload: bytes, persist: bool) -> bool:
        try:
            msg = wire.decode_plan(payload)
            if msg.gateway != self.gateway_id:
                raise ValueError(f"plan is for gateway {msg.gateway!r}, this is {self.gateway_id!r}")
            plan = Plan.from_wire(msg.plan)
            if plan.version != msg.version:
                raise ValueError(f"envelope version {msg.version} differs from the plan's {plan.version}")
        except (wire.WireError, ValidationError, ValueError) as err:
            self.plans_refused += 1
            self.last_error = f"plan refused: {err}"
            log.error("plan refused, keeping %s: %s", self.version or "no plan", err)
            return False
        if self.plan is not None and plan.version == self.plan.version and msg.sensors == self.sensors:
            return True
        if persist:
            try:
                write_atomic(self.path, payload)
            except OSError as err:
                log.error("plan %s runs but could not be saved to %s: %s", plan.version, self.path, err)
        self.plan, self.sensors, self.received_ts_ms = plan, dict(msg.sensors), msg.ts_ms
        log.info("running plan %s (%d lamps)", plan.version, len(plan.lamps))
        self.poke()
        return True

    # ------------------------------------------------------------------ events

    def poke(self) -> None:
        """Re-evaluate now."""
        self._wake.set()

    def on_event(self, ev: PendingEvent) -> None:
        """Poller listener: a presence event at one of our lamps raises it and its neighbours."""
        plan = self.plan
        if plan is None or ev.kind not in PRESENCE_KINDS or not ev.active:
            return
        lamp = ev.device if ev.device in plan.lamp_by_id else self.sensors.get(ev.device)
        if lamp is None or lamp not in plan.lamp_by_id:
            return
        now = self.clock()
        self.presence = plan.evaluator.apply_event(self.presence, PresenceEvent(lamp, now), now)
        self.poke()

    def on_hub_write(self, cmd: wire.Command, value: wire.Value) -> None:
        """Executor listener: a level the hub wrote that `_verify` must not undo.

        From the hub's policy (source ``policy``): a raise above our plan is presence the hub
        saw elsewhere, kept while it may still hold. From anyone else (an operator's ``POST
        /commands``): a manual level, kept until the plan's next change for that lamp (its next
        step, presence, an override), as a lighting controller's "manual until next switch
        point"; a lasting manual level is an override.
        """
        if cmd.point != LEVEL_POINT or cmd.action is not wire.CommandAction.SET:
            return
        if not isinstance(cmd.value, int | float):
            return
        level = round(value) if isinstance(value, int | float) else round(cmd.value)
        lamps = (cmd.device, *self.groups.get(cmd.device, ()))
        if cmd.source == HUB_POLICY_SOURCE:
            t = time.monotonic()
            for lamp in lamps:
                self._hub_raised[lamp] = (round(cmd.value), t)
            return
        for lamp in lamps:
            d = self.decisions.get(lamp)
            wanted = self.applied.get(lamp, None if d is None else command_level(d.level))
            self._manual[lamp] = (level, wanted)
            log.info("lamp %s set to %s by %s: kept until the plan's next change",
                     lamp, level, cmd.source or "?")

    def _hub_trust_s(self) -> float:
        """How long a hub raise is kept: the longest presence hold and fade of the plan, plus a
        minute (the hub sends the level back down itself when the presence ends)."""
        rules = [] if self.plan is None else self.plan.presence_rules
        return 60.0 + max((r.hold_s + r.ramp_down_s for r in rules), default=0.0)

    # ------------------------------------------------------------------ running

    async def evaluate(self) -> None:
        """Apply the levels that changed since the last evaluation (group writes where they agree)."""
        plan = self.plan
        if plan is None:
            return
        self._retry = False
        now = self.clock()
        self.presence = self.presence.pruned(now)
        self.decisions = plan.evaluator.evaluate_all(now, self.presence)
        desired = {lid: command_level(d.level) for lid, d in self.decisions.items() if lid in self.devices}
        self._verify(desired)
        cmds, new_last = diff_commands(desired, self.applied, self.groups)
        self.applied = {k: int(v) for k, v in new_last.items()}
        if cmds:
            await asyncio.gather(*(self._write(target, int(level)) for target, level in cmds))

    def _verify(self, desired: Mapping[str, int]) -> None:
        """Forget what we wrote to a lamp whose level, polled after our write, is not what the
        plan wants (a late hub command, a technician, a power cut): it is written again."""
        for lamp, (_, wanted) in list(self._manual.items()):
            if wanted is not None and desired.get(lamp, wanted) != wanted:
                del self._manual[lamp]  # the plan moved on (next step): the manual level ends
        for lid in desired:
            ps = self.devices[lid].points.get(LEVEL_POINT)
            done = self._written_ms.get(lid)
            if lid not in self.applied or ps is None or done is None or ps.ts_ms <= done:
                continue
            if isinstance(ps.value, int | float) and round(ps.value) != self.applied[lid]:
                level = round(ps.value)
                if self._hub_holds(lid, level) or self._manual_holds(lid, level):
                    continue
                self.corrections += 1
                log.info("lamp %s reads %s, plan wants %s: writing it again", lid, ps.value, desired[lid])
                del self.applied[lid]

    def _hub_holds(self, lamp: str, level: int) -> bool:
        """True while the lamp's level is a raise the hub's policy wrote (and may still hold)."""
        raised = self._hub_raised.get(lamp)
        if raised is None:
            return False
        if time.monotonic() - raised[1] > self._hub_trust_s():
            del self._hub_raised[lamp]
            return False
        return raised[0] == level and level > self.applied[lamp]

    def _manual_holds(self, lamp: str, level: int) -> bool:
        """True while an operator's level stands (`_verify` ends it when the plan moves on)."""
        manual = self._manual.get(lamp)
        return manual is not None and manual[0] == level

    async def _write(self, target: str, level: int) -> None:
        status, detail, _ = await self.executor.apply_local(target, LEVEL_POINT, level)
        if status is AckStatus.OK:
            done = now_ms()
            for lamp in (target, *self.groups.get(target, ())):
                self._written_ms[lamp] = done
            self.writes += 1
            for fn in self.on_apply:
                fn(target, level)
            return
        self.write_failures += 1
        self._retry = True
        self.last_error = f"{target}.{LEVEL_POINT}={level}: {status.value} {detail}"
        log.warning("plan write %s", self.last_error)
        for lamp in (target, *self.groups.get(target, ())):
            self.applied.pop(lamp, None)  # retried at the next evaluation

    async def run(self) -> None:
        """Evaluate, then sleep until the plan's next change, an event or a new plan; forever."""
        while True:
            self._wake.clear()
            await self.evaluate()
            delay = self.max_sleep_s
            if self.plan is not None:
                delay = min(delay, self.verify_s)
                now = self.clock()
                nxt = self.plan.evaluator.next_change(now, self.presence)
                delay = min(delay, max(0.0, (nxt - now) / 1000))
            if self._retry:
                delay = min(delay, 5.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def status(self) -> dict[str, object]:
        """For `citynerve-edge status`."""
        return {
            "version": self.version,
            "lamps": 0 if self.plan is None else len(self.plan.lamps),
            "writes": self.writes,
            "write_failures": self.write_failures,
            "corrections": self.corrections,
            "plans_refused": self.plans_refused,
            "last_error": self.last_error,
        }
