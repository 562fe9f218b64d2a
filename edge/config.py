"""The edge's YAML config: validated into frozen models before any connection is opened.

Buses and devices are validated by the models their driver declares; device templates expand
before validation so a 50-lamp cabinet does not need 200 point entries. Every problem is reported
as ``file:line: path: message``, all of them, not just the first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

import wire
from cnconfig import ConfigError, ConfigIssue, Loc, format_loc, issues_from_validation, line_of, load_file
from drivers import BusConfigBase, DeviceConfigBase, StrictModel, get_driver, known_drivers


class GatewaySection(StrictModel):
    """Who this gateway is."""

    id: str = Field(description="gateway id: MQTT topic level and broker user name")
    description: str = ""

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not wire.GATEWAY_ID_RE.match(v):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit"
            )
        return v


class MqttSection(StrictModel):
    """How to reach the broker. The password comes from the environment or a file, never YAML."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = Field(default=None, description="default: the gateway id")
    password_env: str = "CITYNERVE_EDGE_MQTT_PASSWORD"
    password_file: Path | None = None
    client_id: str | None = Field(default=None, description="default: the gateway id")
    topic_root: str = wire.DEFAULT_ROOT
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0)


class PublishSection(StrictModel):
    """How samples are batched onto the uplink."""

    max_batch: int = Field(default=100, ge=1, le=10000, description="samples per data message")
    max_delay_ms: int = Field(default=200, ge=0, le=60000, description="longest wait to fill a batch")
    full_report_s: float = Field(
        default=300.0, gt=0, description="every point is reported at least this often, changed or not"
    )
    queue_max: int = Field(
        default=100_000, ge=100, description="samples waiting for the buffer writer (oldest dropped)"
    )


class BufferSection(StrictModel):
    """The store-and-forward buffer on disk (docs/reliability.md, "Edge")."""

    path: Path | None = Field(default=None, description="default: <data_dir>/buffer.db")
    max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=64 * 1024,
        description="payload bytes kept on disk; beyond it the oldest messages are dropped (counted)",
    )
    max_age_h: float = Field(
        default=168.0, gt=0, description="messages older than this are dropped (counted)"
    )
    sync: Literal["full", "normal"] = Field(
        default="full", description="full: fsync every commit (survives power loss); normal: kill -9 only"
    )
    replay_rate: float = Field(
        default=100.0, ge=0, description="historical messages per second after an outage (0: unlimited)"
    )
    wait_for_hub: bool = Field(
        default=True,
        description="send only while the hub's retained status says online (false: no citynerve hub)",
    )
    inflight: int = Field(default=20, ge=1, le=1000, description="QoS 1 publishes awaiting PUBACK at once")
    memory_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=64 * 1024, description="held in memory while the disk refuses writes"
    )


class EdgeConfig(StrictModel):
    """The whole validated edge configuration."""

    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    data_dir: Path = Path("/var/lib/citynerve-edge")
    control_socket: Path | None = Field(default=None, description="default: <data_dir>/control.sock")
    publish: PublishSection = PublishSection()
    buffer: BufferSection = BufferSection()
    log_level: str = "INFO"
    buses: tuple[BusConfigBase, ...] = ()
    devices: tuple[DeviceConfigBase, ...] = ()
    config_hash: str = ""
    source: str = ""

    @property
    def socket_path(self) -> Path:
        """Where the control socket lives."""
        return self.control_socket or self.data_dir / "control.sock"

    def device(self, device_id: str) -> DeviceConfigBase | None:
        """The device with this id, if configured."""
        for d in self.devices:
            if d.id == device_id:
                return d
        return None


_TOP_KEYS = {"gateway", "mqtt", "data_dir", "control_socket", "publish", "buffer", "log_level"}


def _expand_templates(
    data: dict[str, Any], filename: str, lines: dict[Loc, int], issues: list[ConfigIssue]
) -> list[Any]:
    """Devices with ``template:`` get the template's kind and points, addresses shifted."""
    templates = data.get("templates") or {}
    if not isinstance(templates, dict):
        issues.append(ConfigIssue(filename, line_of(lines, ("templates",)), "templates", "must be a mapping"))
        templates = {}
    devices = data.get("devices") or []
    if not isinstance(devices, list):
        issues.append(ConfigIssue(filename, line_of(lines, ("devices",)), "devices", "must be a list"))
        return []
    out: list[Any] = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict) or "template" not in dev:
            out.append(dev)
            continue
        dev = dict(dev)
        name = dev.pop("template")
        offset = dev.pop("address_offset", 0)
        loc = ("devices", i)
        if name not in templates:
            known = ", ".join(sorted(templates)) or "none defined"
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, (*loc, "template")),
                    format_loc((*loc, "template")),
                    f"unknown template {name!r} (known: {known})",
                )
            )
            out.append(None)
            continue
        if not isinstance(offset, int) or isinstance(offset, bool):
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, (*loc, "address_offset")),
                    format_loc((*loc, "address_offset")),
                    "must be an integer",
                )
            )
            out.append(None)
            continue
        tpl = templates[name]
        if not isinstance(tpl, dict):
            issues.append(
                ConfigIssue(
                    filename, line_of(lines, ("templates", name)), f"templates.{name}", "must be a mapping"
                )
            )
            continue
        for key, value in tpl.items():
            if key == "points":
                if "points" in dev:
                    issues.append(
                        ConfigIssue(
                            filename,
                            line_of(lines, (*loc, "points")),
                            format_loc((*loc, "points")),
                            "a device with a template takes its points from the template",
                        )
                    )
                    continue
                points = copy.deepcopy(value) if isinstance(value, list) else value
                if isinstance(points, list):
                    for j, p in enumerate(points):
                        if isinstance(p, dict) and isinstance(p.get("address"), int):
                            p["address"] += offset
                        # Errors inside a template point point at the template's line.
                        lines.setdefault(
                            (*loc, "points", j), line_of(lines, ("templates", name, "points", j)) or 0
                        )
                        if isinstance(p, dict):
                            for k in p:
                                lines.setdefault(
                                    (*loc, "points", j, k),
                                    line_of(lines, ("templates", name, "points", j, k)) or 0,
                                )
                dev["points"] = points
            else:
                dev.setdefault(key, copy.deepcopy(value))
        out.append(dev)
    return out


def build(data: dict[str, Any], filename: str, lines: dict[Loc, int]) -> EdgeConfig:
    """Validate parsed YAML into an EdgeConfig, collecting every issue before raising."""
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in _TOP_KEYS | {"buses", "devices", "templates"}:
            issues.append(ConfigIssue(filename, line_of(lines, (key,)), str(key), "unknown key"))

    top = {k: v for k, v in data.items() if k in _TOP_KEYS}
    base: EdgeConfig | None = None
    try:
        base = EdgeConfig.model_validate(top)
    except ValidationError as err:
        issues += issues_from_validation(err, filename, lines)

    buses: list[BusConfigBase] = []
    bus_driver: dict[str, str] = {}
    raw_buses = data.get("buses") or []
    if not isinstance(raw_buses, list):
        issues.append(ConfigIssue(filename, line_of(lines, ("buses",)), "buses", "must be a list"))
        raw_buses = []
    for i, raw in enumerate(raw_buses):
        loc: Loc = ("buses", i)
        if not isinstance(raw, dict):
            issues.append(ConfigIssue(filename, line_of(lines, loc), format_loc(loc), "must be a mapping"))
            continue
        name = raw.get("driver")
        if name is None:
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, loc),
                    format_loc((*loc, "driver")),
                    f"required key is missing (known drivers: {', '.join(known_drivers())})",
                )
            )
            continue
        try:
            spec = get_driver(str(name))
        except KeyError as err:
            issues.append(
                ConfigIssue(
                    filename, line_of(lines, (*loc, "driver")), format_loc((*loc, "driver")), err.args[0]
                )
            )
            continue
        try:
            bus = spec.bus_model.model_validate(raw)
        except ValidationError as err:
            issues += issues_from_validation(err, filename, lines, loc)
            continue
        if bus.id in bus_driver:
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, (*loc, "id")),
                    format_loc((*loc, "id")),
                    f"duplicate bus id {bus.id!r}",
                )
            )
            continue
        bus_driver[bus.id] = spec.name
        buses.append(bus)

    devices: list[DeviceConfigBase] = []
    seen_devices: dict[str, int] = {}
    device_index: dict[str, int] = {}
    for i, raw in enumerate(_expand_templates(data, filename, lines, issues)):
        loc = ("devices", i)
        if raw is None:  # its template could not be applied; already reported
            continue
        if not isinstance(raw, dict):
            issues.append(ConfigIssue(filename, line_of(lines, loc), format_loc(loc), "must be a mapping"))
            continue
        raw_id = raw.get("id")
        if isinstance(raw_id, str):
            if raw_id in seen_devices:
                issues.append(
                    ConfigIssue(
                        filename,
                        line_of(lines, (*loc, "id")),
                        format_loc((*loc, "id")),
                        f"duplicate device id {raw_id!r} (first at devices[{seen_devices[raw_id]}])",
                    )
                )
                continue
            seen_devices[raw_id] = i
        bus_id = raw.get("bus")
        if bus_id not in bus_driver:
            known = ", ".join(sorted(bus_driver)) or "none defined"
            msg = "required key is missing" if bus_id is None else f"unknown bus {bus_id!r}"
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, (*loc, "bus")),
                    format_loc((*loc, "bus")),
                    f"{msg} (buses: {known})",
                )
            )
            continue
        spec = get_driver(bus_driver[bus_id])
        try:
            dev = spec.device_model.model_validate(raw)
        except ValidationError as err:
            issues += issues_from_validation(err, filename, lines, loc)
            continue
        point_ids: dict[str, int] = {}
        dup = False
        for j, p in enumerate(dev.points):
            if p.id in point_ids:
                ploc = (*loc, "points", j, "id")
                issues.append(
                    ConfigIssue(
                        filename,
                        line_of(lines, ploc),
                        format_loc(ploc),
                        f"duplicate point id {p.id!r} in device {dev.id!r}",
                    )
                )
                dup = True
            point_ids[p.id] = j
        if dup:
            continue
        devices.append(dev)
        device_index[dev.id] = i

    issues += _bus_clashes(buses, devices, device_index, filename, lines)

    if base is not None and base.mqtt.password_file is not None:
        pw = base.mqtt.password_file
        if not pw.is_file() or not os.access(pw, os.R_OK):
            issues.append(
                ConfigIssue(
                    filename,
                    line_of(lines, ("mqtt", "password_file")),
                    "mqtt.password_file",
                    f"cannot read {pw} (missing, or not readable by this user)",
                )
            )
    if issues or base is None:
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.path)))
    return base.model_copy(
        update={
            "buses": tuple(buses),
            "devices": tuple(devices),
            "config_hash": _hash(data),
            "source": filename,
        }
    )


def _bus_clashes(
    buses: list[BusConfigBase],
    devices: list[DeviceConfigBase],
    device_index: dict[str, int],
    filename: str,
    lines: dict[Loc, int],
) -> list[ConfigIssue]:
    """Clashes between devices of one bus, from the driver's ``check`` (e.g. two BACnet devices
    with one instance)."""
    issues: list[ConfigIssue] = []
    for bus in buses:
        spec = get_driver(bus.driver)
        if spec.check is None:
            continue
        for dev_id, fld, msg in spec.check(bus, [d for d in devices if d.bus == bus.id]):
            loc: Loc = ("devices", device_index[dev_id], fld)
            issues.append(ConfigIssue(filename, line_of(lines, loc), format_loc(loc), msg))
    return issues


def _hash(data: dict[str, Any]) -> str:
    canon = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(canon).hexdigest()[:16]


def load(path: str | Path) -> EdgeConfig:
    """Load and validate an edge config file; raise ConfigError listing every problem."""
    return load_file(path, build)


def devices_on(config: EdgeConfig, bus_id: str) -> Sequence[DeviceConfigBase]:
    """The devices attached to one bus."""
    return [d for d in config.devices if d.bus == bus_id]
