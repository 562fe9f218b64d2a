"""BacnetDriver: reads and writes the objects of the BACnet/IP devices reached from one network port."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

from bacpypes3.apdu import AbortPDU, AbortReason, ErrorPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.basetypes import BinaryPV, EngineeringUnits, ErrorType, StatusFlags
from bacpypes3.ipv4.app import NormalApplication
from bacpypes3.local.device import DeviceObject
from bacpypes3.pdu import Address, IPv4Address
from bacpypes3.primitivedata import Null, ObjectIdentifier, PropertyIdentifier

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
from wire import PointType, Quality, Value

from .config import BacnetBusConfig, BacnetDeviceConfig, BacnetPointConfig
from .cov import CovState, DeviceLink, Updates, follow

log = logging.getLogger(__name__)

# Engineering units (ASHRAE 135 §21 BACnetEngineeringUnits) -> the symbols operators read.
UNIT_SYMBOLS: dict[str, str] = {
    "degrees-celsius": "°C",
    "degrees-fahrenheit": "°F",
    "percent": "%",
    "percent-relative-humidity": "%RH",
    "watts": "W",
    "kilowatts": "kW",
    "watt-hours": "Wh",
    "kilowatt-hours": "kWh",
    "volts": "V",
    "amperes": "A",
    "pascals": "Pa",
    "parts-per-million": "ppm",
    "cubic-meters-per-hour": "m³/h",
    "no-units": "",
}
# Status flags (ASHRAE 135 §12.x.y BACnetStatusFlags): bit order in-alarm, fault, overridden,
# out-of-service. fault and out-of-service make the value untrustworthy; in-alarm is the value
# speaking (a fire zone in alarm is exactly what we want to publish) and overridden is a real
# value set by hand on site, so both keep quality good and are named in the reading's text.
_FLAG_NAMES = ("in-alarm", "fault", "overridden", "out-of-service")


def status_quality(flags: Sequence[int]) -> tuple[Quality, str]:
    """The sample quality and its explanation for a status-flags bit string."""
    names = [name for name, bit in zip(_FLAG_NAMES, flags, strict=False) if bit]
    if not names:
        return Quality.GOOD, ""
    text = "status flags: " + ", ".join(names)
    if "fault" in names:
        return Quality.DEVICE_ERROR, text
    if "out-of-service" in names:
        # Present-value is decoupled from the field (ASHRAE 135 §12.x Out_Of_Service): not current.
        return Quality.STALE, text
    return Quality.GOOD, text


def error_text(err: BaseException) -> str:
    """A BACnet error, reject or abort as text: ``property: write-access-denied``."""
    if isinstance(err, ErrorPDU):
        return f"{err.errorClass}: {err.errorCode}"
    if isinstance(err, RejectPDU):
        return f"rejected: {err.apduAbortRejectReason}"
    if isinstance(err, AbortPDU):
        return f"aborted: {err.apduAbortRejectReason}"
    return f"{type(err).__name__}: {err}"


def _is_no_response(err: BaseException) -> bool:
    return isinstance(err, AbortPDU) and err.apduAbortRejectReason == AbortReason.noResponse


def _to_python(point: BacnetPointConfig, value: Any) -> Value:
    """A decoded property value as our wire value (bool, int, float)."""
    if isinstance(value, BinaryPV):
        return bool(value == BinaryPV.active)
    if isinstance(value, Null) or value is None:
        return None
    kind = point.value_type()
    if kind is PointType.BOOL:
        return bool(value)
    if kind is PointType.INT:
        return int(value)
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"{point.object} {point.prop} is a {type(value).__name__}, not a number")


def _to_bacnet(point: BacnetPointConfig, value: Value) -> Any:
    if point.value_type() is PointType.BOOL:
        return BinaryPV.active if value else BinaryPV.inactive
    if point.value_type() is PointType.INT:
        return int(value)  # type: ignore[arg-type]
    return float(value)  # type: ignore[arg-type]


def _probe_port(host: str, port: int) -> None:
    """Fail if the UDP port is taken: bacpypes3 binds with SO_REUSEPORT and would share it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, port))


class BacnetDriver:
    """One BACnet/IP network port of the gateway: one bacpypes3 application, one lock."""

    def __init__(self, bus: BacnetBusConfig, devices: Sequence[BacnetDeviceConfig] = ()) -> None:
        self.bus = bus
        self.devices = tuple(devices)
        self._app: NormalApplication | None = None
        self._lock = asyncio.Lock()
        self._no_rpm: set[str] = set()  # devices that rejected ReadPropertyMultiple
        # bacpypes3 retries internally; this outer deadline only guards against a lost future.
        self._deadline_s = bus.apdu_timeout_s * (bus.apdu_retries + 1) + 1.0
        self._links = {d.id: DeviceLink() for d in self.devices}
        self._updates = Updates()
        self._cov_tasks: list[asyncio.Task[None]] = []
        self._cov_started = False
        self._names: dict[tuple[str, str], str] = {}  # (device, object) -> object-name
        self._found: dict[str, str] = {}  # device id -> ip:port found by Who-Is
        self.cov_states: dict[tuple[str, str], tuple[CovState, str]] = {}
        self._cov_counts: dict[tuple[str, str], list[int]] = {}  # [renewals, notifications]

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        ip = self.bus.bacpypes_address().partition("/")[0].partition(":")[0]
        for dev in self.devices:
            # On loopback a device on the gateway's own port would answer the gateway itself.
            if dev.bacpypes_address() == f"{ip}:{self.bus.port}":
                raise DeviceUnavailable(
                    f"device {dev.id} at {dev.address} shares the gateway's own address and port"
                )
        try:
            _probe_port(ip, self.bus.port)
        except OSError as err:
            raise DeviceUnavailable(
                f"bacnet bus {self.bus.id}: cannot bind {ip}:{self.bus.port}: {err}"
            ) from err
        local = DeviceObject(
            objectIdentifier=("device", self.bus.local_instance),
            objectName=f"citynerve-{self.bus.id}",
            vendorIdentifier=999,
            apduTimeout=round(self.bus.apdu_timeout_s * 1000),
            numberOfApduRetries=self.bus.apdu_retries,
        )
        app = NormalApplication(local, IPv4Address(self.bus.bacpypes_address()))
        tasks = app.normal.server._transport_tasks
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(*tasks)
        except BaseException as err:
            for task in tasks:
                task.cancel()
            app.close()
            raise DeviceUnavailable(f"bacnet bus {self.bus.id}: cannot open {self.bus.describe()}") from err
        self._app = app
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._cov_tasks = self._cov_tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._updates.put(None)
        app, self._app = self._app, None
        if app is not None:
            app.close()
            await asyncio.sleep(0)  # the transport closes its socket on the next loop turn

    # -- requests --------------------------------------------------------------------------

    def _where(self, dev: BacnetDeviceConfig) -> str:
        addr = dev.bacpypes_address() or self._found.get(dev.id) or "not found yet"
        return f"{dev.id} (device,{dev.device_instance} at {addr})"

    def _addr(self, dev: BacnetDeviceConfig) -> Address:
        """The device's address: configured, or found by Who-Is (``resolve`` first)."""
        addr = dev.bacpypes_address() or self._found.get(dev.id)
        if addr is None:
            raise DeviceUnavailable(f"{self._where(dev)}: not located yet")
        return Address(addr)

    async def resolve(self, dev: BacnetDeviceConfig) -> Address:
        """The device's address; a device configured without one is found by Who-Is for its instance.

        The Who-Is goes to the bus's ``who_is_to`` (a broadcast by default); no I-Am within
        ``who_is_timeout_s`` is DeviceUnavailable (the poller retries with backoff).
        """
        if dev.bacpypes_address() is not None or dev.id in self._found:
            return self._addr(dev)
        target = self.bus.who_is_address()
        found = await self.who_is(target, dev.device_instance, dev.device_instance)
        if not found:
            raise DeviceUnavailable(
                f"{dev.id}: no I-Am from device,{dev.device_instance} to a Who-Is at {target} "
                f"within {self.bus.who_is_timeout_s:g} s"
            )
        self._found[dev.id] = found[0][1]
        log.info(
            "bacnet device %s found by Who-Is: device,%d at %s", dev.id, dev.device_instance, found[0][1]
        )
        return self._addr(dev)

    def _lost(self, dev: BacnetDeviceConfig) -> None:
        """A found device stopped answering: look it up again next time (its address may change)."""
        self._found.pop(dev.id, None)

    async def who_is(
        self,
        target: str | None,
        low: int | None = None,
        high: int | None = None,
        timeout_s: float | None = None,
    ) -> list[tuple[int, str]]:
        """(instance, ip:port) of every device answering a Who-Is sent to ``target`` (ip:port), by instance.

        ``target`` is a device (directed Who-Is: always answered on loopback) or a broadcast
        address; None is a global broadcast.
        """
        app = self._app_or_fail()
        wait = self.bus.who_is_timeout_s if timeout_s is None else timeout_s
        fut = app.who_is(low, high, Address(target) if target else None, timeout=wait)
        # bacpypes3 matches the I-Am's source against a station target: for a broadcast target
        # (127.255.255.255:P) that filter would drop every answer. The instance range filters.
        app._who_is_futures[-1].address = None
        try:
            async with asyncio.timeout(wait + 1.0):
                i_ams = await fut
        except TimeoutError:
            return []
        out = {int(i.iAmDeviceIdentifier[1]): str(i.pduSource) for i in i_ams}
        return sorted(out.items())

    async def _call(self, dev: BacnetDeviceConfig, what: str, coro: Any) -> Any:
        """Await one bacpypes3 request; every failure becomes a DriverError.

        bacpypes3's ErrorRejectAbortNack derives from BaseException: ``except Exception`` misses it.
        A BACnet Error answer becomes PointError; a Reject or other Abort ProtocolError; no answer
        within the APDU timeout and retries DeviceUnavailable.
        """
        try:
            async with asyncio.timeout(self._deadline_s):
                return await coro
        except ErrorRejectAbortNack as err:
            raise self.translate(dev, what, err) from None
        except TimeoutError as err:
            raise DeviceUnavailable(f"{self._where(dev)}: no answer to {what}") from err
        except (ValueError, TypeError, AttributeError) as err:  # bacpypes3 encode/decode failures
            raise ProtocolError(f"{self._where(dev)}: {what}: {type(err).__name__}: {err}") from err

    def translate(self, dev: BacnetDeviceConfig, what: str, err: BaseException) -> DriverError:
        """A bacpypes3 error, reject or abort as our DriverError (see ``_call``)."""
        if _is_no_response(err):
            return DeviceUnavailable(f"{self._where(dev)}: no answer to {what}")
        if isinstance(err, ErrorPDU):
            return PointError(f"{self._where(dev)}: {what}: {error_text(err)}")
        return ProtocolError(f"{self._where(dev)}: {what}: {error_text(err)}")

    @property
    def lock(self) -> asyncio.Lock:
        """The bus lock: one request at a time on this network port."""
        return self._lock

    @property
    def app(self) -> NormalApplication:
        """The open bacpypes3 application (DeviceUnavailable when closed)."""
        return self._app_or_fail()

    def call(self, dev: BacnetDeviceConfig, what: str, coro: Any) -> Any:
        """``_call`` for the COV module: await one request, failures as DriverErrors."""
        return self._call(dev, what, coro)

    def _app_or_fail(self) -> NormalApplication:
        if self._app is None:
            raise DeviceUnavailable(f"bacnet bus {self.bus.id} is not open")
        return self._app

    # -- read ------------------------------------------------------------------------------

    async def read(self, device: DeviceConfigBase, points: Sequence[PointConfigBase]) -> list[PointReading]:
        """Read points of one device: one ReadPropertyMultiple, or ReadProperty per point."""
        dev = _device(device)
        pts = _points(points)
        link = self._links.setdefault(dev.id, DeviceLink())
        try:
            await self.resolve(dev)
            readings = await self._read(dev, pts)
        except DeviceUnavailable:
            link.failed()
            self._lost(dev)
            raise
        link.answered()  # wakes COV subscriptions waiting for the device
        return readings

    async def _read(self, dev: BacnetDeviceConfig, pts: Sequence[BacnetPointConfig]) -> list[PointReading]:
        async with self._lock:
            if dev.read_multiple and dev.id not in self._no_rpm:
                try:
                    return await self._read_rpm(dev, pts)
                except ProtocolError as err:
                    # ASHRAE 135 §15.7: RPM is optional; a device without it rejects the service.
                    if "unrecognized-service" not in str(err):
                        raise
                    self._no_rpm.add(dev.id)
                    log.info("bacnet device %s has no ReadPropertyMultiple: using ReadProperty", dev.id)
            return [await self._read_rp(dev, p) for p in pts]

    async def _read_rpm(
        self, dev: BacnetDeviceConfig, pts: Sequence[BacnetPointConfig]
    ) -> list[PointReading]:
        app = self._app_or_fail()
        spec: list[Any] = []
        for p in pts:
            props = [p.prop, "status-flags"] if p.prop == "present-value" else [p.prop]
            if p.alarm is not None and (dev.id, p.object) not in self._names:
                props.append("object-name")  # once, for the alarm event's detail
            spec.extend((p.object, props))
        result = await self._call(
            dev,
            f"read-property-multiple of {len(pts)} points",
            app.read_property_multiple(self._addr(dev), spec),
        )
        if not isinstance(result, list):
            raise ProtocolError(f"{self._where(dev)}: unexpected answer to read-property-multiple")
        values: dict[tuple[str, str], Any] = {}
        for oid, prop, _index, value in result:
            values[(_oid_text(oid), str(PropertyIdentifier(prop)))] = value
        for (obj, prop), value in values.items():
            if prop == "object-name" and isinstance(value, str):
                self._names[(dev.id, obj)] = str(value)
        out = []
        for p in pts:
            key = (p.object, p.prop)
            if key not in values:
                out.append(PointReading(p.id, None, Quality.DEVICE_ERROR, f"{p.object} {p.prop}: missing"))
                continue
            flags = values.get((p.object, "status-flags"))
            out.append(self.reading(p, values[key], flags))
        return out

    async def _read_rp(self, dev: BacnetDeviceConfig, p: BacnetPointConfig) -> PointReading:
        app = self._app_or_fail()
        addr = self._addr(dev)
        try:
            value = await self._call(
                dev, f"read {p.object} {p.prop}", app.read_property(addr, p.object, p.prop)
            )
            flags = None
            if p.prop == "present-value":
                flags = await self._call(
                    dev, f"read {p.object} status-flags", app.read_property(addr, p.object, "status-flags")
                )
        except PointError as err:
            return PointReading(p.id, None, Quality.DEVICE_ERROR, str(err))
        return self.reading(p, value, flags)

    def reading(self, p: BacnetPointConfig, value: Any, flags: Any) -> PointReading:
        """A decoded present-value and status-flags as a reading with its quality."""
        if isinstance(value, ErrorType):
            return PointReading(
                p.id,
                None,
                Quality.DEVICE_ERROR,
                f"{p.object} {p.prop}: {value.errorClass}: {value.errorCode}",
            )
        try:
            v = _to_python(p, value)
        except (TypeError, ValueError) as err:
            return PointReading(p.id, None, Quality.DEVICE_ERROR, str(err))
        quality, text = status_quality(list(flags)) if isinstance(flags, StatusFlags) else (Quality.GOOD, "")
        if quality is Quality.GOOD and isinstance(v, int | float) and not isinstance(v, bool):
            if (p.min is not None and v < p.min) or (p.max is not None and v > p.max) or v != v:
                return PointReading(p.id, v, Quality.OUT_OF_RANGE, f"{v} outside [{p.min}, {p.max}]")
        return PointReading(p.id, v, quality, text)

    def describe(self, device: str, point: PointConfigBase) -> str:
        """The point's object and, once read, its object-name: ``binary-input,3 fire-zone-3``."""
        if not isinstance(point, BacnetPointConfig):
            return ""
        name = self._names.get((device, point.object))
        return f"{point.object} {name}" if name else point.object

    async def units(self, device: DeviceConfigBase, point: PointConfigBase) -> str:
        """The object's engineering units as a symbol (``°C``, ``kWh``); "" for binary objects."""
        dev = _device(device)
        (p,) = _points((point,))
        if not p.object_type.startswith("analog-"):
            return ""
        addr = await self.resolve(dev)
        async with self._lock:
            units = await self._call(
                dev,
                f"read {p.object} units",
                self._app_or_fail().read_property(addr, p.object, "units"),
            )
        return unit_symbol(units)

    # -- COV -------------------------------------------------------------------------------

    async def updates(self) -> AsyncIterator[PushedUpdate]:
        """COV notifications of the ``cov: true`` points as they arrive; ends when the driver closes.

        The first call subscribes (one task per point, renewed before the lifetime ends).
        """
        if self._app is None:
            return
        self._start_cov()
        while True:
            update = await self._updates.queue.get()
            if update is None:
                return
            yield update

    def _start_cov(self) -> None:
        if self._cov_started:
            return
        self._cov_started = True
        for dev in self.devices:
            link = self._links.setdefault(dev.id, DeviceLink())
            for p in dev.points:
                if p.cov:
                    self._cov_tasks.append(
                        asyncio.create_task(
                            follow(self, dev, p, link, self._updates.put, self._cov_setter(dev, p)),
                            name=f"bacnet-cov-{self.bus.id}-{dev.id}-{p.id}",
                        )
                    )

    def cov_counts(self, device: str, point: str) -> list[int]:
        """The mutable [renewals, notifications] counters of one COV point."""
        return self._cov_counts.setdefault((device, point), [0, 0])

    def cov_status(self) -> list[dict[str, Any]]:
        """Per ``cov: true`` point: state (subscribed, polled ...), why, renewals and notifications."""
        out = []
        for dev in self.devices:
            for p in dev.points:
                if not p.cov:
                    continue
                state, why = self.cov_states.get((dev.id, p.id), ("not started", ""))
                renewals, notes = self.cov_counts(dev.id, p.id)
                out.append(
                    {
                        "device": dev.id,
                        "point": p.id,
                        "state": str(state),
                        "reason": why,
                        "lifetime_s": dev.cov_lifetime_s,
                        "renewals": renewals,
                        "notifications": notes,
                    }
                )
        return out

    def _cov_setter(self, dev: BacnetDeviceConfig, p: BacnetPointConfig) -> Any:
        def set_state(state: CovState, why: str) -> None:
            self.cov_states[(dev.id, p.id)] = (state, why)

        return set_state

    # -- write -----------------------------------------------------------------------------

    async def write(self, device: DeviceConfigBase, point: PointConfigBase, value: Value) -> Value:
        """Write at the point's priority (commandable objects), then read the value back."""
        dev = _device(device)
        (p,) = _points((point,))
        where = f"{dev.id}.{p.id}"
        if not p.writable:
            raise PointError(f"{where} is read-only")
        if value is None:
            raise PointError(f"{where}: use relinquish() to hand control back, not a write of null")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (
                (p.min is not None and value < p.min)
                or (p.max is not None and value > p.max)
                or (isinstance(value, float) and math.isnan(value))
            ):
                raise PointError(f"{where}: {value!r} is outside [{p.min}, {p.max}]")
        return await self._write(dev, p, _to_bacnet(p, value), f"write {value!r}")

    async def relinquish(self, device: DeviceConfigBase, point: PointConfigBase) -> Value:
        """Write NULL at the point's priority (hand control back); return the new present value."""
        dev = _device(device)
        (p,) = _points((point,))
        if not p.writable or not p.commandable:
            raise PointError(f"{dev.id}.{p.id}: relinquish needs a writable commandable present-value")
        return await self._write(dev, p, Null(()), "relinquish")

    async def _write(self, dev: BacnetDeviceConfig, p: BacnetPointConfig, value: Any, what: str) -> Value:
        app = self._app_or_fail()
        addr = await self.resolve(dev)
        # Without a priority a write lands in slot 16 (ASHRAE 135 §19.2.1.1); inputs take none.
        priority = p.priority if p.commandable else None
        label = f"{what} to {p.object} {p.prop}" + (f" at priority {priority}" if priority else "")
        async with self._lock:
            result = await self._call(
                dev, label, app.write_property(addr, p.object, p.prop, value, priority=priority)
            )
            if isinstance(result, str):  # bacpypes3 answers "-no object class-" and the like
                raise PointError(f"{self._where(dev)}: {label}: {result.strip('-')}")
            reading = await self._read_rp(dev, p)
        if reading.quality is Quality.DEVICE_ERROR:
            raise PointError(f"{dev.id}.{p.id}: written, but the read-back failed: {reading.error}")
        return reading.value


def unit_symbol(units: Any) -> str:
    """A BACnet engineering-units value as the symbol operators read (``°C``); unknown: its name."""
    name = str(EngineeringUnits(units)) if not isinstance(units, str) else units
    return UNIT_SYMBOLS.get(name, name)


def _oid_text(oid: Any) -> str:
    obj = ObjectIdentifier(oid)
    return f"{obj[0]},{obj[1]}"


def _device(device: DeviceConfigBase) -> BacnetDeviceConfig:
    return as_device(device, BacnetDeviceConfig, "bacnet")


def _points(points: Sequence[PointConfigBase]) -> Sequence[BacnetPointConfig]:
    return as_points(points, BacnetPointConfig, "bacnet")


__all__ = ["UNIT_SYMBOLS", "BacnetDriver", "DriverError", "error_text", "status_quality", "unit_symbol"]
