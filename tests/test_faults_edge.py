"""Faults at the edge, with real parts: Mosquitto killed, stopped for long, frozen (SIGSTOP) past
the keepalive; the edge killed with SIGKILL while replaying its buffer; the buffer's disk full;
fuzzed payloads on the topics the edge reads; a bus whose poller keeps crashing; the watchdog.

The edge runs in-process or as ``python -m edge run`` (where SIGKILL or a file-size limit is
needed), against the Modbus cabinet simulator; the hub is the real one on a SQLite file. Every
data test reports sent/stored/lost/duplicated and requires zero loss and zero duplicates in the
hub's storage (or, for the disk-full test, exactly the loss the edge reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import pytest
from broker import Mosquitto
from hubtest import Hub, _settings, eventually, start_hub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from edge import config as edge_config
from edge import control
from edge.daemon import Edge
from firmware_sim.modbus import CabinetSim
from wire import Kind

GW = "cab-07"
TOPICS = wire.Topics()


def edge_yaml(port: int, data: Path, sock: Path, modbus_port: int, lamps: int = 4, **over: str) -> str:
    """A cabinet edge reporting every point every ~0.3 s (steady telemetry); sections overridable."""
    lamp_lines = "\n".join(
        f"  - {{id: L-{n + 1:04d}, bus: cab, unit: 1, template: lamp, address_offset: {10 * n}}}"
        for n in range(lamps)
    )
    sections = {
        "mqtt": f"{{host: 127.0.0.1, port: {port}, keepalive_s: 5, reconnect_max_s: 1}}",
        "publish": "{max_delay_ms: 20, full_report_s: 0.3, max_batch: 20}",
        "buffer": "{replay_rate: 0}",
    }
    sections.update(over)
    return f"""
gateway: {{id: {GW}}}
data_dir: {data}
control_socket: {sock}
{chr(10).join(f"{k}: {v}" for k, v in sections.items())}
templates:
  lamp:
    kind: lamp
    points:
      - {{id: level, register: holding, address: 100, type: u16, unit: "%", writable: true, min: 0, max: 100, interval_s: 0.2}}
      - {{id: power, register: input, address: 101, type: u16, scale: 0.1, unit: W, interval_s: 0.2}}
      - {{id: lamp_failure, register: discrete, address: 100, type: bool, interval_s: 0.2, alarm: lamp_failure}}
buses:
  - {{id: cab, driver: modbus, transport: tcp, host: 127.0.0.1, port: {modbus_port}, timeout_s: 0.3, retries: 0, max_gap: 9}}
devices:
  - id: CAB-07
    bus: cab
    unit: 1
    kind: cabinet
    points:
      - {{id: door_open, register: discrete, address: 0, type: bool, interval_s: 0.2, alarm: door_open}}
      - {{id: supply_voltage, register: input, address: 0, type: u16, scale: 0.1, unit: V, interval_s: 0.2}}
{lamp_lines}
"""


# -- what the hub stored ------------------------------------------------------------------------


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as c:
        return c.execute(sql, args).fetchall()


def stored_seqs(db: Path) -> set[int]:
    """The (gateway, seq) keys the hub stored, for our gateway."""
    return {s for (s,) in _query(db, "SELECT m.seq FROM ingested_msg m JOIN gateway g ON g.id = m.gateway_id "
                                     "WHERE g.name = ?", GW)}


def duplicated_samples(db: Path) -> int:
    """Samples stored more than once (same point, time and quality)."""
    total = _query(db, "SELECT count(*) FROM sample")[0][0]
    distinct = _query(db, "SELECT count(*) FROM (SELECT DISTINCT point_id, ts_ms, quality FROM sample)")[0][0]
    return int(total - distinct)


def report(sent: set[int], stored: set[int], dup_samples: int, extra: str = "") -> str:
    """``sent=.. stored=.. lost=.. duplicated=..`` for the assertion message (and the log)."""
    lost = sorted(sent - stored)
    msg = (f"sent={len(sent)} stored={len(stored & sent)} lost={len(lost)} duplicated_samples={dup_samples} "
           f"first lost={lost[:10]} {extra}")
    print(msg)
    return msg


async def wait_stored(db: Path, want: set[int], timeout: float = 60) -> set[int]:
    """Until the hub has every seq in ``want`` (or the timeout); returns what it has."""
    got: set[int] = set()

    async def check() -> bool:
        nonlocal got
        got = await asyncio.to_thread(stored_seqs, db)
        return want <= got

    with contextlib.suppress(AssertionError):
        await eventually(check, timeout)
    return got


# -- parts -------------------------------------------------------------------------------------


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """AF_UNIX paths are short: the control socket lives in /tmp."""
    d = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
    try:
        yield d
    finally:
        for f in d.iterdir():
            f.unlink(missing_ok=True)
        d.rmdir()


@pytest.fixture
async def cabinet() -> AsyncIterator[CabinetSim]:
    async with CabinetSim(lamps=4, port=0) as sim:
        yield sim


def restart_broker(broker: Mosquitto) -> None:
    """Start the same broker again on the same port."""
    broker.start()


def kill_broker(broker: Mosquitto) -> None:
    """SIGKILL: connections dropped, nothing flushed."""
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait()
    broker.stop()


class EdgeProcess:
    """``python -m edge run`` on a config; SIGKILL-able, optionally with a file-size limit."""

    def __init__(self, workdir: Path, yaml: str, sock: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "edge.yaml"
        self.config.write_text(yaml)
        self.sock = sock
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, fsize: int | None = None) -> None:
        self.starts += 1
        log = open(self.dir / f"edge-{self.starts}.log", "wb")

        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit,
        )
        log.close()

    async def ask(self, op: str, timeout: float = 30) -> dict[str, Any]:
        """A control-socket request, waiting for the daemon to listen."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = await control.request(self.sock, op, timeout=5)
                assert resp["ok"], resp
                return resp
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return "\n".join((self.dir / f"edge-{n}.log").read_text(errors="replace")[-3000:]
                         for n in range(1, self.starts + 1))


@contextlib.asynccontextmanager
async def in_process_edge(yaml: str, path: Path) -> AsyncIterator[Edge]:
    path.write_text(yaml)
    edge = Edge(edge_config.load(path))
    task = asyncio.create_task(edge.run())
    try:
        yield edge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        edge.buffer.close()


async def gateway_json(hub: Hub) -> dict[str, Any]:
    status, body = await hub.get(f"/gateways/{GW}")
    assert status == 200, body
    return body


async def settle_and_check(hub: Hub, db: Path, sent: set[int], what: str) -> None:
    """Wait for everything sent, then require zero loss, zero duplicates and no open gap."""
    stored = await wait_stored(db, sent)

    async def no_gap() -> bool:
        # Live-first replay: the hub sees newer seqs before older ones, so gaps open and close.
        g = await gateway_json(hub)
        return bool(g["open_gaps"] == 0)

    with contextlib.suppress(AssertionError):
        await eventually(no_gap, 30)
    dups = await asyncio.to_thread(duplicated_samples, db)
    g = await gateway_json(hub)
    msg = report(sent, stored, dups, f"{what}; hub open_gaps={g['open_gaps']} missing={g['missing']} "
                                     f"replayed={g['replay']['messages_total']}")
    assert sent <= stored, msg
    assert dups == 0, msg
    assert g["open_gaps"] == 0 and g["missing"] == 0, msg


# -- broker faults (in-process edge) -------------------------------------------------------------


async def _broker_fault(tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim, fault: str,
                        outage_s: float) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    db = tmp_path / "hub" / "citynerve.db"
    with short_dir() as d:
        # A slow replay (10 messages/s) so that live data must overtake it.
        yaml = edge_yaml(mosquitto.port, tmp_path / "edge", d / "edge.sock", cabinet.tcp_port,
                         buffer="{replay_rate: 10}")
        try:
            async with in_process_edge(yaml, tmp_path / "edge.yaml") as edge:
                await eventually(lambda: _true(edge.counters.messages_published > 10), 20)
                if fault == "kill":
                    await asyncio.to_thread(kill_broker, mosquitto)
                elif fault == "stop":
                    await asyncio.to_thread(mosquitto.stop)
                else:  # partition: the broker frozen, TCP up but silent, longer than the keepalive
                    assert mosquitto.proc is not None
                    mosquitto.proc.send_signal(signal.SIGSTOP)
                t0 = time.monotonic()
                await asyncio.sleep(outage_s)
                if fault == "sigstop":
                    assert edge.uplink.connected is False, "the edge did not notice the dead link"
                    assert mosquitto.proc is not None
                    mosquitto.proc.send_signal(signal.SIGCONT)
                else:
                    await asyncio.to_thread(restart_broker, mosquitto)
                backlog = len(edge.buffer)
                assert backlog > 0, "nothing accumulated during the outage"
                # Live data flows while the backlog replays: a fresh value reaches the hub early.
                await eventually(lambda: _true(edge.uplink.connected), 20)
                if backlog > 30:
                    async def live_fresh() -> bool:
                        _, body = await hub.get("/devices/L-0001/points")
                        pts = {p["id"]: p for p in body.get("items", [])}
                        ts = pts.get("power", {}).get("ts_ms") or 0
                        return bool(ts > time.time() * 1000 - 2000)

                    await eventually(live_fresh, 20)
                    assert edge.uplink.replay["state"] == "replaying", (
                        f"live data only after the replay: {edge.uplink.replay}")
                target = edge.seqs.last
                await settle_and_check(hub, db, set(range(target + 1)),
                                       f"{fault} {time.monotonic() - t0:.1f}s, backlog {backlog} messages")
                g = await gateway_json(hub)
                assert g["replay"]["messages_total"] > 0, "the backlog was not flagged historical"
                assert not g["clock_skew"], "replayed data mistaken for clock skew"
                assert edge.tasks["uplink"].restarts == 0
        finally:
            await hub.client.close()


async def _true(v: bool) -> bool:
    return v


async def test_broker_killed_during_steady_telemetry(tmp_path: Path, mosquitto: Mosquitto,
                                                     cabinet: CabinetSim) -> None:
    await _broker_fault(tmp_path, mosquitto, cabinet, "kill", 2.0)


async def test_long_broker_outage_then_back_replays_live_first(tmp_path: Path, mosquitto: Mosquitto,
                                                                cabinet: CabinetSim) -> None:
    await _broker_fault(tmp_path, mosquitto, cabinet, "stop", 8.0)


async def test_partition_longer_than_keepalive(tmp_path: Path, mosquitto: Mosquitto,
                                               cabinet: CabinetSim) -> None:
    await _broker_fault(tmp_path, mosquitto, cabinet, "sigstop", 10.0)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_long_outage(tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim) -> None:
    await _broker_fault(tmp_path, mosquitto, cabinet, "stop", float(os.environ.get("CN_OUTAGE_S", "300")))


# -- the edge killed while replaying ---------------------------------------------------------------


def _buffered_seqs(data_dir: Path) -> set[int]:
    """The seqs in a (dead) edge's buffer file."""
    return {s for (s,) in _query(data_dir / "buffer.db", "SELECT seq FROM msg WHERE seq >= 0")}


async def test_edge_killed_while_replaying_then_restart_completes(tmp_path: Path, mosquitto: Mosquitto,
                                                                  cabinet: CabinetSim) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    db = tmp_path / "hub" / "citynerve.db"
    data = tmp_path / "edge"
    with short_dir() as d:
        ep = EdgeProcess(tmp_path / "edgeproc", edge_yaml(
            mosquitto.port, data, d / "edge.sock", cabinet.tcp_port,
            publish="{max_delay_ms: 20, full_report_s: 0.3, max_batch: 5}",
            buffer="{replay_rate: 15}"), d / "edge.sock")
        try:
            ep.start()
            await eventually(lambda: _nonempty(db), 30)
            await asyncio.to_thread(mosquitto.stop)
            await asyncio.sleep(5)  # a backlog builds up on the edge's disk
            backlog = (await ep.ask("buffer"))["messages"]
            await asyncio.to_thread(restart_broker, mosquitto)

            async def replaying() -> bool:
                g = await gateway_json(hub)
                return bool(g["replay"]["messages_total"] >= 10)

            await eventually(replaying, 30)
            b = await ep.ask("buffer")
            assert b["replay"]["state"] == "replaying", b
            await asyncio.to_thread(ep.kill)
            unsent = await asyncio.to_thread(_buffered_seqs, data)
            stored_then = await asyncio.to_thread(stored_seqs, db)
            first_run = set(range(max(unsent | stored_then) + 1))
            assert unsent, "the replay was already over when the edge was killed"
            ep.start()
            b = await ep.ask("buffer")

            async def drained() -> bool:
                # Replay over; what remains is the live message or two in flight.
                b = await ep.ask("buffer")
                return bool(b["replay"]["state"] == "live" and b["messages"] <= 3)

            await eventually(drained, 60)
            st = await ep.ask("status")
            second_run = set(range((max(first_run) // 1000 + 1) * 1000, st["seq"] + 1))
            await settle_and_check(hub, db, first_run | second_run,
                                   f"backlog {backlog}, unsent at kill {len(unsent)}")
            g = await gateway_json(hub)
            assert g["restart_skips"] == 1, g
        finally:
            ep.stop()
            await hub.client.close()


async def _nonempty(db: Path) -> bool:
    try:
        return bool(await asyncio.to_thread(stored_seqs, db))
    except sqlite3.Error:
        return False


# -- disk full ---------------------------------------------------------------------------------


async def test_disk_full_keeps_daemon_alive_and_reports_the_loss(tmp_path: Path, mosquitto: Mosquitto) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    db = tmp_path / "hub" / "citynerve.db"
    async with CabinetSim(lamps=20, port=0) as sim:
        with short_dir() as d:
            ep = EdgeProcess(tmp_path / "edgeproc", edge_yaml(
                mosquitto.port, tmp_path / "edge", d / "edge.sock", sim.tcp_port, lamps=20,
                publish="{max_delay_ms: 20, full_report_s: 0.1, max_batch: 50}",
                buffer="{replay_rate: 0, memory_max_bytes: 65536}"), d / "edge.sock")
            try:
                # Every file the edge writes is limited to 96 KiB: the buffer's disk "fills".
                ep.start(fsize=96 * 1024)
                await eventually(lambda: _nonempty(db), 30)
                await asyncio.to_thread(mosquitto.stop)

                async def failing_and_dropping() -> bool:
                    b = await ep.ask("buffer")
                    return bool(not b["disk_ok"] and b["dropped_messages"] > 0)

                await eventually(failing_and_dropping, 60)
                await asyncio.sleep(1)
                await asyncio.to_thread(restart_broker, mosquitto)

                async def reported() -> bool:
                    rows = await asyncio.to_thread(
                        _query, db, "SELECT kind, detail FROM event WHERE kind LIKE 'buffer_%'")
                    return {k for k, _ in rows} >= {"buffer_error", "buffer_overflow"}

                await eventually(reported, 30)
                b = await ep.ask("buffer")
                assert ep.proc is not None and ep.proc.poll() is None, ep.log()
                st = await ep.ask("status")
                sent = set(range(st["seq"] + 1))  # every number handed out: in the buffer, sent or dropped
                lost: list[int] = []

                async def only_dropped_missing() -> bool:
                    nonlocal lost, b
                    stored = await asyncio.to_thread(stored_seqs, db)
                    lost = sorted(sent - stored)
                    b = await ep.ask("buffer")
                    rows = await asyncio.to_thread(
                        _query, db, "SELECT detail FROM event WHERE kind = 'buffer_overflow'")
                    reported = sum(int(o[0].split()[1]) for o in rows)
                    return bool(len(lost) <= b["dropped_messages"] == reported
                                and b["drops_unreported"]["messages"] == 0)

                with contextlib.suppress(AssertionError):
                    await eventually(only_dropped_missing, 60)
                stored = await asyncio.to_thread(stored_seqs, db)
                overflow = _query(db, "SELECT detail FROM event WHERE kind = 'buffer_overflow'")
                dups = await asyncio.to_thread(duplicated_samples, db)
                msg = report(sent, stored, dups, f"reported: {overflow}; edge buffer: {b}")
                # The loss is exactly what the edge reported as dropped: one range of seqs (the
                # oldest of those held in memory), and nothing else.
                reported = sum(int(o[0].split()[1]) for o in overflow)
                assert reported == b["dropped_messages"] and b["drops_unreported"]["messages"] == 0, msg
                # Reported loss is an upper bound: a message dropped from memory while its publish
                # was in flight may still arrive. Nothing outside the reported ranges is lost.
                assert 0 < len(lost) <= reported, msg
                ranges = [tuple(map(int, o[0].split(", seq ")[1].split(",")[0].split(".."))) for o in overflow]
                assert all(any(lo <= s <= hi for lo, hi in ranges) for s in lost), msg
                # Samples are dropped before events: the disk failure itself was reported.
                assert not [o for o in overflow if " 0 events" not in o[0]], msg
                assert dups == 0, msg
                assert b["write_errors"] > 0 and b["memory_bytes"] <= 65536, msg
            finally:
                ep.stop()
                await hub.client.close()


# -- commands: dedupe across restart, expiry, ack buffered while the hub is away ------------------


async def _publish(broker: Mosquitto, topic: str, payload: bytes, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"t-{uuid.uuid4().hex[:6]}") as c:
        await c.publish(topic, payload, qos=1, retain=retain)


async def test_commands_deduplicated_across_restart_expired_acked_ack_buffered(
    tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim
) -> None:
    acks: list[wire.Ack] = []
    with short_dir() as d:
        yaml = edge_yaml(mosquitto.port, tmp_path / "edge", d / "edge.sock", cabinet.tcp_port)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="ack-watch") as watch:
            await watch.subscribe(TOPICS.gateway(GW, Kind.ACK), qos=1)

            async def collect() -> None:
                async for m in watch.messages:
                    acks.append(wire.decode_ack(m.payload))  # type: ignore[arg-type]

            collector = asyncio.create_task(collect())
            # This test plays the hub: its retained status says online.
            await _publish(mosquitto, TOPICS.hub_status(), wire.encode_status(
                wire.Status(online=True, session=1)), retain=True)
            far = int(time.time() * 1000) + 60_000
            cmd = wire.Command(id="c-dup", device="L-0001", point="level", value=30, expires_at_ms=far)
            try:
                async with in_process_edge(yaml, tmp_path / "edge.yaml") as edge:
                    await eventually(lambda: _true(edge.uplink.connected), 20)
                    await _publish(mosquitto, TOPICS.gateway(GW, Kind.CMD), wire.encode_command(cmd))
                    await eventually(lambda: _true(any(a.id == "c-dup" for a in acks)), 20)
                # Restarted daemon: the same command again (a hub resend) is not applied twice.
                async with in_process_edge(yaml, tmp_path / "edge.yaml") as edge:
                    await eventually(lambda: _true(edge.uplink.connected), 20)
                    await _publish(mosquitto, TOPICS.gateway(GW, Kind.CMD), wire.encode_command(cmd))
                    await eventually(lambda: _true(edge.counters.commands_duplicate == 1), 20)
                    # An expired command is not applied, and acknowledged `expired`.
                    old = wire.Command(id="c-old", device="L-0001", point="level", value=99, expires_at_ms=1)
                    await _publish(mosquitto, TOPICS.gateway(GW, Kind.CMD), wire.encode_command(old))
                    await eventually(lambda: _true(any(a.id == "c-old" for a in acks)), 20)
                    # The hub goes away: the ack of a command applied meanwhile waits in the buffer.
                    await _publish(mosquitto, TOPICS.hub_status(), wire.encode_status(
                        wire.Status(online=False, session=1)), retain=True)
                    await eventually(lambda: _true(edge.uplink.hub_online is False), 20)
                    late = wire.Command(id="c-late", device="L-0001", point="level", value=55,
                                        expires_at_ms=far)
                    await _publish(mosquitto, TOPICS.gateway(GW, Kind.CMD), wire.encode_command(late))
                    await eventually(lambda: _true(edge.buffer.counts()["acks"] == 1), 20)
                    assert not any(a.id == "c-late" for a in acks)
                    await _publish(mosquitto, TOPICS.hub_status(), wire.encode_status(
                        wire.Status(online=True, session=2)), retain=True)
                    await eventually(lambda: _true(any(a.id == "c-late" for a in acks)), 20)
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
    by_id: dict[str, list[str]] = {}
    for a in acks:
        by_id.setdefault(a.id, []).append(a.status.value)
    assert by_id["c-dup"] == ["ok"], by_id
    assert by_id["c-old"] == ["expired"], by_id
    assert by_id["c-late"] == ["ok"], by_id
    assert cabinet.cabinet.lamps[0].setpoint == 55


# -- fuzz the topics the edge reads --------------------------------------------------------------

_ODD = [None, True, -1, 0, 2**63, 2**64 - 1, -(2**63), 1.5, float("nan"), "", "x" * 300, b"\x00", [], {},
        [1, 2], {"a": 1}]
_CMD_KEYS = ["v", "id", "device", "point", "value", "expires_at", "priority", "source"]
MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
VALID_CMD = st.builds(
    lambda i, dev, pt, val, exp: msgpack.packb({"v": 1, "id": i, "device": dev, "point": pt, "value": val,
                                                "expires_at": exp}),
    st.text(min_size=1, max_size=8), st.sampled_from(["L-0001", "CAB-07", "nope", ""]),
    st.sampled_from(["level", "power", "door_open", "x"]), st.sampled_from([*_ODD, 30, 101, False]),
    st.sampled_from([1, 2**62, -5, int(time.time() * 1000) + 60_000]),
)
MUTATED = st.builds(
    lambda base, key, odd: msgpack.packb({**msgpack.unpackb(base), key: odd}), VALID_CMD,
    st.sampled_from(_CMD_KEYS), st.sampled_from(_ODD),
)
PAYLOADS = st.lists(
    st.one_of(st.binary(max_size=64), MSGPACK.map(lambda v: msgpack.packb(v)), VALID_CMD, MUTATED,
              st.builds(lambda b, i: b[:i], VALID_CMD, st.integers(0, 30))),
    min_size=20, max_size=60,
)


@pytest.fixture(scope="module")
def fuzz_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, EdgeProcess]]:
    """One broker, cabinet and edge process for every fuzz example."""
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(tmp / "broker").start()
    sim_ready: list[int] = []
    loop = asyncio.new_event_loop()
    sim = CabinetSim(lamps=4, port=0)
    loop.run_until_complete(sim.__aenter__())
    sim_ready.append(sim.tcp_port)
    # The simulator's server runs on that loop, driven by a thread.
    import threading
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with short_dir() as d:
        ep = EdgeProcess(tmp / "edge", edge_yaml(broker.port, tmp / "data", d / "edge.sock", sim.tcp_port),
                         d / "edge.sock")
        ep.start()
        try:
            yield broker, ep
        finally:
            ep.stop()
            broker.stop()
            asyncio.run_coroutine_threadsafe(sim.__aexit__(None, None, None), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=PAYLOADS, seed=st.integers(0, 2**32))
def test_fuzz_cmd_hub_status_and_plan_topics_no_crash_everything_counted(
    fuzz_edge: tuple[Mosquitto, EdgeProcess], payloads: list[bytes], seed: int
) -> None:
    broker, ep = fuzz_edge
    asyncio.run(_fuzz_once(broker, ep, payloads, random.Random(seed)))


async def _fuzz_once(broker: Mosquitto, ep: EdgeProcess, payloads: list[bytes], rnd: random.Random) -> None:
    before = (await ep.ask("status"))["counters"]
    plan_before = (await ep.ask("status"))["plan"]
    topics = [TOPICS.gateway(GW, Kind.CMD), TOPICS.hub_status(), TOPICS.plan(GW)]
    n_cmd = n_status = n_plan = 0
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"fz-{uuid.uuid4().hex[:6]}") as c:
        for p in payloads:
            r = rnd.random()
            topic = topics[0] if r < 0.7 else topics[1] if r < 0.85 else topics[2]
            n_cmd += topic == topics[0]
            n_status += topic == topics[1]
            n_plan += topic == topics[2]
            await c.publish(topic, p, qos=1)
        # The hub is online again at the end, whatever the fuzz said.
        await c.publish(topics[1], wire.encode_status(wire.Status(online=True, session=1)), qos=1)
    want = before["commands_received"] + before["commands_malformed"] + n_cmd

    async def counted() -> bool:
        st_ = await ep.ask("status")
        c = st_["counters"]
        return bool(c["commands_received"] + c["commands_malformed"] >= want
                    and st_["plan"]["plans_refused"] >= plan_before["plans_refused"] + n_plan)

    with contextlib.suppress(AssertionError):
        await eventually(counted, 30)
    st_ = await ep.ask("status")
    why = f"counters {st_['counters']}, before {before}, {n_cmd} commands sent; tasks {st_['tasks']}"
    assert ep.proc is not None and ep.proc.poll() is None, ep.log()
    c = st_["counters"]
    assert c["commands_received"] + c["commands_malformed"] == want, why
    # no fuzzed payload is a valid plan: each one refused and counted, no plan taken up
    assert st_["plan"]["plans_refused"] == plan_before["plans_refused"] + n_plan, st_["plan"]
    assert st_["plan"]["version"] is None, st_["plan"]
    assert all(t["restarts"] == 0 for t in st_["tasks"].values()), why + ep.log()[-2000:]
    assert st_["uplink"]["connected"], f"{st_['uplink']} {ep.log()[-2000:]}"


# -- supervision and the watchdog ---------------------------------------------------------------


async def test_crashing_bus_marks_devices_comm_error_daemon_and_other_bus_live(
    tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim
) -> None:
    with short_dir() as d:
        yaml = edge_yaml(mosquitto.port, tmp_path / "edge", d / "edge.sock", cabinet.tcp_port,
                         buffer="{wait_for_hub: false}")
        # A second bus to the same cabinet, whose driver has a bug: every read raises.
        yaml = yaml.replace("devices:\n", f"  - {{id: bug, driver: modbus, transport: tcp, host: 127.0.0.1, "
                            f"port: {cabinet.tcp_port}}}\ndevices:\n  - "
                            "{id: M-1, bus: bug, unit: 1, kind: meter, points: [{id: v, register: input, "
                            "address: 0, type: u16, interval_s: 0.2}]}\n", 1)
        path = tmp_path / "edge.yaml"
        path.write_text(yaml)
        edge = Edge(edge_config.load(path))
        factory = edge.pollers["bug"]._driver_factory

        def buggy() -> Any:
            driver = factory()

            async def boom(*args: Any) -> None:
                raise ZeroDivisionError("driver bug")

            driver.read_many = boom  # type: ignore[attr-defined]
            return driver

        edge.pollers["bug"]._driver_factory = buggy
        task = asyncio.create_task(edge.run())
        try:
            await eventually(lambda: _true(edge.tasks.get("poller-bug") is not None
                                           and edge.tasks["poller-bug"].restarts >= 2), 20)
            status = await edge.op_status({})
            dev = {x["id"]: x for x in status["devices"]}
            assert dev["M-1"]["health"] == "comm_error", dev["M-1"]
            assert "poller crashed" in dev["M-1"]["last_error"] and "driver bug" in dev["M-1"]["last_error"]
            # The other bus and the uplink carry on.
            await eventually(lambda: _true(dev_ok(edge, "L-0001")), 20)
            n = edge.counters.samples_published
            await eventually(lambda: _true(edge.counters.samples_published > n), 20)
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            edge.buffer.close()


def dev_ok(edge: Edge, dev: str) -> bool:
    return edge.devices[dev].health.value == "ok"


async def test_watchdog_pings_while_healthy_not_when_a_poller_stalls(
    tmp_path: Path, mosquitto: Mosquitto, cabinet: CabinetSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    with short_dir() as d:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(d / "notify"))
        notify.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(d / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yaml = edge_yaml(mosquitto.port, tmp_path / "edge", d / "edge.sock", cabinet.tcp_port)

        def received() -> list[str]:
            out = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    out.append(notify.recv(4096).decode())
            return out

        try:
            async with in_process_edge(yaml, tmp_path / "edge.yaml") as edge:
                await asyncio.sleep(1.5)
                got = received()
                assert any(m.startswith("READY=1") for m in got), got
                assert got.count("WATCHDOG=1") >= 3, got
                # A poller whose loop stopped turning (a hung driver call) stops the pings.
                edge.stall_min_s = 0.5

                async def hang(driver: Any) -> None:
                    await asyncio.sleep(3600)

                hung = asyncio.create_task(edge.pollers["cab"].call(hang))
                await asyncio.sleep(1.0)
                received()
                await asyncio.sleep(1.0)
                assert "WATCHDOG=1" not in received()
                hung.cancel()
        finally:
            notify.close()


# -- the technician's view, with no network -----------------------------------------------------


async def test_buffer_cli_works_offline_and_shows_the_backlog(
    tmp_path: Path, cabinet: CabinetSim, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker import free_port

    from edge import cli

    with short_dir() as d:
        # Nothing listens on the broker port: the street runs, the buffer fills.
        yaml = edge_yaml(free_port(), tmp_path / "edge", d / "edge.sock", cabinet.tcp_port)
        async with in_process_edge(yaml, tmp_path / "edge.yaml") as edge:
            await eventually(lambda: _true(len(edge.buffer) >= 3), 20)
            rc = await asyncio.to_thread(cli.main, ["buffer", "--socket", str(d / "edge.sock")])
            out = capsys.readouterr().out
            assert rc == 0, out
            assert "DISCONNECTED" in out and "buffered" in out and "oldest" in out, out
            rc = await asyncio.to_thread(cli.main, ["buffer", "--socket", str(d / "edge.sock"), "--json"])
            b = json.loads(capsys.readouterr().out)
            assert b["messages"] >= 3 and b["samples"] > 0 and b["disk_ok"] and b["oldest_age_s"] >= 0, b
            assert b["replay"]["state"] == "disconnected" and b["dropped_messages"] == 0, b


async def test_hub_counts_a_replayed_event_as_replay_not_clock_skew(tmp_path: Path, mosquitto: Mosquitto) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto))
    try:
        old = int(time.time() * 1000) - 3_600_000  # an alarm raised an hour ago, during an outage
        ev = wire.Event(seq=7, ts_ms=old, device="CAB-07", kind="door_open", severity="alarm", historical=True)
        await _publish(mosquitto, TOPICS.gateway(GW, Kind.EVENT), wire.encode_event(ev))

        async def seen() -> bool:
            status, body = await hub.get(f"/gateways/{GW}")
            return status == 200 and body["replay"]["messages_total"] == 1

        await eventually(seen, 10)
        g = await gateway_json(hub)
        assert not g["clock_skew"] and g["clock_offset_ms"] is None, g
        assert g["replay"]["newest_ts_ms"] == old, g
    finally:
        await hub.client.close()


async def test_a_cancellation_swallowed_inside_the_driver_still_stops_the_poller(
    tmp_path: Path, cabinet: CabinetSim
) -> None:
    """pymodbus waits with asyncio.wait_for, which on Python 3.11 returns an answer that lands
    with the cancellation and swallows it: the poller must stop anyway (the daemon must stop)."""
    with short_dir() as sock_dir:
        path = tmp_path / "edge.yaml"
        path.write_text(edge_yaml(1, tmp_path / "data", sock_dir / "e.sock", cabinet.tcp_port))
        edge = Edge(edge_config.load(path))
    poller = edge.pollers["cab"]
    real_factory = poller._driver_factory
    in_read = asyncio.Event()
    swallowed = 0

    def factory() -> Any:
        driver = real_factory()
        read_many = driver.read_many  # type: ignore[attr-defined]

        async def swallowing_read_many(reqs: Any) -> Any:
            nonlocal swallowed
            if poller.reads_total >= 3 and not swallowed:
                in_read.set()
                try:
                    await asyncio.sleep(30)  # the answer is on its way when the cancel comes
                except asyncio.CancelledError:
                    swallowed += 1  # as wait_for does: the answer is returned, the cancel lost
            return await read_many(reqs)

        driver.read_many = swallowing_read_many  # type: ignore[attr-defined]
        return driver

    poller._driver_factory = factory
    task = asyncio.create_task(poller.run())
    async with asyncio.timeout(20):
        await in_read.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a poller that ignored the cancel would poll forever
            await task
    assert swallowed == 1 and not poller.running
