"""COV subscriptions of one bus: a task per ``cov: true`` point, notifications as PushedUpdates.

bacpypes3's ``app.change_of_value(...)`` context manager subscribes, renews the subscription
shortly before its lifetime ends and queues the notified property values. What it does not do
is say when a renewal fails (the error stays in a task nobody awaits) or notice that a device
restarted and forgot its subscribers; ``follow`` does both. A device that refuses the
subscription (an Error or Reject, ASHRAE 135 §13.14: SubscribeCOV is optional) is left to
polling, which goes on for every point anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bacpypes3.primitivedata import ObjectIdentifier

from drivers.base import DeviceUnavailable, DriverError, PointReading, PushedUpdate

from .config import BacnetDeviceConfig, BacnetPointConfig

if TYPE_CHECKING:
    from .driver import BacnetDriver

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often a waiting subscription checks its renewal and the device's return
QUEUE_MAX = 1000


class CovState(StrEnum):
    """Where one point's subscription stands."""

    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"
    WAITING = "waiting for the device"  # no answer: resubscribed when a poll succeeds again
    POLLED = "polled"  # the device refused COV for this object


@dataclass
class DeviceLink:
    """Per device: is it answering, and an event set each time it comes back."""

    down: bool = False
    back: asyncio.Event = field(default_factory=asyncio.Event)

    def failed(self) -> None:
        """A request to the device went unanswered."""
        self.down = True

    def answered(self) -> None:
        """A request was answered: wake subscriptions waiting for the device, once per return."""
        if self.down:
            self.down = False
            self.back.set()
            self.back = asyncio.Event()


class Updates:
    """A bounded queue of pushed updates; the oldest is dropped when nobody keeps up."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[PushedUpdate | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.dropped = 0

    def put(self, update: PushedUpdate | None) -> None:
        """Queue an update (None: the end)."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("bacnet COV updates are not being consumed: dropping the oldest")
        self.queue.put_nowait(update)


async def follow(
    driver: BacnetDriver,
    dev: BacnetDeviceConfig,
    p: BacnetPointConfig,
    link: DeviceLink,
    emit: Callable[[PushedUpdate], None],
    set_state: Callable[[CovState, str], None],
) -> None:
    """Keep one point subscribed until cancelled, or until the device refuses (then polled)."""
    what = f"subscribe-cov {p.object} for {dev.id}.{p.id}"
    while True:
        set_state(CovState.SUBSCRIBING, "")
        back = link.back
        try:
            await _subscribed(driver, dev, p, link, emit, set_state, what)
        except DeviceUnavailable as err:
            link.failed()
            set_state(CovState.WAITING, str(err))
            log.debug("%s: %s; resubscribing when the device answers again", what, err)
            if back is link.back:  # did not come back meanwhile
                await link.back.wait()
        except DriverError as err:
            set_state(CovState.POLLED, str(err))
            log.info("bacnet device %s refused COV for %s (%s): polled instead", dev.id, p.object, err)
            return


async def _subscribed(
    driver: BacnetDriver,
    dev: BacnetDeviceConfig,
    p: BacnetPointConfig,
    link: DeviceLink,
    emit: Callable[[PushedUpdate], None],
    set_state: Callable[[CovState, str], None],
    what: str,
) -> None:
    """Subscribe and pump notifications; returns to resubscribe, raises DriverError."""
    app = driver.app
    addr = await driver.resolve(dev)
    scm = app.change_of_value(addr, ObjectIdentifier(p.object), lifetime=dev.cov_lifetime_s)
    async with driver.lock:
        await driver.call(dev, what, scm.__aenter__())
    link.answered()
    set_state(CovState.SUBSCRIBED, "")
    back = link.back
    values: dict[str, Any] = {}
    try:
        while True:
            if _check_renewal(driver, dev, scm, what):
                driver.cov_counts(dev.id, p.id)[0] += 1
            if back.is_set():
                # The device stopped answering and came back: it may have restarted and
                # forgotten us long before the next renewal.
                return
            try:
                async with asyncio.timeout(TICK_S):
                    prop, value = await scm.get_value()
            except TimeoutError:
                continue
            values[str(prop)] = value
            if not scm.queue.empty() or "present-value" not in values:
                continue  # one notification carries present-value and status-flags: take both
            reading: PointReading = driver.reading(p, values["present-value"], values.get("status-flags"))
            driver.cov_counts(dev.id, p.id)[1] += 1
            emit(PushedUpdate(dev.id, reading, int(time.time() * 1000)))
    finally:
        # Abandon, do not unsubscribe: the subscription ends with its lifetime, and a
        # cancelled driver must not wait on a device that may be gone.
        task = scm.refresh_subscription_task
        if task is not None and not task.done():
            task.cancel()
        await _abandon(scm.__aexit__(asyncio.CancelledError, asyncio.CancelledError(), None))


def _check_renewal(driver: BacnetDriver, dev: BacnetDeviceConfig, scm: Any, what: str) -> bool:
    """True once per renewal done; raise the error of a failed one (bacpypes3 leaves it in a task
    nobody awaits)."""
    task = scm.refresh_subscription_task
    if task is None or not task.done():
        return False
    scm.refresh_subscription_task = None
    if task.cancelled():
        return False
    err = task.exception()
    if err is not None:
        raise driver.translate(dev, f"renew {what}", err)
    return True


async def _abandon(exiting: Awaitable[Any]) -> None:
    try:
        await exiting
    except KeyError:  # already removed from the application's contexts
        pass


__all__ = ["CovState", "DeviceLink", "Updates", "follow"]
