"""Start a real hub (aiohttp app, SQLite file, real broker) for tests, with a token per role."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from broker import Mosquitto

from hub.app import create_app
from hub.config import HubSettings
from hub.keys import LINK, STORAGE
from hub.tokens import create_token


def _settings(tmp_path: Path, broker: Mosquitto, **over: Any) -> HubSettings:
    return HubSettings.model_validate(
        {
            "data_dir": str(tmp_path / "hub"),
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "hub-test"},
            "ingest": {"batch_interval_ms": 0},
            "commands": {"sweep_interval_s": 0.1},
            **over,
        }
    )


@dataclass
class Hub:
    """A running hub and tokens of each role."""

    client: TestClient[web.Request, web.Application]
    app: web.Application
    tokens: dict[str, str]

    async def get(self, path: str, role: str = "viewer", **params: Any) -> tuple[int, Any]:
        """GET an API path with a role's token."""
        r = await self.client.get("/api/v1" + path, params=params, headers=_auth(self.tokens[role]))
        return r.status, await r.json() if r.status != 204 else None

    async def post(self, path: str, body: Any, role: str = "operator") -> tuple[int, Any]:
        """POST JSON with a role's token."""
        r = await self.client.post("/api/v1" + path, json=body, headers=_auth(self.tokens[role]))
        return r.status, await r.json()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start_hub(settings: HubSettings, connect_timeout: float = 10) -> Hub:
    """Start the app on a free port and wait for the broker connection."""
    app = create_app(settings)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    await asyncio.wait_for(app[LINK].connected.wait(), connect_timeout)
    tokens = {}
    for role in ("viewer", "operator", "admin"):
        name = f"{role}-{uuid.uuid4().hex[:6]}"
        _, tokens[role] = await create_token(app[STORAGE], name, role)
    return Hub(client, app, tokens)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll until ``check`` is true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
