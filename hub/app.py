"""``create_app(settings)``: the hub as one aiohttp application with one cleanup_ctx per resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from .api import setup_api
from .commands import Dispatcher
from .config import HubSettings, mqtt_password
from .counters import Counters
from .ingest import IngestWriter
from .keys import COUNTERS, DISPATCHER, LINK, REGISTRY, SETTINGS, STORAGE, WRITER
from .mqtt import Incoming, MqttLink
from .policy import policy_ctx
from .registry import Registry
from .storage import Storage

log = logging.getLogger(__name__)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)

    def done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("task %s died", name, exc_info=t.exception())

    task.add_done_callback(done)
    return task


async def _database(app: web.Application) -> AsyncIterator[None]:
    storage = Storage(app[SETTINGS].db_url)
    await storage.open()
    app[STORAGE] = storage
    yield
    await storage.close()


async def _registry(app: web.Application) -> AsyncIterator[None]:
    registry = Registry(app[STORAGE], app[COUNTERS])
    await registry.warm_up()
    app[REGISTRY] = registry
    yield


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    queue: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=s.ingest.queue_max)
    link = MqttLink(s.mqtt, mqtt_password(s.mqtt), queue, app[COUNTERS])
    writer = IngestWriter(
        s.ingest, link.topics, queue, link, app[STORAGE], app[REGISTRY], app[COUNTERS]
    )
    app[LINK], app[WRITER] = link, writer
    writer_task = _spawn(writer.run(), "hub-ingest-writer")
    link_task = _spawn(link.run(), "hub-mqtt")
    yield
    await link.say_goodbye()
    await _cancel(link_task)
    await _cancel(writer_task)
    await writer.flush_latest()


async def _publisher(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    app[DISPATCHER] = Dispatcher(s.commands, app[REGISTRY], app[STORAGE], app[LINK], app[COUNTERS])
    yield


async def _sweep(app: web.Application) -> AsyncIterator[None]:
    task = _spawn(app[DISPATCHER].sweep(), "hub-command-sweep")
    yield
    await _cancel(task)


def create_app(settings: HubSettings) -> web.Application:
    """Build the hub application; nothing is opened until the app starts."""
    app = web.Application()
    app[SETTINGS] = settings
    app[COUNTERS] = Counters()
    app.cleanup_ctx.extend([_database, _registry, _ingest, _publisher, _sweep, policy_ctx])
    setup_api(app)
    return app
