"""End to end: the lighting policy on DALI lamps (bus simulator on a pty behind the emulated LUBA
master, python-dali driver, Mosquitto, the hub with its policy runner, a simulated night).

The four lamps of the cabinet are one DALI group: each step of the night reaches them as group
frames (from the edge's plan and from the hub), never as one frame per lamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from broker import Mosquitto
from hubtest import _settings, eventually
from policytest import SimClock, at, load, start_policy_hub, street

from drivers.dali import arc_to_percent
from edge import config as edge_config
from edge.daemon import Edge
from firmware_sim.dali import DaliBusSim
from hub.policy import POLICY

GW = "cab-dali"
LAMPS = [f"D-{n:02d}" for n in range(4)]


def edge_yaml(mqtt_port: int, data_dir: Path, socket: Path, serial_port: str) -> str:
    lamps = "\n".join(
        f"  - {{id: {lid}, bus: dali1, address: {n}, groups: [0], template: lamp}}" for n, lid in enumerate(LAMPS)
    )
    return f"""
gateway: {{id: {GW}}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive_s: 5, reconnect_max_s: 1}}
data_dir: {data_dir}
control_socket: {socket}
publish: {{max_delay_ms: 20, full_report_s: 60}}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.2}}
buses:
  - {{id: dali1, driver: dali, interface: luba232, serial_port: {serial_port}}}
devices:
{lamps}
  - {{id: street-g0, bus: dali1, group: 0, points: [{{id: level, unit: "%", writable: true}}]}}
"""


async def test_a_night_on_dali_lamps_goes_out_as_group_frames(tmp_path: Path, mosquitto: Mosquitto) -> None:
    clock = SimClock(at(16, 0))
    async with DaliBusSim(lamps=len(LAMPS), timing=0) as sim:
        for n in range(len(LAMPS)):
            sim.add_to_group(n, 0)  # commissioned as the config says (`citynerve-edge dali group`)
        hub = await start_policy_hub(_settings(tmp_path, mosquitto), clock)
        sock_dir = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
        path = tmp_path / "edge.yaml"
        path.write_text(edge_yaml(mosquitto.port, tmp_path / "edge", sock_dir / "edge.sock", sim.path))
        edge = Edge(edge_config.load(path))
        edge.plan.clock = clock
        task = asyncio.create_task(edge.run())
        runner = hub.app[POLICY]
        try:
            await load(hub, street(GW, LAMPS, presence=False))

            async def plan_arrived() -> bool:
                return edge.plan.version is not None and edge.plan.version == runner.plan_versions.get(GW)

            await eventually(plan_arrived, 15)

            def percents() -> list[int]:
                return [round(arc_to_percent(sim.level(n))) for n in range(len(LAMPS))]

            for (hh, mm), level in [((16, 0), 0), ((18, 0), 100), ((23, 30), 70), ((2, 0), 40)]:
                before = dict(sim.stats.dapc_by_target)
                clock.t = at(hh, mm)
                runner.poke()
                edge.plan.poke()

                async def reached(level: int = level) -> bool:
                    return percents() == [level] * len(LAMPS)

                try:
                    await eventually(reached, 15)
                except AssertionError:
                    raise AssertionError(f"{hh:02d}:{mm:02d}: lamps at {percents()}, want {level}") from None

                async def hub_sent(level: int = level) -> bool:  # the hub's command, acknowledged
                    return runner.sent == dict.fromkeys(LAMPS, level)

                await eventually(hub_sent, 15)
                after = sim.stats.dapc_by_target
                grouped = after.get("group", 0) - before.get("group", 0)
                single = after.get("short", 0) - before.get("short", 0)
                assert grouped >= 1 and single == 0, (f"{hh:02d}:{mm:02d}", before, after)
            # the group command is what the hub stored and the edge acknowledged
            assert {lid: d.source for lid, d in runner.decisions.items()} == dict.fromkeys(LAMPS, "schedule")
            _, cmds = await hub.get("/commands", device="street-g0")
            assert cmds["items"] and {c["status"] for c in cmds["items"]} == {"acknowledged"}, cmds["items"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.client.close()
