"""The simulator's JSON control port: inject faults and read every register from outside."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .server import FAULT_MODES, CabinetSim

SIM_KEY = web.AppKey("sim", CabinetSim)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as err:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {err}"}), content_type="application/json"
        ) from err
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return body


async def get_state(request: web.Request) -> web.Response:
    """GET /state: fault, counters, lamps and every mapped register."""
    return web.json_response(request.app[SIM_KEY].state())


async def post_faults(request: web.Request) -> web.Response:
    """POST /faults {"mode": "none|no_answer|exception|garble", "code": 4, "delay_ms": 5}."""
    sim = request.app[SIM_KEY]
    body = await _body(request)
    mode = body.get("mode", "none")
    if mode not in FAULT_MODES:
        return _error(400, f"unknown mode {mode!r} (known: {', '.join(FAULT_MODES)})")
    code = body.get("code", 4)
    if not isinstance(code, int):
        return _error(400, "code must be an integer")
    try:
        sim.set_fault(mode, code)
    except ValueError as err:
        return _error(400, str(err))
    if "delay_ms" in body:
        delay = body["delay_ms"]
        if not isinstance(delay, int | float) or delay < 0:
            return _error(400, "delay_ms must be a number >= 0")
        sim.delay_s = delay / 1000.0
    return web.json_response({"mode": sim.fault.mode, "code": sim.fault.code, "delay_ms": sim.delay_s * 1000})


async def post_lamp(request: web.Request) -> web.Response:
    """POST /lamps/{n}/fail or /lamps/{n}/repair."""
    sim = request.app[SIM_KEY]
    n = int(request.match_info["n"])
    action = request.match_info["action"]
    try:
        sim.fail_lamp(n) if action == "fail" else sim.repair_lamp(n)
    except IndexError as err:
        return _error(404, str(err))
    return web.json_response({"lamp": n, "failed": sim.cabinet.lamps[n].failed})


async def post_door(request: web.Request) -> web.Response:
    """POST /door {"open": true|false}."""
    sim = request.app[SIM_KEY]
    body = await _body(request)
    if not isinstance(body.get("open"), bool):
        return _error(400, 'body must be {"open": true|false}')
    sim.set_door(body["open"])
    return web.json_response({"door_open": sim.cabinet.door_open})


async def post_clear(request: web.Request) -> web.Response:
    """POST /clear: no communication fault, every lamp repaired, door closed."""
    request.app[SIM_KEY].clear()
    return web.json_response({"cleared": True})


def create_control_app(sim: CabinetSim) -> web.Application:
    """The control API of one simulator."""
    app = web.Application()
    app[SIM_KEY] = sim
    app.router.add_get("/state", get_state)
    app.router.add_post("/faults", post_faults)
    app.router.add_post(r"/lamps/{n:\d+}/{action:fail|repair}", post_lamp)
    app.router.add_post("/door", post_door)
    app.router.add_post("/clear", post_clear)
    return app


class ControlServer:
    """The control app served on host:port (0: a free port); an async context manager."""

    def __init__(self, sim: CabinetSim, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner = web.AppRunner(create_control_app(sim), access_log=None)

    async def __aenter__(self) -> ControlServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        """Base URL of the control API."""
        return f"http://{self.host}:{self.port}"
