"""Live state of the gateway's devices and points, shared by pollers, commands and the CLI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from drivers import DeviceConfigBase, PointConfigBase
from wire import Quality, Value


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (sample timestamps)."""
    return time.time_ns() // 1_000_000


class Health(StrEnum):
    """A device's communication health."""

    UNKNOWN = "unknown"  # not polled yet
    OK = "ok"
    COMM_ERROR = "comm_error"


@dataclass(slots=True)
class PointState:
    """The latest known value of one point and what was last reported for it."""

    config: PointConfigBase
    value: Value = None
    quality: Quality | None = None
    ts_ms: int = 0
    error: str = ""
    reported_value: Value = None
    reported_quality: Quality | None = None
    reported_at: float = 0.0  # monotonic seconds of the last report
    alarm_active: bool | None = None  # for points with ``alarm``: the state last raised/cleared


@dataclass(slots=True)
class DeviceState:
    """One device: its health, error counters and points."""

    config: DeviceConfigBase
    points: dict[str, PointState] = field(default_factory=dict)
    health: Health = Health.UNKNOWN
    last_error: str = ""
    failures: int = 0  # consecutive failed polls
    errors_total: int = 0
    polls_total: int = 0
    last_ok_ms: int = 0
    retry_at: float = 0.0  # monotonic time before which a failed device is not polled again

    @classmethod
    def of(cls, config: DeviceConfigBase) -> DeviceState:
        """A fresh state for a configured device."""
        return cls(config=config, points={p.id: PointState(config=p) for p in config.points})


@dataclass
class Counters:
    """Things the gateway counts; shown by ``citynerve-edge status``."""

    samples_published: int = 0
    messages_published: int = 0
    samples_dropped: int = 0
    events_published: int = 0
    commands_received: int = 0
    commands_duplicate: int = 0
    commands_malformed: int = 0
    acks_published: int = 0
    uplink_connects: int = 0
    uplink_failures: int = 0
    messages_malformed: int = 0
    messages_replayed: int = 0  # sent from the buffer's backlog, flagged historical
    samples_replayed: int = 0
    buffer_overflow_events: int = 0
