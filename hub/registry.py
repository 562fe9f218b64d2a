"""The in-memory registry and live state: gateways, devices, points and latest values.

Loaded from the database at start, kept in step by ingest (write-through), read by the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from wire import Birth, PointType, Value

from .counters import Counters
from .seqtrack import Gap, SeqTrack
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PointState:
    """A point and its latest value (stored as REAL, typed on the way out)."""

    id: int
    device_id: int
    name: str
    type: str = PointType.FLOAT.value
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    declared: bool = True
    value: float | None = None
    ts_ms: int | None = None
    quality: int | None = None

    def typed(self, raw: float | None) -> Value:
        """A stored REAL as the point's type."""
        if raw is None:
            return None
        if self.type == PointType.BOOL:
            return raw != 0
        if self.type == PointType.INT:
            return int(raw)
        return raw


@dataclass(slots=True)
class DeviceState:
    """A device and its points by name."""

    id: int
    name: str
    gateway_id: int
    kind: str = ""
    driver: str = ""
    declared: bool = True
    points: dict[str, PointState] = field(default_factory=dict)
    #: Devices this one reaches with one frame (a DALI group/broadcast), from the last birth.
    #: Not stored: births are retained, so the hub relearns them on every (re)connect.
    members: tuple[str, ...] = ()


@dataclass(slots=True)
class GatewayState:
    """A gateway's presence and identity."""

    id: int
    name: str
    online: bool = False
    session: int = 0
    last_seen_ms: int | None = None
    sw_version: str = ""
    config_hash: str = ""
    last_seq: int | None = None
    track: SeqTrack = field(default_factory=SeqTrack)


def _as_float(v: Value) -> float | None:
    return None if v is None else float(v)


def _type_of(v: Value) -> str:
    if isinstance(v, bool):
        return PointType.BOOL.value
    if isinstance(v, int):
        return PointType.INT.value
    return PointType.FLOAT.value


class Registry:
    """Gateways, devices and points by id and name; the single writer is the ingest task."""

    def __init__(self, storage: Storage, counters: Counters) -> None:
        self._storage = storage
        self._counters = counters
        self.gateways: dict[str, GatewayState] = {}
        self.gateways_by_id: dict[int, GatewayState] = {}
        self.devices: dict[str, DeviceState] = {}
        self.devices_by_id: dict[int, DeviceState] = {}

    async def warm_up(self) -> None:
        """Load everything from the database."""
        gws, devs, pts = await self._storage.load_registry()
        for g in gws:
            self._add_gateway(GatewayState(**g))
        for d in devs:
            self._add_device(DeviceState(**d))
        for p in pts:
            dev = self.devices_by_id[p["device_id"]]
            dev.points[p["name"]] = PointState(**p)
        gaps = await self._storage.load_gaps()
        for gid, lo, hi, opened_ms, restart in gaps:
            gw = self.gateways_by_id.get(gid)
            if gw is not None:
                gw.track.gaps.append(Gap(lo, hi, opened_ms, restart))
        log.info(
            "registry loaded: %d gateways, %d devices, %d points",
            len(gws), len(devs), len(pts),
        )
        if gaps:
            log.info("registry: %d open seq gaps loaded", len(gaps))

    def _add_gateway(self, g: GatewayState) -> None:
        self.gateways[g.name] = g
        self.gateways_by_id[g.id] = g

    def _add_device(self, d: DeviceState) -> None:
        self.devices[d.name] = d
        self.devices_by_id[d.id] = d

    def gateway_of(self, device: DeviceState) -> GatewayState:
        """The gateway a device belongs to."""
        return self.gateways_by_id[device.gateway_id]

    async def gateway(self, name: str) -> GatewayState:
        """The gateway of that name, created on first sight."""
        gw = self.gateways.get(name)
        if gw is None:
            gw = GatewayState(id=await self._storage.upsert_gateway(name), name=name)
            self._add_gateway(gw)
            log.info("gateway %s: first seen", name)
        return gw

    async def set_status(self, gw: GatewayState, online: bool, session: int, now_ms: int) -> None:
        """Record a gateway's online/offline status."""
        changed = gw.online != online or gw.session != session
        self._new_session(gw, session)
        gw.online, gw.session, gw.last_seen_ms = online, session, now_ms
        await self._storage.update_gateway(
            gw.id, online=online, session=session, last_seen_ms=now_ms
        )
        if changed:
            log.info("gateway %s: %s (session %d)", gw.name, "online" if online else "offline", session)

    @staticmethod
    def _new_session(gw: GatewayState, session: int) -> None:
        # The gateway restarted: its first seq jump is the rest of a reserved block, not a loss.
        if session != gw.session and gw.last_seq is not None:
            gw.track.restart_pending = True

    async def apply_birth(self, gw: GatewayState, birth: Birth, now_ms: int) -> None:
        """Upsert the gateway's devices and points; devices owned by another gateway are refused."""
        self._new_session(gw, birth.session)
        gw.sw_version, gw.config_hash, gw.last_seen_ms = (
            birth.software_version, birth.config_hash, now_ms,
        )
        await self._storage.update_gateway(
            gw.id, sw_version=birth.software_version, config_hash=birth.config_hash,
            last_seen_ms=now_ms,
        )
        for d in birth.devices:
            dev = self.devices.get(d.id)
            if dev is not None and dev.gateway_id != gw.id:
                owner = self.gateways_by_id[dev.gateway_id].name
                self._counters.inc("conflict.device")
                log.warning(
                    "gateway %s: birth declares device %s owned by gateway %s; device refused",
                    gw.name, d.id, owner,
                )
                continue
            values: dict[str, Any] = {"kind": d.kind, "driver": d.driver, "declared": True}
            # A birth is retained and redelivered on every (re)subscription of the hub: write
            # only what changed, or a hub reconnect costs one upsert per point of the city.
            if dev is None or (dev.kind, dev.driver, dev.declared) != (d.kind, d.driver, True):
                dev_id = await self._storage.upsert_device(d.id, gw.id, **values)
                if dev is None:
                    dev = DeviceState(id=dev_id, name=d.id, gateway_id=gw.id)
                    self._add_device(dev)
                dev.kind, dev.driver, dev.declared = d.kind, d.driver, True
            dev.members = d.members
            for p in d.points:
                pv: dict[str, Any] = {
                    "type": p.type.value, "unit": p.unit, "min": p.min, "max": p.max,
                    "writable": p.writable, "declared": True,
                }
                pt = dev.points.get(p.id)
                if pt is not None and all(getattr(pt, k) == v for k, v in pv.items()):
                    continue
                pid = await self._storage.upsert_point(dev.id, p.id, **pv)
                if pt is None:
                    pt = dev.points[p.id] = PointState(id=pid, device_id=dev.id, name=p.id)
                for k, v in pv.items():
                    setattr(pt, k, v)
        log.info(
            "gateway %s: birth session %d sw %s, %d devices",
            gw.name, birth.session, birth.software_version or "?", len(birth.devices),
        )

    async def undeclared_point(
        self, gw: GatewayState, device: str, point: str, value: Value
    ) -> PointState | None:
        """Create a point (and device) the gateway never declared; None if another owns it."""
        dev = self.devices.get(device)
        if dev is None:
            dev_id = await self._storage.upsert_device(device, gw.id, declared=False)
            dev = DeviceState(id=dev_id, name=device, gateway_id=gw.id, declared=False)
            self._add_device(dev)
            self._counters.inc("undeclared.device")
            log.warning("gateway %s device %s: data for an undeclared device", gw.name, device)
        elif dev.gateway_id != gw.id:
            return None
        ptype = _type_of(value)
        pid = await self._storage.upsert_point(dev.id, point, type=ptype, declared=False)
        pt = dev.points[point] = PointState(
            id=pid, device_id=dev.id, name=point, type=ptype, declared=False
        )
        self._counters.inc("undeclared.point")
        # One line per undeclared device is enough; per point only where the device was declared.
        log_fn = log.warning if dev.declared else log.debug
        log_fn("gateway %s device %s: data for undeclared point %s", gw.name, device, point)
        return pt

    @staticmethod
    def as_float(v: Value) -> float | None:
        """A wire value as the REAL we store."""
        return _as_float(v)
