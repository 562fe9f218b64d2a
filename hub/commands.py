"""Command dispatch: validate against the registry, store, publish, track acks and expiry."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from wire import Ack, AckStatus, Command, CommandAction, Kind, PointType, Value, encode_command

from .config import CommandSettings
from .counters import Counters
from .errors import ApiError
from .mqtt import BrokerUnavailable, MqttLink
from .registry import GatewayState, PointState, Registry
from .storage import Storage

log = logging.getLogger(__name__)

PENDING = "pending"
ACKNOWLEDGED = "acknowledged"
STATUSES = (PENDING, ACKNOWLEDGED, "rejected", "failed", "expired")
_FROM_ACK = {
    AckStatus.OK: ACKNOWLEDGED,
    AckStatus.REJECTED: "rejected",
    AckStatus.FAILED: "failed",
    AckStatus.EXPIRED: "expired",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


async def record_ack(storage: Storage, counters: Counters, gw: GatewayState, ack: Ack) -> None:
    """Apply an ack from a gateway to its command."""
    try:
        cid = uuid.UUID(ack.id)
    except ValueError:
        cid = None
    status = _FROM_ACK[ack.status]
    if cid is not None and await storage.finish_command(
        cid, status=status, detail=ack.detail, at_ms=ack.ts_ms or _now_ms(), readback=ack.value
    ):
        counters.inc(f"commands.{status}")
        log.info("gateway %s: command %s %s %s", gw.name, ack.id, status, ack.detail)
    elif cid is not None and await storage.command_exists(cid):
        counters.inc("ack.late")
        log.info("gateway %s: ack %s for command %s that is no longer pending",
                 gw.name, ack.status.value, ack.id)
    else:
        counters.inc("ack.unknown")
        log.warning("gateway %s: ack for unknown command id %r", gw.name, ack.id)


def check_value(pt: PointState, value: object) -> Value:
    """The value if it suits the point's type and range; ApiError otherwise."""
    if pt.type == PointType.BOOL:
        if not isinstance(value, bool):
            raise ApiError(422, "invalid_value", f"point {pt.name} takes a boolean")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(422, "invalid_value", f"point {pt.name} takes a number")
    if pt.type == PointType.INT and not float(value).is_integer():
        raise ApiError(422, "invalid_value", f"point {pt.name} takes an integer")
    if (pt.min is not None and value < pt.min) or (pt.max is not None and value > pt.max):
        raise ApiError(
            422, "out_of_range",
            f"{value} is outside {pt.name}'s range [{pt.min}, {pt.max}]",
        )
    return int(value) if pt.type == PointType.INT else value


def command_action(stored_value: object) -> tuple[str, object]:
    """(action, value) of a stored command: a relinquish is stored as {"action": "relinquish"}."""
    if isinstance(stored_value, dict) and "action" in stored_value:
        return str(stored_value["action"]), None
    return CommandAction.SET.value, stored_value


class Dispatcher:
    """Accepts operator commands and publishes them to the owning gateway."""

    def __init__(
        self,
        settings: CommandSettings,
        registry: Registry,
        storage: Storage,
        link: MqttLink,
        counters: Counters,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._storage = storage
        self._link = link
        self._counters = counters

    async def submit(
        self, device: str, point: str, value: object, ttl_s: float | None, source: str,
        action: CommandAction = CommandAction.SET,
    ) -> tuple[dict[str, Any], GatewayState]:
        """Validate, store as pending and publish; return the stored command and its gateway."""
        dev = self._registry.devices.get(device)
        if dev is None:
            raise ApiError(404, "unknown_device", f"no device {device!r}")
        pt = dev.points.get(point)
        if pt is None:
            raise ApiError(404, "unknown_point", f"device {device} has no point {point!r}")
        if not pt.writable:
            raise ApiError(409, "point_not_writable", f"point {device}.{point} is read-only")
        # A relinquish carries no value; it is stored as {"action": ...} in the value column
        # (no schema change), see command_action().
        checked = None if action is CommandAction.RELINQUISH else check_value(pt, value)
        stored_value: object = checked if action is CommandAction.SET else {"action": action.value}
        ttl = self._s.default_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self._s.max_ttl_s:
            raise ApiError(422, "invalid_ttl", f"ttl_s must be in (0, {self._s.max_ttl_s}]")
        gw = self._registry.gateway_of(dev)
        now = _now_ms()
        cid = uuid.uuid4()
        expires = now + int(ttl * 1000)
        await self._storage.insert_command(
            id=cid, gateway_id=gw.id, device=device, point=point, value=stored_value,
            status=PENDING, created_ms=now, expires_ms=expires, source=source,
        )
        cmd = Command(id=str(cid), device=device, point=point, value=checked,
                      expires_at_ms=expires, source=source, action=action)
        try:
            await self._link.publish(
                self._link.topics.gateway(gw.name, Kind.CMD), encode_command(cmd)
            )
        except BrokerUnavailable as err:
            await self._storage.finish_command(
                cid, status="failed", detail=f"broker unavailable: {err}", at_ms=_now_ms(),
                readback=None,
            )
            self._counters.inc("commands.unpublished")
            raise ApiError(503, "broker_unavailable", "the hub is not connected to the broker; "
                           "the command was not sent") from err
        self._counters.inc("commands.sent")
        log.info("gateway %s device %s: command %s %s=%r by %s (ttl %ss)",
                 gw.name, device, cid, point, checked, source, ttl)
        stored = await self._storage.get_command(cid)
        assert stored is not None
        return stored, gw

    async def sweep(self) -> None:
        """Mark pending commands past their expiry as expired, every sweep interval."""
        failing = False
        while True:
            try:
                n = await self._storage.expire_commands(_now_ms())
            except Exception:
                # A locked or failing database must not end the sweep for good (found by
                # tests/test_faults_hub.py): count, log the first failure, try again next time.
                self._counters.inc("errors.sweep")
                if not failing:
                    log.exception("command expiry sweep failed; retrying every %.1f s",
                                  self._s.sweep_interval_s)
                failing = True
            else:
                if failing:
                    log.info("command expiry sweep recovered")
                failing = False
                if n:
                    self._counters.inc("commands.expired", n)
                    log.info("%d command(s) expired without ack", n)
            await asyncio.sleep(self._s.sweep_interval_s)
