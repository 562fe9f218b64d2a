"""Typed application keys shared by the app factory and the API handlers."""

from __future__ import annotations

from aiohttp import web

from .commands import Dispatcher
from .config import HubSettings
from .counters import Counters
from .ingest import IngestWriter
from .mqtt import MqttLink
from .registry import Registry
from .storage import Storage

SETTINGS = web.AppKey("settings", HubSettings)
COUNTERS = web.AppKey("counters", Counters)
STORAGE = web.AppKey("storage", Storage)
REGISTRY = web.AppKey("registry", Registry)
LINK = web.AppKey("link", MqttLink)
WRITER = web.AppKey("writer", IngestWriter)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
