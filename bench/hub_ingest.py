"""Hub ingest throughput: the real hub vs a minimal MQTT -> msgpack -> SQLite consumer.

Many gateways' telemetry, pre-encoded with ``wire.encode_data``, is published QoS 1 into a
private Mosquitto while three persistent sessions are subscribed but disconnected, so the
broker holds the same backlog for each. Each consumer then connects alone and drains it:

* ``hub``      the real hub (create_app: MQTT link, ingest writer, registry, tortoise/SQLite),
               with its default ingest settings; the broker's max_inflight_messages equals
               the hub's ingest.queue_max (1000).
* ``minimal``  aiomqtt receive + msgpack decode + one ``executemany`` per drained batch into a
               SQLite file with the same schema and pragmas (WAL, synchronous=NORMAL), acks
               after commit (the baseline).
* ``mosquitto_sub``  the C client receiving the same messages to /dev/null (transport ceiling).

Draining a backlog takes the publisher out of the measurement; its own rate into the broker
is reported too. Samples/s is counted from the first data message received to the last sample stored.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
import aiomqtt
import msgpack
import paho.mqtt.client as paho
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import wire
from hub.app import create_app
from hub.config import HubSettings
from hub.keys import COUNTERS, LINK, STORAGE

ROOT = "cn/v1"
TOPICS = wire.Topics(ROOT)
QUEUE_MAX = HubSettings().ingest.queue_max
DEVICES_PER_GW = 10
POINTS_PER_DEVICE = 10  # 100 points per gateway


def birth(gw: str) -> bytes:
    """A gateway declaring DEVICES_PER_GW lamps of POINTS_PER_DEVICE float points."""
    pts = tuple(wire.PointInfo(id=f"p{j}", type=wire.PointType.FLOAT) for j in range(POINTS_PER_DEVICE))
    devs = tuple(
        wire.DeviceInfo(id=f"{gw}-L{i:02d}", kind="lamp", driver="modbus", points=pts)
        for i in range(DEVICES_PER_GW)
    )
    return wire.encode_birth(wire.Birth(session=1, software_version="bench", config_hash="x",
                                        ts_ms=0, devices=devs))


def data_messages(gateways: int, samples_total: int, per_msg: int) -> list[tuple[str, bytes]]:
    """Data messages round-robin over gateways; each gateway's points in turn, values changing."""
    out: list[tuple[str, bytes]] = []
    seq = [0] * gateways
    ts0 = 1_700_000_000_000
    points = [(f"L{i:02d}", f"p{j}") for i in range(DEVICES_PER_GW) for j in range(POINTS_PER_DEVICE)]
    cursor = [0] * gateways
    n = 0
    g = 0
    while n < samples_total:
        gw = f"gw{g:03d}"
        samples: list[wire.Sample] = []
        for _ in range(per_msg):
            k = cursor[g]
            dev, pt = points[k % len(points)]
            samples.append((f"{gw}-{dev}", pt, ts0 + k, float(k % 1000) / 10, "good"))
            cursor[g] = k + 1
        seq[g] += 1
        out.append((TOPICS.gateway(gw, wire.Kind.DATA), wire.encode_data(wire.Data(seq[g], samples))))
        n += per_msg
        g = (g + 1) % gateways
    return out


# -- sessions and the publisher --------------------------------------------------------------


# The hub's default MQTT protocol (docs/hub.md): its persistent session is made with the same.
HUB_PROTOCOL = HubSettings.model_fields["mqtt"].default_factory().protocol  # type: ignore[misc]


def make_session(port: int, client_id: str, topics: list[str], v5: bool) -> None:
    """Create a persistent session subscribed to topics, then leave (the broker queues for it)."""
    if v5:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                        protocol=paho.MQTTv311)
        c.connect("127.0.0.1", port)
    c.loop_start()
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe([(t, 1) for t in topics])
    if not done.wait(5):
        raise RuntimeError(f"session {client_id}: no SUBACK")
    c.disconnect()
    c.loop_stop()


def publish_all(port: int, messages: list[tuple[str, bytes]], retain: bool = False) -> float:
    """Publish QoS 1 as fast as paho goes (1000 in flight); seconds until the last PUBACK."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=paho.MQTTv311)
    c.max_inflight_messages_set(QUEUE_MAX)
    c.max_queued_messages_set(0)
    acked = 0
    done = threading.Event()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == len(messages):
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1, retain=retain)
    if not done.wait(300):
        raise RuntimeError(f"publisher: only {acked}/{len(messages)} acked")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return dt


# -- consumers -------------------------------------------------------------------------------


async def run_hub(port: int, workdir: Path, total: int) -> dict[str, Any]:
    """Start the real hub on the backlog; time from its first data message to the last sample stored."""
    settings = HubSettings.model_validate(
        {"data_dir": str(workdir / "hub"),
         "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "bench-hub", "protocol": HUB_PROTOCOL},
         "http": {"port": 0}, "log_level": "WARNING"}
    )
    app = create_app(settings)
    runner = web.AppRunner(app)
    cpu0 = time.process_time()
    await runner.setup()  # runs the cleanup_ctx: database, registry, ingest, dispatcher
    counters = app[COUNTERS]
    try:
        await asyncio.wait_for(app[LINK].connected.wait(), 10)
        t_first = n_first = None
        last_n, last_change = -1, time.monotonic()
        while True:
            n = counters.get("stored.samples")
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            now = time.perf_counter()
            if t_first is None and counters.get("received.data"):
                t_first, n_first, cpu_first = now, n, time.process_time()
            if n >= total:
                break
            if time.monotonic() - last_change > 20:
                raise RuntimeError(f"hub stalled: stored {n}/{total} samples, none for 20 s"
                                   f" (counters {counters.snapshot()})")
            await asyncio.sleep(0.005)
        cpu = time.process_time() - cpu_first
        assert t_first is not None and n_first is not None
        rows = await app[STORAGE].count_samples()
    finally:
        await runner.cleanup()
    if rows != total:
        raise RuntimeError(f"hub: {rows} rows in the sample table, expected {total}")
    dt = now - t_first
    return {"samples": total, "seconds": dt, "samples_per_s": (total - n_first) / dt,
            "cpu_s": cpu, "setup_cpu_s": cpu_first - cpu0,
            "duplicates": counters.get("duplicate.data"), "errors": counters.get("errors.store")}


MIN_DDL = """
CREATE TABLE IF NOT EXISTS sample (point_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
                                   value REAL, quality SMALLINT NOT NULL);
CREATE INDEX IF NOT EXISTS sample_point_ts ON sample (point_id, ts_ms);
"""


async def run_minimal(port: int, workdir: Path, total: int) -> dict[str, Any]:
    """The baseline: receive, decode, executemany per drained batch, commit, then ack."""
    db = sqlite3.connect(workdir / "minimal.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(MIN_DDL)
    ids: dict[tuple[str, str], int] = {}
    client = aiomqtt.Client("127.0.0.1", port, identifier="bench-min", clean_session=False,
                            protocol=aiomqtt.ProtocolVersion.V311,
                            max_queued_incoming_messages=0)  # see hub/mqtt.py: Mosquitto 2.0.11
    client._client.manual_ack_set(True)
    stored = 0
    t_first = n_first = None
    cpu_first = 0.0
    async with client:
        await client.subscribe(TOPICS.all_gateways(wire.Kind.DATA), qos=1)
        it = client.messages.__aiter__()
        ack = client._client.ack
        while stored < total:
            batch = [await it.__anext__()]
            if t_first is None:
                t_first, n_first, cpu_first = time.perf_counter(), 0, time.process_time()
            while len(client.messages) and len(batch) < QUEUE_MAX:
                batch.append(await it.__anext__())
            rows = []
            for m in batch:
                body = msgpack.unpackb(m.payload, raw=False)
                for dev, pt, ts, v, _q in body["samples"]:
                    pid = ids.get((dev, pt))
                    if pid is None:
                        pid = ids[(dev, pt)] = len(ids) + 1
                    rows.append((pid, ts, v, 0))
            db.execute("BEGIN")
            db.executemany("INSERT INTO sample VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            for m in batch:
                ack(m.mid, m.qos)
            stored += len(rows)
    dt = time.perf_counter() - (t_first or 0.0)
    cpu = time.process_time() - cpu_first
    rows_in_db = db.execute("SELECT count(*) FROM sample").fetchone()[0]
    db.close()
    if rows_in_db != total:
        raise RuntimeError(f"minimal: {rows_in_db} rows, expected {total}")
    return {"samples": total, "seconds": dt, "samples_per_s": (total - (n_first or 0)) / dt,
            "cpu_s": cpu}


def run_mosquitto_sub(port: int, messages: int, per_msg: int) -> dict[str, Any] | None:
    """The C client draining the same backlog to /dev/null: the transport ceiling."""
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        return None
    t0 = time.perf_counter()
    subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), "-i", "bench-sub", "-c", "-q", "1",
         "-t", TOPICS.all_gateways(wire.Kind.DATA), "-C", str(messages), "-W", "300"],
        stdout=subprocess.DEVNULL, check=True,
    )
    dt = time.perf_counter() - t0
    return {"samples": messages * per_msg, "seconds": dt, "samples_per_s": messages * per_msg / dt}


# -- one scenario ------------------------------------------------------------------------------


def scenario(per_msg: int, samples_total: int, gateways: int) -> dict[str, Any]:
    """One message size: fill the three sessions' backlog, then drain each consumer alone."""
    tmp = Path(tempfile.mkdtemp(prefix="cn-bench-ingest-"))
    messages = data_messages(gateways, samples_total, per_msg)
    births = [(TOPICS.gateway(f"gw{g:03d}", wire.Kind.BIRTH), birth(f"gw{g:03d}")) for g in range(gateways)]
    try:
        with _common.Broker(tmp / "broker", max_inflight=QUEUE_MAX) as broker:
            hub_topics = [TOPICS.all_gateways(k) for k in wire.EDGE_PUBLISHES]
            make_session(broker.port, "bench-hub", hub_topics, v5=HUB_PROTOCOL == "5")
            make_session(broker.port, "bench-min", [TOPICS.all_gateways(wire.Kind.DATA)], v5=False)
            make_session(broker.port, "bench-sub", [TOPICS.all_gateways(wire.Kind.DATA)], v5=False)
            publish_all(broker.port, births, retain=True)
            pub_s = publish_all(broker.port, messages)
            publisher = {"samples": samples_total, "seconds": pub_s,
                         "samples_per_s": samples_total / pub_s}
            hub = asyncio.run(run_hub(broker.port, tmp, samples_total))
            minimal = asyncio.run(run_minimal(broker.port, tmp, samples_total))
            sub = run_mosquitto_sub(broker.port, len(messages), per_msg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"samples_per_message": per_msg, "messages": len(messages), "gateways": gateways,
            "hub": hub, "minimal": minimal, "publisher": publisher, "mosquitto_sub": sub,
            "hub_vs_minimal": hub["samples_per_s"] / minimal["samples_per_s"]}


def main() -> int:
    """Run both message sizes and print the table."""
    args = _common.parser(__doc__).parse_args()
    sizes = [(100, 40_000 if args.quick else 600_000), (10, 10_000 if args.quick else 200_000)]
    gateways = 50
    results = [scenario(per, total, gateways) for per, total in sizes]
    rows = []
    for r in results:
        base = r["minimal"]["samples_per_s"]
        for name in ("hub", "minimal", "publisher", "mosquitto_sub"):
            m = r[name]
            if m is None:
                continue
            cpu_us = m["cpu_s"] / m["samples"] * 1e6 if "cpu_s" in m else None
            rows.append([f"{r['samples_per_message']}/msg {name}", m["samples"], m["seconds"],
                         m["samples_per_s"], m["samples_per_s"] / base,
                         "-" if cpu_us is None else f"{cpu_us:.2f}"])
    print(_common.table(["consumer", "samples", "s", "samples/s", "x minimal", "cpu us/sample"], rows))
    ok = all(r["hub_vs_minimal"] >= 0.6 for r in results)
    print(f"target hub >= 0.60 x minimal: {'met' if ok else 'NOT met'} "
          "(" + ", ".join(f"{r['hub_vs_minimal']:.2f}" for r in results) + ")")
    if args.json:
        print("wrote", _common.save("hub_ingest", {"quick": args.quick, "target_met": ok,
                                                   "scenarios": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
