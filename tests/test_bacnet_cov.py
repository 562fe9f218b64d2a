"""BACnet COV: the driver subscribes ``cov: true`` points and yields changes through ``updates()``.

Against the building simulator on loopback, fresh UDP ports per test (see test_bacnet.py). No test
here calls ``read`` unless it says so: a change that arrives proves it came without a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from test_bacnet import INSTANCE, bus, device, udp_ports

from drivers import DeviceUnavailable, PushedUpdate
from drivers.bacnet import BacnetDriver
from drivers.bacnet.cov import CovState
from firmware_sim.bacnet import BuildingSim
from wire import Quality

COV_POINTS: list[dict[str, Any]] = [
    {"id": "fire-3", "object": "binary-input,3", "alarm": "fire", "cov": True},
    {"id": "temp-1", "object": "analog-input,1", "unit": "°C", "cov": True},
    {"id": "energy", "object": "analog-input,100", "unit": "kWh"},  # polled only
]


@contextlib.asynccontextmanager
async def following(driver: BacnetDriver) -> AsyncIterator[asyncio.Queue[PushedUpdate]]:
    """Consume the driver's updates() into a queue while the block runs."""
    got: asyncio.Queue[PushedUpdate] = asyncio.Queue()

    async def pump() -> None:
        async for update in driver.updates():
            got.put_nowait(update)

    task = asyncio.create_task(pump())
    try:
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_states(driver: BacnetDriver, want: dict[str, CovState], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {pid: driver.cov_states.get(("town-hall", pid), (None, ""))[0] for pid in want}
        if now == want:
            return
        assert time.monotonic() < deadline, f"COV states {driver.cov_states} never became {want}"
        await asyncio.sleep(0.02)


async def next_update(
    got: asyncio.Queue[PushedUpdate], point: str, value: Any, timeout: float = 1.0
) -> PushedUpdate:
    """The first update of ``point`` with ``value`` within ``timeout`` seconds."""
    seen = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                update = await got.get()
                seen.append(update.reading)
                if update.reading.point == point and update.reading.value == value:
                    return update
    except TimeoutError:
        raise AssertionError(f"no COV update {point}={value!r} within {timeout} s; saw {seen}") from None


async def test_cov_delivers_changes_through_updates_without_a_poll() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port, points=COV_POINTS)
    async with (
        BuildingSim(port=dev_port, instance=INSTANCE) as sim,
        BacnetDriver(bus(gw_port), [dev]) as driver,
        following(driver) as got,
    ):
        await wait_states(driver, {"fire-3": CovState.SUBSCRIBED, "temp-1": CovState.SUBSCRIBED})
        assert ("town-hall", "energy") not in driver.cov_states
        # The device notifies the current value right after subscribing (ASHRAE 135 §13.14.2).
        await next_update(got, "temp-1", 20.5)
        before_ms = int(time.time() * 1000)
        sim.fire(3)
        update = await next_update(got, "fire-3", True)
        assert update.device == "town-hall"
        assert update.reading == ("fire-3", True, Quality.GOOD, "status flags: in-alarm")
        assert update.ts_ms >= before_ms
        sim.set_temperature(1, 24.0)
        assert (await next_update(got, "temp-1", 24.0)).reading.quality is Quality.GOOD
        sim.reset()
        assert (await next_update(got, "fire-3", False)).reading.error == ""
        # A change of status flags alone is notified too (ASHRAE 135 §13.1.2).
        sim.set_fault("analog-input,1")
        update = await next_update(got, "temp-1", 24.0)
        assert update.reading == ("temp-1", 24.0, Quality.DEVICE_ERROR, "status flags: fault")
    # Closing the driver ends updates() and cancels the subscription tasks.
    assert driver._cov_tasks == []


async def test_subscription_is_renewed_before_its_lifetime_ends() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port, points=COV_POINTS, cov_lifetime_s=5)
    async with (
        BuildingSim(port=dev_port, instance=INSTANCE) as sim,
        BacnetDriver(bus(gw_port), [dev]) as driver,
        following(driver) as got,
    ):
        await wait_states(driver, {"fire-3": CovState.SUBSCRIBED, "temp-1": CovState.SUBSCRIBED})
        await asyncio.sleep(6.5)  # past the 5 s lifetime: only a renewal keeps it alive
        assert driver.cov_states[("town-hall", "temp-1")][0] is CovState.SUBSCRIBED
        while not got.empty():
            got.get_nowait()
        sim.set_temperature(1, 26.0)
        await next_update(got, "temp-1", 26.0)
        # renewed 2 s before the end of each 5 s lifetime (at 3 s and 6 s), shown by `status`;
        # counted when the point's task next looks, so the 6 s one may not be counted yet
        renewals = {c["point"]: c["renewals"] for c in driver.cov_status()}
        assert set(renewals) == {"fire-3", "temp-1"} and all(1 <= n <= 2 for n in renewals.values()), renewals


async def test_a_device_that_refuses_cov_is_polled_instead() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port, points=COV_POINTS)
    async with (
        BuildingSim(port=dev_port, instance=INSTANCE, cov=False) as sim,
        BacnetDriver(bus(gw_port), [dev]) as driver,
        following(driver) as got,
    ):
        await wait_states(driver, {"fire-3": CovState.POLLED, "temp-1": CovState.POLLED})
        _state, why = driver.cov_states[("town-hall", "fire-3")]
        assert why == (
            f"town-hall (device,{INSTANCE} at 127.0.0.1:{dev_port}): subscribe-cov binary-input,3 "
            "for town-hall.fire-3: rejected: unrecognized-service"
        )
        sim.fire(3)
        readings = {r.point: r for r in await driver.read(dev, dev.points)}
        assert readings["fire-3"].value is True
        await asyncio.sleep(0.3)
        assert got.empty()


async def test_cov_is_resubscribed_when_a_restarted_device_answers_again() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port, points=COV_POINTS)
    async with BacnetDriver(bus(gw_port, apdu_timeout_s=0.2, apdu_retries=0), [dev]) as driver:
        async with following(driver) as got:
            async with BuildingSim(port=dev_port, instance=INSTANCE):
                await wait_states(driver, {"fire-3": CovState.SUBSCRIBED, "temp-1": CovState.SUBSCRIBED})
            # The device is gone: the poll says so.
            try:
                await driver.read(dev, dev.points)
            except DeviceUnavailable:
                pass
            else:
                raise AssertionError("a read of a stopped device answered")
            # It restarts with no memory of its subscribers; the next good poll resubscribes.
            async with BuildingSim(port=dev_port, instance=INSTANCE) as sim:
                await driver.read(dev, dev.points)
                await asyncio.sleep(0.1)
                await wait_states(driver, {"fire-3": CovState.SUBSCRIBED, "temp-1": CovState.SUBSCRIBED})
                while not got.empty():
                    got.get_nowait()
                sim.fire(3)
                await next_update(got, "fire-3", True, timeout=3.0)


def test_cov_lifetime_is_finite_and_at_least_5_s() -> None:
    with pytest.raises(ValidationError) as err:
        device(47901, cov_lifetime_s=0)
    assert err.value.errors()[0]["loc"] == ("cov_lifetime_s",)
    assert err.value.errors()[0]["msg"] == "Input should be greater than or equal to 5"
    assert device(47901).cov_lifetime_s == 300


async def test_device_offline_then_back_polls_recover_and_cov_is_resubscribed() -> None:
    gw_port, dev_port = udp_ports(2)
    dev = device(dev_port, points=COV_POINTS)
    async with (
        BuildingSim(port=dev_port, instance=INSTANCE) as sim,
        BacnetDriver(bus(gw_port, apdu_timeout_s=0.2, apdu_retries=0), [dev]) as driver,
        following(driver) as got,
    ):
        await wait_states(driver, {"fire-3": CovState.SUBSCRIBED, "temp-1": CovState.SUBSCRIBED})
        sim.set_offline()
        with pytest.raises(DeviceUnavailable):
            await driver.read(dev, dev.points)
        sim.set_temperature(1, 27.0)  # not notified: the device is offline
        await asyncio.sleep(0.2)
        assert all(u.reading.value != 27.0 for u in [got.get_nowait() for _ in range(got.qsize())])
        sim.set_offline(False)
        readings = {r.point: r for r in await driver.read(dev, dev.points)}
        assert readings["temp-1"].value == 27.0
        # The good poll resubscribes, and the device notifies the current value at once.
        await next_update(got, "temp-1", 27.0, timeout=2.0)
        sim.fire(3)
        await next_update(got, "fire-3", True)
