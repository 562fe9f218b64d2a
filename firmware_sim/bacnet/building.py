"""BuildingSim: one BACnet/IP device built from bacpypes3 local objects, with triggers for tests.

Object layout (instance numbers are stable so configs and tests can name them):

| object | what |
|---|---|
| ``binary-input,N`` (1..fire_zones) | fire panel zone N, active = fire |
| ``binary-input,100+N`` | intrusion zone N, active = intrusion |
| ``binary-input,200+N`` | door N contact, active = open |
| ``binary-output,N`` | door N lock, commandable, active = locked (relinquish default: locked) |
| ``analog-input,N`` | HVAC zone N temperature, degrees Celsius |
| ``analog-value,N`` | HVAC zone N setpoint, commandable with a priority array, default 21.0 |
| ``multi-state-output,N`` | HVAC zone N mode, commandable: 1 off, 2 heat, 3 cool, 4 auto (default) |
| ``analog-input,100`` | the building's energy meter, kWh |

A zone in fire or intrusion and a forced door also go to event state ``offnormal``, so the
object's status flags say in-alarm, as a panel with intrinsic reporting does (ASHRAE 135 §12.4).
Never imports our other packages: a simulator and a driver that agree prove the protocol.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from bacpypes3.basetypes import (
    BinaryPV,
    EngineeringUnits,
    EventState,
    Polarity,
    PriorityValue,
    Reliability,
)
from bacpypes3.ipv4.app import NormalApplication
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryInputObject, BinaryOutputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateOutputObject
from bacpypes3.local.oos import OutOfService
from bacpypes3.pdu import IPv4Address
from bacpypes3.primitivedata import ObjectIdentifier

VENDOR_ID = 999  # ASHRAE reserves no test id; 999 is unassigned and harmless on a lab network
INTRUSION_BASE = 100
DOOR_CONTACT_BASE = 200
METER_INSTANCE = 100
SETPOINT_DEFAULT = 21.0
HVAC_MODES = ("off", "heat", "cool", "auto")  # multi-state present values 1..4 (§12.19: 1-based)
MODE_DEFAULT = 4


@dataclass(frozen=True)
class Layout:
    """How many of each thing the building has."""

    fire_zones: int = 4
    intrusion_zones: int = 2
    doors: int = 2
    hvac_zones: int = 3


def object_map(layout: Layout) -> dict[str, str]:
    """Object id (``type,instance``) -> object name, for every object but the device."""
    out: dict[str, str] = {}
    for n in range(1, layout.fire_zones + 1):
        out[f"binary-input,{n}"] = f"fire-zone-{n}"
    for n in range(1, layout.intrusion_zones + 1):
        out[f"binary-input,{INTRUSION_BASE + n}"] = f"intrusion-zone-{n}"
    for n in range(1, layout.doors + 1):
        out[f"binary-input,{DOOR_CONTACT_BASE + n}"] = f"door-{n}-open"
        out[f"binary-output,{n}"] = f"door-{n}-lock"
    for n in range(1, layout.hvac_zones + 1):
        out[f"analog-input,{n}"] = f"zone-{n}-temperature"
        out[f"analog-value,{n}"] = f"zone-{n}-setpoint"
        out[f"multi-state-output,{n}"] = f"zone-{n}-mode"
    out[f"analog-input,{METER_INSTANCE}"] = "energy-meter"
    return out


class _AnalogInput(OutOfService, AnalogInputObject):  # type: ignore[misc]
    """An analog input whose present-value is read-only unless out of service (ASHRAE 135 §12.2.4)."""


class _BinaryInput(OutOfService, BinaryInputObject):  # type: ignore[misc]
    """A binary input whose present-value is read-only unless out of service (ASHRAE 135 §12.6.4)."""


def _oid(obj: str | tuple[str, int]) -> ObjectIdentifier:
    return ObjectIdentifier(obj if isinstance(obj, str) else f"{obj[0]},{obj[1]}")


def _native(value: Any) -> Any:
    """A bacpypes3 value as plain Python: BinaryPV -> bool, Real -> float, Null -> None."""
    if isinstance(value, BinaryPV):
        return value == BinaryPV.active
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return value


def _flags_changed(obj: Any, before: Any) -> None:
    """Tell the object's COV detection that its status flags changed.

    bacpypes3 computes status-flags from event state, reliability and out-of-service, so no
    property monitor fires when they change and COV notifications would carry stale flags
    (ASHRAE 135 §13.1.2 wants a notification when the flags change).
    """
    after = obj.statusFlags
    if after != before:
        for monitor in list(obj._property_monitors["statusFlags"]):
            monitor(before, after)


async def _ready(app: NormalApplication, timeout_s: float = 5.0) -> None:
    """Wait until the application's socket is bound (bacpypes3 binds in a task, retrying)."""
    tasks = app.normal.server._transport_tasks
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        app.close()
        raise


class _SimApplication(NormalApplication):  # type: ignore[misc]
    """The simulator's application, which can go offline: it then ignores every request and
    sends no COV notifications, like a device whose network cable was pulled."""

    offline = False

    async def indication(self, apdu: Any) -> None:
        """Serve a request, unless offline."""
        if not self.offline:
            await super().indication(apdu)

    def cov_notification(self, cov: Any, apdu: Any) -> None:
        """Send a COV notification, unless offline (a change made meanwhile is not notified)."""
        if not self.offline:
            super().cov_notification(cov, apdu)


class _NoCovApplication(_SimApplication):
    """A device without SubscribeCOV: bacpypes3 answers a service without a handler with a
    Reject (unrecognized-service), as a device that does not implement it must (ASHRAE 135 §18.9)."""

    do_SubscribeCOVRequest = None


class BuildingSim:
    """A building's BACnet/IP device on ``host:port``; an async context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 47809,
        instance: int = 1001,
        name: str = "building",
        layout: Layout | None = None,
        cov: bool = True,
        mask: int | None = None,
    ) -> None:
        if port == 0:
            raise ValueError("give the simulator a fixed port: clients need to know it")
        self.host = host
        self.port = port
        self.instance = instance
        self.name = name
        self.layout = layout or Layout()
        self.cov = cov
        # With a mask (e.g. 8 on 127.0.0.x) the device also listens on the subnet's broadcast
        # address at its port, so a broadcast Who-Is to 127.255.255.255:port reaches every
        # device sharing that port (each on its own 127.0.0.x).
        self.mask = mask
        self.app: _SimApplication | None = None
        self._objects: dict[ObjectIdentifier, Any] = {}

    def describe(self) -> str:
        """Where the device answers, for logs: ``127.0.0.1:47809 device,1001``."""
        return f"{self.host}:{self.port} device,{self.instance}"

    # -- lifecycle -------------------------------------------------------------------------

    def _build_objects(self) -> list[Any]:
        objects: list[Any] = []
        names = object_map(self.layout)
        for oid, name in names.items():
            kind, _, num = oid.partition(",")
            n = int(num)
            common: dict[str, Any] = {"objectIdentifier": oid, "objectName": name}
            if kind == "binary-input":
                obj: Any = _BinaryInput(
                    **common,
                    presentValue="inactive",
                    polarity=Polarity.normal,
                    eventState=EventState.normal,
                    outOfService=False,
                    reliability=Reliability.noFaultDetected,
                )
            elif kind == "binary-output":
                obj = BinaryOutputObject(
                    **common,
                    presentValue="active",
                    relinquishDefault="active",
                    polarity=Polarity.normal,
                    eventState=EventState.normal,
                    outOfService=False,
                    reliability=Reliability.noFaultDetected,
                )
            elif kind == "multi-state-output":
                obj = MultiStateOutputObject(
                    **common,
                    presentValue=MODE_DEFAULT,
                    relinquishDefault=MODE_DEFAULT,
                    numberOfStates=len(HVAC_MODES),
                    stateText=list(HVAC_MODES),
                    eventState=EventState.normal,
                    outOfService=False,
                )
            elif kind == "analog-value":
                obj = AnalogValueObjectCmd(
                    **common,
                    presentValue=SETPOINT_DEFAULT,
                    relinquishDefault=SETPOINT_DEFAULT,
                    units=EngineeringUnits.degreesCelsius,
                    covIncrement=0.1,
                    eventState=EventState.normal,
                    outOfService=False,
                )
            else:  # analog-input
                meter = n == METER_INSTANCE
                obj = _AnalogInput(
                    **common,
                    presentValue=12345.5 if meter else 20.0 + n / 2,
                    units=EngineeringUnits.kilowattHours if meter else EngineeringUnits.degreesCelsius,
                    covIncrement=1.0 if meter else 0.1,
                    eventState=EventState.normal,
                    outOfService=False,
                    reliability=Reliability.noFaultDetected,
                )
            objects.append(obj)
        return objects

    async def __aenter__(self) -> Self:
        device = DeviceObject(
            objectIdentifier=("device", self.instance),
            objectName=self.name,
            vendorIdentifier=VENDOR_ID,
            # ASHRAE 135 §12.11.27: 3 s and 3 retries are the usual device defaults
            apduTimeout=3000,
            numberOfApduRetries=3,
        )
        # bacpypes3 binds with SO_REUSEPORT, so a leftover device on the same port would silently
        # share the traffic: probe the port without it first, and fail loudly if it is taken.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((self.host, self.port))
        # A host address without a mask (/32): no broadcast listener on a shared port.
        app_class = _SimApplication if self.cov else _NoCovApplication
        where = self.host if self.mask is None else f"{self.host}/{self.mask}"
        self.app = app_class(device, IPv4Address(f"{where}:{self.port}"))
        await _ready(self.app)
        for obj in self._build_objects():
            self.app.add_object(obj)
            self._objects[obj.objectIdentifier] = obj
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        app, self.app = self.app, None
        if app is not None:
            app.close()
            await asyncio.sleep(0)  # let the transport finish closing its socket

    # -- state and triggers ----------------------------------------------------------------

    def obj(self, oid: str | tuple[str, int]) -> Any:
        """The local object ``oid`` (``"analog-value,1"`` or ``("analog-value", 1)``)."""
        try:
            return self._objects[_oid(oid)]
        except KeyError:
            raise KeyError(f"no object {oid!r} in {self.describe()}") from None

    def present_value(self, oid: str | tuple[str, int]) -> Any:
        """The object's present value as plain Python (bool for binary, float for analog)."""
        return _native(self.obj(oid).presentValue)

    def priority_array(self, oid: str | tuple[str, int]) -> list[Any]:
        """The 16 slots of a commandable object's priority array (None: relinquished)."""
        binary = str(_oid(oid)[0]).startswith("binary")
        out: list[Any] = []
        for pv in self.obj(oid).priorityArray:
            assert isinstance(pv, PriorityValue)
            if pv.null is not None:
                out.append(None)
                continue
            value = _native(getattr(pv, pv._choice))
            # a binary object's slot holds the BinaryPV as a plain enumerated (1 = active)
            out.append(bool(value) if binary else value)
        return out

    def _set_binary(self, oid: str, active: bool, alarm: bool = True) -> None:
        obj = self.obj(oid)
        if alarm:
            before = obj.statusFlags
            obj.eventState = EventState.offnormal if active else EventState.normal
            _flags_changed(obj, before)
        obj.presentValue = BinaryPV.active if active else BinaryPV.inactive

    def _zone(self, zone: int, count: int, what: str) -> None:
        if not 1 <= zone <= count:
            raise ValueError(f"no {what} zone {zone} (the building has 1..{count})")

    def fire(self, zone: int) -> None:
        """Fire detected in zone ``zone``: its binary input goes active and in-alarm."""
        self._zone(zone, self.layout.fire_zones, "fire")
        self._set_binary(f"binary-input,{zone}", True)

    def intrusion(self, zone: int) -> None:
        """Intrusion detected in zone ``zone``."""
        self._zone(zone, self.layout.intrusion_zones, "intrusion")
        self._set_binary(f"binary-input,{INTRUSION_BASE + zone}", True)

    def door_forced(self, door: int) -> None:
        """Door ``door`` opens while its lock is commanded locked (forced entry): contact in alarm."""
        self._zone(door, self.layout.doors, "door")
        self._set_binary(f"binary-input,{DOOR_CONTACT_BASE + door}", True)

    def set_temperature(self, zone: int, celsius: float) -> None:
        """Set an HVAC zone's measured temperature."""
        self._zone(zone, self.layout.hvac_zones, "hvac")
        self.obj(f"analog-input,{zone}").presentValue = float(celsius)

    def set_fault(self, oid: str, fault: bool = True) -> None:
        """Mark an object faulty (reliability not no-fault-detected -> status flag fault)."""
        obj = self.obj(oid)
        before = obj.statusFlags
        obj.reliability = Reliability.unreliableOther if fault else Reliability.noFaultDetected
        _flags_changed(obj, before)

    def set_offline(self, offline: bool = True) -> None:
        """Device offline: no answers and no notifications until ``set_offline(False)``.

        Unlike stopping the simulator, the device keeps its state and its COV subscribers.
        """
        if self.app is None:
            raise RuntimeError(f"{self.describe()} is not running")
        self.app.offline = offline

    def set_out_of_service(self, oid: str, oos: bool = True) -> None:
        """Take an object out of service (status flag out-of-service)."""
        obj = self.obj(oid)
        before = obj.statusFlags
        obj.outOfService = oos
        _flags_changed(obj, before)

    def reset(self) -> None:
        """Panel reset: every fire and intrusion zone and door contact back to normal."""
        lay = self.layout
        oids = [f"binary-input,{n}" for n in range(1, lay.fire_zones + 1)]
        oids += [f"binary-input,{INTRUSION_BASE + n}" for n in range(1, lay.intrusion_zones + 1)]
        oids += [f"binary-input,{DOOR_CONTACT_BASE + n}" for n in range(1, lay.doors + 1)]
        for oid in oids:
            self._set_binary(oid, False)
