"""Policy runner latency: evaluations/s for a 34,000-lamp city, commands per schedule step with and
without group merging (both from bench/city_night.py's city, reused here), and presence-to-command
latency edge-local vs via the hub, measured in the same run with real parts.

The latency part runs Mosquitto, the hub (SQLite file, default ingest settings) and an edge on the
Modbus cabinet simulator over TCP, with a simulated clock at 02:00 (lamps at 40%). A presence
event is raised in the edge's poller (as a sensor reading would) and the time until a neighbour
lamp's register in the simulator reads 100% is measured:

- edge-local: the edge's plan runner reacts (event -> plan -> bus write);
- via hub: the edge's plan runner does not listen; the event goes up MQTT, the hub's ingest
  hands it to the hub's runner, which commands the lamps back down MQTT -> edge executor -> bus.

`--quick`: a 2,000-lamp city and 5 events per path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import city_night
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edge import config as edge_config
from edge.daemon import Edge
from edge.outbox import PendingEvent
from firmware_sim.modbus import CabinetSim
from hub.app import create_app
from hub.config import HubSettings
from hub.keys import LINK, STORAGE
from hub.policy import POLICY, POLICY_CLOCK, POLICY_SETTINGS, RunnerSettings
from rules import local_ms

GW = "cab-bench"
LAMPS = [f"L-{n + 1:04d}" for n in range(8)]
NIGHT = dt.date(2026, 11, 18)
PARIS = ZoneInfo("Europe/Paris")

EDGE_YAML = """
gateway: {{id: {gw}}}
mqtt: {{host: 127.0.0.1, port: {port}, keepalive_s: 5, reconnect_max_s: 1}}
data_dir: {data}
control_socket: {sock}
publish: {{max_delay_ms: 50, full_report_s: 60}}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 1}}
buses:
  - {{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {sim}, timeout_s: 0.5, retries: 0}}
devices:
{lamps}
"""


class Clock:
    """The simulated clock both sides use."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def _policy(n_lamps: int) -> list[tuple[str, dict[str, Any]]]:
    writes: list[tuple[str, dict[str, Any]]] = [
        ("profiles", {"id": "night", "steps": [
            {"at": "dusk", "offset_min": -10, "level": 100}, {"at": "23:00", "level": 70},
            {"at": "01:00", "level": 40}, {"at": "05:30", "level": 70}, {"at": "dawn", "offset_min": 10, "level": 0}]}),
        ("calendars", {"id": "default", "default_profile": "night"}),
        ("presence-rules", {"id": "walk", "level": 100, "hold_s": 60, "ramp_down_s": 10, "reach_lamps": 2}),
        ("zones", {"id": "m", "kind": "municipality"}),
        ("zones", {"id": "d", "kind": "district", "parent": "m"}),
        ("zones", {"id": "s", "kind": "street", "parent": "d", "lighting_class": "P3", "presence": "walk"}),
    ]
    for i, lid in enumerate(LAMPS[:n_lamps]):
        writes.append(("lamps", {"id": lid, "street": "s", "lat": 47.32, "lon": 5.04 + i * 0.0004,
                                 "rated_w": 60, "gateway": GW}))
    return writes


async def _until(check: Any, timeout: float = 20.0, step: float = 0.001) -> float:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(step)
    return time.perf_counter()


async def latency(events: int) -> dict[str, Any]:
    """Presence-to-command latency, edge-local and via the hub (median, p90 in ms)."""
    tmp = Path(tempfile.mkdtemp(prefix="cn-bench-policy-"))
    broker = _common.Broker(tmp / "broker").start()
    clock = Clock(local_ms(NIGHT + dt.timedelta(days=1), 2, 0, PARIS))
    try:
        async with CabinetSim(lamps=len(LAMPS), port=0) as sim:
            settings = HubSettings.model_validate({
                "data_dir": str(tmp / "hub"),
                "mqtt": {"host": broker.host, "port": broker.port, "client_id": "hub-bench"}})
            app = create_app(settings)
            app[POLICY_CLOCK] = clock
            app[POLICY_SETTINGS] = RunnerSettings(rate_per_gateway=100.0)
            client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
            await client.start_server()
            await asyncio.wait_for(app[LINK].connected.wait(), 10)
            from hub.tokens import create_token

            _, token = await create_token(app[STORAGE], "bench", "admin")
            for seg, body in _policy(len(LAMPS)):
                r = await client.post(f"/api/v1/policy/{seg}", json=body, headers={"Authorization": f"Bearer {token}"})
                assert r.status == 201, await r.text()
            lamps = "\n".join(f"  - {{id: {lid}, bus: cab, unit: 1, template: lamp, address_offset: {10 * n}}}"
                              for n, lid in enumerate(LAMPS))
            path = tmp / "edge.yaml"
            path.write_text(EDGE_YAML.format(gw=GW, port=broker.port, data=tmp / "edge", sock=tmp / "e.sock",
                                             sim=sim.tcp_port, lamps=lamps))
            edge = Edge(edge_config.load(path))
            edge.plan.clock = clock
            task = asyncio.create_task(edge.run())
            runner = app[POLICY]
            poller = edge.pollers["cab"]
            regs = sim.cabinet.lamps
            await _until(lambda: edge.plan.version is not None and edge.plan.version == runner.plan_versions.get(GW))
            await _until(lambda: all(x.setpoint == 40 for x in regs))
            results: dict[str, list[float]] = {"edge_local": [], "via_hub": []}
            try:
                for path_name in ("edge_local", "via_hub"):
                    if path_name == "via_hub":
                        poller.event_listeners.remove(edge.plan.on_event)
                    for k in range(events):
                        sensor = LAMPS[3 + (k % 2)]  # neighbours 2 lamps each side
                        neighbour = LAMPS[LAMPS.index(sensor) - 2]
                        t0 = time.perf_counter()
                        poller._event(PendingEvent(ts_ms=clock(), device=sensor, kind="presence", active=True,
                                                   severity="info", point="presence", detail="bench"))
                        t1 = await _until(lambda n=neighbour: regs[LAMPS.index(n)].setpoint == 100)
                        results[path_name].append((t1 - t0) * 1000)
                        # let the holds end (hold 60 s + fade 10 s on the simulated clock)
                        clock.t += 120_000
                        runner.poke()
                        edge.plan.poke()
                        await _until(lambda: all(x.setpoint == 40 for x in regs))
                        await asyncio.sleep(0.2)
            finally:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                await client.close()
    finally:
        broker.stop()

    def summary(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median_ms": statistics.median(xs), "p90_ms": xs[int(0.9 * (len(xs) - 1))], "n": len(xs)}

    out = {k: summary(v) for k, v in results.items()}
    out["ratio_via_hub_over_edge"] = out["via_hub"]["median_ms"] / out["edge_local"]["median_ms"]
    return out


def main() -> None:
    """Run and print (and with --json save) the figures."""
    args = _common.parser(__doc__).parse_args()
    n = 2_000 if args.quick else 34_000
    night = dt.date(2026, 1, 15)
    t0 = time.perf_counter()
    lay = city_night.build_layout(n)
    print(f"city: {len(lay.lamps):,} lamps ({time.perf_counter() - t0:.1f} s)", flush=True)
    sp = city_night.speed(lay, night, 0.5 if args.quick else 2.0)
    print(_common.table(["evaluation", "lamps/s"], [
        ["evaluate_all, warm (hub runner's call)", sp["batch_lamps_per_s"]],
        ["evaluate_all with presence holds", sp["batch_presence_lamps_per_s"]],
        ["explain() per lamp (baseline loop)", sp["explain_loop_lamps_per_s"]],
        ["trivial dict loop (floor)", sp["trivial_loop_lamps_per_s"]],
    ]), flush=True)
    print(f"whole-city evaluations/s: {sp['batch_lamps_per_s'] / sp['lamps']:.1f}; "
          f"cold first call {sp['cold_first_call_s']:.2f} s", flush=True)
    cm = city_night.commands(lay, night)
    print(_common.table(["step", "instants", "single", "grouped"],
                        [[r["step"], r["instants"], r["single"], r["grouped"]] for r in cm["steps"]]))
    print(f"commands per night: {cm['single_total']:,} single, {cm['grouped_total']:,} with group merging "
          f"({cm['groups']:,} groups)", flush=True)
    lat = asyncio.run(latency(5 if args.quick else 20))
    print(_common.table(["presence -> command", "median ms", "p90 ms", "n"], [
        [k, v["median_ms"], v["p90_ms"], v["n"]] for k, v in lat.items() if isinstance(v, dict)]))
    print(f"via hub / edge-local (median): {lat['ratio_via_hub_over_edge']:.1f}x", flush=True)
    result = {"lamps": sp["lamps"], "speed": sp, "commands": cm, "latency": lat}
    if args.json:
        print("saved", _common.save("policy_latency", result))


if __name__ == "__main__":
    main()
