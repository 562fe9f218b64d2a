"""``citynerve-edge scan bacnet``: find devices by Who-Is and list their objects, and a starter config.

Runs on a driver of its own (its own UDP port), never through the daemon's: BACnet/IP is a
network where several clients may talk to one device, so the scan and a running daemon do not
fight over anything as long as their ports differ (docs/bacnet.md, "Scan").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml
from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.basetypes import BinaryPV
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier, PropertyIdentifier

from drivers.base import DriverError

from .config import OBJECT_TYPES
from .driver import BacnetDriver, _is_no_response, error_text, unit_symbol

Progress = Callable[[str], None]


def _native(value: Any) -> Any:
    """A decoded property value as JSON: bool for binary, float/int, text otherwise."""
    if isinstance(value, BinaryPV):
        return bool(value == BinaryPV.active)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


async def _rp(driver: BacnetDriver, addr: Address, obj: Any, prop: str, index: int | None = None) -> Any:
    """One ReadProperty, failures (BaseException-derived in bacpypes3) as DriverError."""
    try:
        return await driver.app.read_property(addr, obj, prop, index)
    except ErrorRejectAbortNack as err:
        raise DriverError(f"read {obj} {prop}: {error_text(err)}") from None


async def object_list(driver: BacnetDriver, addr: Address, instance: int) -> list[str]:
    """The device's object-list as ``type,instance`` texts (element by element if it is too long)."""
    dev = f"device,{instance}"
    try:
        oids = list(await _rp(driver, addr, dev, "object-list"))
    except DriverError:
        # A device without segmentation cannot send a long list in one APDU: read it by index.
        n = int(await _rp(driver, addr, dev, "object-list", 0))
        oids = [await _rp(driver, addr, dev, "object-list", i) for i in range(1, n + 1)]
    out = []
    for oid in oids:
        o = ObjectIdentifier(oid)
        out.append(f"{o[0]},{o[1]}")
    return out


async def describe_object(driver: BacnetDriver, addr: Address, obj: str) -> dict[str, Any]:
    """Name, type, present value and units (analog objects) of one object; ``error`` if unreadable."""
    kind = obj.partition(",")[0]
    props = ["object-name", "present-value"] + (["units"] if kind.startswith("analog-") else [])
    found: dict[str, Any] = {}
    try:
        result = await driver.app.read_property_multiple(addr, [obj, props])
        for _oid, prop, _index, value in result:
            found[str(PropertyIdentifier(prop))] = value
    except ErrorRejectAbortNack as err:
        if _is_no_response(err):  # the device went away: give up on it, not on each property
            raise DriverError(f"no answer to read-property-multiple of {obj}") from None
        for prop in props:  # ReadPropertyMultiple not supported (or refused): one at a time
            try:
                found[prop] = await _rp(driver, addr, obj, prop)
            except DriverError as err:
                found[prop] = err
    out: dict[str, Any] = {"object": obj, "type": kind, "name": "", "present_value": None, "units": ""}
    errors = []
    for prop, key in (("object-name", "name"), ("present-value", "present_value"), ("units", "units")):
        if prop not in found:
            continue
        value = found[prop]
        if isinstance(value, BaseException) or type(value).__name__ == "ErrorType":
            errors.append(f"{prop}: {value}")
            continue
        out[key] = unit_symbol(value) if prop == "units" else _native(value)
    if errors:
        out["error"] = "; ".join(errors)
    return out


async def scan(
    driver: BacnetDriver,
    targets: list[str | None],
    low: int | None = None,
    high: int | None = None,
    progress: Progress = lambda _msg: None,
) -> list[dict[str, Any]]:
    """Who-Is to each target (ip:port, broadcast or directed; None: global broadcast), then every
    device's objects. A device that fails part-way is listed with its ``error``."""
    found: dict[int, str] = {}
    for target in targets:
        progress(f"Who-Is to {target or 'global broadcast'} ...")
        for instance, address in await driver.who_is(target, low, high):
            found.setdefault(instance, address)
    progress(f"{len(found)} device(s) answered")
    devices = []
    for n, (instance, address) in enumerate(sorted(found.items()), 1):
        addr = Address(address)
        entry: dict[str, Any] = {"instance": instance, "address": address, "name": "", "objects": []}
        try:
            entry["name"] = str(await _rp(driver, addr, f"device,{instance}", "object-name"))
            oids = [
                o for o in await object_list(driver, addr, instance) if o.partition(",")[0] in OBJECT_TYPES
            ]
            for i, obj in enumerate(oids, 1):
                progress(
                    f"device {n}/{len(found)} device,{instance} at {address}: object {i}/{len(oids)} {obj}"
                )
                entry["objects"].append(await describe_object(driver, addr, obj))
        except DriverError as err:
            entry["error"] = str(err)
        devices.append(entry)
    return devices


_SLUG = re.compile(r"[^a-z0-9_.-]+")


def slug(text: str, fallback: str) -> str:
    """A config id from a BACnet name: ``Zone 1 Temp`` -> ``zone-1-temp``."""
    s = _SLUG.sub("-", text.lower()).strip("-._")[:64]
    return s or fallback


def starter_config(devices: list[dict[str, Any]], gateway: str, bus: dict[str, Any], when: str) -> str:
    """A commented edge config with the bus and one device per device found, one point per object."""
    lines = [
        f"# Starter config written by `citynerve-edge scan bacnet` on {when}: {len(devices)} device(s).",
        "# Every object is a read-only point polled every 60 s; mark setpoints and outputs",
        "# writable (priority 12 by default), fire/intrusion inputs with alarm:, and fast-changing",
        "# ones with cov: true (docs/bacnet.md). Then: citynerve-edge check-config FILE",
    ]
    body: dict[str, Any] = {"gateway": {"id": gateway}, "buses": [bus], "devices": []}
    dev_ids: set[str] = set()
    for d in devices:
        if "error" in d:
            lines.append(f"# device,{d['instance']} at {d['address']}: {d['error']}")
        points: list[dict[str, Any]] = []
        seen: set[str] = set()
        for o in d["objects"]:
            pid = slug(o["name"], o["object"].replace(",", "-"))
            if pid in seen:
                pid = slug(f"{pid}-{o['object']}", pid)
            seen.add(pid)
            point: dict[str, Any] = {"id": pid, "object": o["object"], "interval_s": 60}
            if o.get("units"):
                point["unit"] = o["units"]
            points.append(point)
        did = slug(d["name"], f"device-{d['instance']}")
        if did in dev_ids:
            did = f"{did}-{d['instance']}"
        dev_ids.add(did)
        body["devices"].append(
            {
                "id": did,
                "bus": bus["id"],
                "kind": "building",
                "address": d["address"],
                "device_instance": d["instance"],
                "points": points,
            }
        )
    text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(lines) + "\n" + text


__all__ = ["describe_object", "object_list", "scan", "slug", "starter_config"]
