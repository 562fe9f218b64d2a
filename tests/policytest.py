"""Helpers for the lighting-policy tests: a simulated clock, a hub started with it, a small
street of lamps loaded through the REST API."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hubtest import Hub

from hub.app import create_app
from hub.config import HubSettings
from hub.keys import LINK, STORAGE
from hub.policy import POLICY_CLOCK, POLICY_SETTINGS, RunnerSettings
from hub.tokens import create_token
from rules import local_ms

PARIS = ZoneInfo("Europe/Paris")
NIGHT = dt.date(2026, 11, 18)  # a Wednesday in Dijon: civil dusk ~17:35, dawn ~07:40 local


def at(hh: int, mm: int = 0, day: dt.date = NIGHT) -> int:
    """Epoch ms of a Paris wall time on the test night (hours < 12 are the next morning)."""
    d = day + dt.timedelta(days=1) if hh < 12 else day
    return local_ms(d, hh, mm, PARIS)


class SimClock:
    """An injectable clock (epoch ms) that tests move by hand."""

    def __init__(self, t_ms: int) -> None:
        self.t = t_ms

    def __call__(self) -> int:
        return self.t


PROFILE = {
    "id": "night",
    "steps": [
        {"at": "dusk", "offset_min": -10, "level": 100},
        {"at": "23:00", "level": 70},
        {"at": "01:00", "level": 40},
        {"at": "05:30", "level": 70},
        {"at": "dawn", "offset_min": 10, "level": 0},
    ],
}


def street(gateway: str, lamps: list[str], *, presence: bool = True, group: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(segment, body) writes making a small city: one street of `lamps` 30 m apart, in order."""
    writes: list[tuple[str, dict[str, Any]]] = [
        ("profiles", PROFILE),
        ("calendars", {"id": "default", "default_profile": "night"}),
        ("presence-rules", {"id": "walk", "level": 100, "hold_s": 60, "ramp_down_s": 10, "reach_lamps": 1}),
        ("zones", {"id": "m-dijon", "kind": "municipality"}),
        ("zones", {"id": "d-centre", "kind": "district", "parent": "m-dijon"}),
        ("zones", {"id": "s-rue", "kind": "street", "parent": "d-centre", "lighting_class": "P3",
                   **({"presence": "walk"} if presence else {})}),
    ]
    for i, lamp in enumerate(lamps):
        writes.append(("lamps", {"id": lamp, "street": "s-rue", "lat": 47.32, "lon": 5.04 + i * 0.0004,
                                 "rated_w": 60, "gateway": gateway, **({"group": group} if group else {})}))
    return writes


async def start_policy_hub(settings: HubSettings, clock: SimClock, rate: float = 200.0) -> Hub:
    """A hub (as hubtest.start_hub) whose policy runner uses `clock`."""
    app = create_app(settings)
    app[POLICY_CLOCK] = clock
    app[POLICY_SETTINGS] = RunnerSettings(rate_per_gateway=rate, max_sleep_s=0.5)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    await asyncio.wait_for(app[LINK].connected.wait(), 10)
    tokens = {}
    for role in ("viewer", "operator", "admin"):
        _, tokens[role] = await create_token(app[STORAGE], f"{role}-{uuid.uuid4().hex[:6]}", role)
    return Hub(client, app, tokens)


async def send(hub: Hub, method: str, path: str, body: Any = None, role: str = "admin") -> tuple[int, Any]:
    """Any method on /api/v1 with a role's token; (status, JSON or None)."""
    r = await hub.client.request(method, "/api/v1" + path, json=body,
                                 headers={"Authorization": f"Bearer {hub.tokens[role]}"})
    return r.status, (await r.json() if r.status != 204 else None)


async def load(hub: Hub, writes: list[tuple[str, dict[str, Any]]]) -> None:
    """POST every write; fail loudly on the first refusal."""
    for seg, body in writes:
        status, out = await send(hub, "POST", f"/policy/{seg}", body)
        assert status == 201, (seg, body, out)
