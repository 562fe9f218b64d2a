"""The hub end to end: a real Mosquitto, a fake gateway over aiomqtt, the REST API, SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import Mosquitto
from hubtest import Hub, _auth, _settings, eventually, start_hub

from hub.keys import STORAGE
from wire import (
    Ack,
    AckStatus,
    Birth,
    Data,
    DeviceInfo,
    Event,
    Kind,
    PointInfo,
    PointType,
    Status,
    Topics,
    decode_command,
    encode_ack,
    encode_birth,
    encode_data,
    encode_event,
    encode_status,
)

TOPICS = Topics()
GW = "gw-01"


@pytest.fixture
async def hub(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Hub]:
    """A hub on a fresh database."""
    h = await start_hub(_settings(tmp_path, mosquitto))
    try:
        yield h
    finally:
        await h.client.close()


@pytest.fixture
async def gateway(mosquitto: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    """A fake gateway's MQTT connection."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=GW) as c:
        yield c


BIRTH = Birth(
    session=1, software_version="0.1.0", config_hash="abc", ts_ms=1,
    devices=(
        DeviceInfo("L-0001", "lamp", "dali", (
            PointInfo("level", PointType.FLOAT, "%", 0, 100, writable=True),
            PointInfo("power", PointType.FLOAT, "W"),
            PointInfo("on", PointType.BOOL, writable=True),
        )),
    ),
)


async def pub(c: aiomqtt.Client, kind: Kind, payload: bytes, gw: str = GW) -> None:
    """Publish as a gateway would (QoS 1; status and birth retained)."""
    await c.publish(TOPICS.gateway(gw, kind), payload, qos=1,
                    retain=kind in (Kind.STATUS, Kind.BIRTH))


async def born(hub: Hub, c: aiomqtt.Client) -> None:
    """Bring the fake gateway online with its birth and wait for the registry."""
    await pub(c, Kind.STATUS, encode_status(Status(online=True, session=1)))
    await pub(c, Kind.BIRTH, encode_birth(BIRTH))

    async def ready() -> bool:
        s, body = await hub.get("/devices/L-0001/points")
        return s == 200 and len(body["items"]) == 3

    await eventually(ready)


async def counter(hub: Hub, name: str) -> int:
    """One ingest counter."""
    _, body = await hub.get("/stats")
    return int(body["counters"].get(name, 0))


async def test_registry_latest_history_and_dedupe(hub: Hub, gateway: aiomqtt.Client) -> None:
    await born(hub, gateway)
    t0 = 1_700_000_000_000
    d1 = Data(seq=1, samples=[("L-0001", "level", t0, 40.0, "good"),
                              ("L-0001", "power", t0, 12.5, "good"),
                              ("L-0001", "on", t0, True, "good")])
    d2 = Data(seq=2, samples=[("L-0001", "level", t0 + 60_000, 70, "stale")])
    for d in (d1, d1, d2):  # seq 1 twice: stored once
        await pub(gateway, Kind.DATA, encode_data(d))

    async def stored() -> bool:
        return await counter(hub, "stored.data") == 2 and await counter(hub, "duplicate.data") == 1

    await eventually(stored)
    status, gws = await hub.get("/gateways")
    assert status == 200
    [gw] = gws["items"]
    assert gw["id"] == GW and gw["online"] is True and gw["sw_version"] == "0.1.0"
    assert gw["last_seq"] == 2 and gw["devices"] == 1
    _, devs = await hub.get("/devices", kind="lamp", gateway=GW)
    assert [d["id"] for d in devs["items"]] == ["L-0001"]
    _, none = await hub.get("/devices", kind="meter")
    assert none["items"] == []
    _, pts = await hub.get("/devices/L-0001/points")
    by = {p["id"]: p for p in pts["items"]}
    assert by["level"]["value"] == 70.0 and by["level"]["unit"] == "%"
    assert by["level"]["quality"] == "stale" and by["level"]["ts_ms"] == t0 + 60_000
    assert by["level"]["ts"] == "2023-11-14T22:14:20.000Z"
    assert by["power"]["value"] == 12.5 and by["power"]["unit"] == "W"
    assert by["on"]["value"] is True
    _, hist = await hub.get("/telemetry", device="L-0001", point="level",
                            **{"from": str(t0), "to": "2023-11-14T22:14:20.000Z"})
    assert [i["value"] for i in hist["items"]] == [70.0, 40.0]  # newest first
    _, hist = await hub.get("/telemetry", device="L-0001", point="level", order="asc",
                            **{"from": str(t0 + 1), "to": str(t0 + 60_000)})
    assert [i["ts_ms"] for i in hist["items"]] == [t0 + 60_000]
    assert await hub.app[STORAGE].count_samples() == 4
    status, err = await hub.get("/telemetry", device="L-0001", point="level", limit="lots")
    assert status == 400 and err["error"]["code"] == "invalid_parameter"
    assert "limit" in err["error"]["message"]
    status, err = await hub.get("/telemetry", device="L-0001", point="level", **{"from": "soon"})
    assert status == 400 and "from" in err["error"]["message"]


async def test_malformed_dropped_undeclared_kept_events_stored(
    hub: Hub, gateway: aiomqtt.Client
) -> None:
    await born(hub, gateway)
    for kind in (Kind.STATUS, Kind.BIRTH, Kind.DATA, Kind.EVENT, Kind.ACK):
        await pub(gateway, kind, b"\xc1 not msgpack")
    await gateway.publish("cn/v1/gw/bad@id/data", b"x", qos=1)
    await pub(gateway, Kind.DATA, encode_data(Data(seq=5, samples=[
        ("L-0001", "temp", 1000, 41.5, "good"), ("X-9", "count", 1000, 3, "good")])))
    await pub(gateway, Kind.EVENT, encode_event(Event(
        seq=6, ts_ms=2000, device="L-0001", kind="lamp_failure", severity="alarm")))

    async def done() -> bool:
        return await counter(hub, "stored.event") == 1

    await eventually(done)
    for kind in ("status", "birth", "data", "event", "ack", "topic"):
        assert await counter(hub, f"malformed.{kind}") == 1, kind
    assert await counter(hub, "undeclared.point") == 2
    assert await counter(hub, "undeclared.device") == 1
    _, pts = await hub.get("/devices/L-0001/points")
    temp = next(p for p in pts["items"] if p["id"] == "temp")
    assert temp["declared"] is False and temp["value"] == 41.5
    _, dev = await hub.get("/devices/X-9")
    assert dev["declared"] is False and dev["points"][0]["value"] == 3
    assert dev["points"][0]["type"] == "int"
    _, evs = await hub.get("/events", device="L-0001", **{"from": "0"})
    [ev] = evs["items"]
    assert ev["kind"] == "lamp_failure" and ev["severity"] == "alarm" and ev["gateway"] == GW
    # A second birth from another gateway claiming L-0001 is refused.
    async with aiomqtt.Client(gateway._hostname, gateway._port, identifier="gw-02") as other:
        await pub(other, Kind.BIRTH, encode_birth(BIRTH), gw="gw-02")

        async def refused() -> bool:
            return await counter(hub, "conflict.device") == 1

        await eventually(refused)
    _, dev = await hub.get("/devices/L-0001")
    assert dev["gateway"] == GW


async def _next_cmd(c: aiomqtt.Client) -> Any:
    async for m in c.messages:
        return m
    raise AssertionError("no message")


async def test_command_ack_and_expiry(hub: Hub, gateway: aiomqtt.Client) -> None:
    await born(hub, gateway)
    await gateway.subscribe(TOPICS.gateway(GW, Kind.CMD), qos=1)
    status, cmd = await hub.post("/commands", {"device": "L-0001", "point": "level", "value": 55})
    assert status == 202 and cmd["status"] == "pending" and cmd["gateway_online"] is True
    m = await asyncio.wait_for(_next_cmd(gateway), 10)
    assert str(m.topic) == TOPICS.gateway(GW, Kind.CMD)
    wire_cmd = decode_command(bytes(m.payload))  # type: ignore[arg-type]
    assert (wire_cmd.id, wire_cmd.device, wire_cmd.point, wire_cmd.value) == (
        cmd["id"], "L-0001", "level", 55)
    assert wire_cmd.source.startswith("operator-")
    assert wire_cmd.expires_at_ms == cmd["expires_ms"]
    assert 29_000 <= wire_cmd.expires_at_ms - cmd["created_ms"] <= 30_000
    await pub(gateway, Kind.ACK, encode_ack(Ack(cmd["id"], AckStatus.OK, "applied", 5, 55.0)))

    async def acked() -> bool:
        _, c = await hub.get(f"/commands/{cmd['id']}")
        return bool(c["status"] == "acknowledged")

    await eventually(acked)
    _, c = await hub.get(f"/commands/{cmd['id']}")
    assert c["readback"] == 55.0 and c["detail"] == "applied" and c["acked_ms"] == 5
    # A rejected one keeps the edge's detail.
    _, cmd2 = await hub.post("/commands", {"device": "L-0001", "point": "on", "value": False})
    await asyncio.wait_for(_next_cmd(gateway), 10)
    await pub(gateway, Kind.ACK, encode_ack(Ack(cmd2["id"], AckStatus.REJECTED, "busy")))
    # Expiry without ack.
    _, cmd3 = await hub.post("/commands",
                             {"device": "L-0001", "point": "level", "value": 1, "ttl_s": 0.2})
    await asyncio.wait_for(_next_cmd(gateway), 10)

    async def expired() -> bool:
        _, c = await hub.get(f"/commands/{cmd3['id']}")
        return bool(c["status"] == "expired")

    await eventually(expired)
    _, c = await hub.get(f"/commands/{cmd2['id']}")
    assert (c["status"], c["detail"]) == ("rejected", "busy")
    _, c3 = await hub.get(f"/commands/{cmd3['id']}")
    assert c3["detail"] == "no ack before expiry"
    _, lst = await hub.get("/commands", device="L-0001", status="expired")
    assert [x["id"] for x in lst["items"]] == [cmd3["id"]]
    await pub(gateway, Kind.ACK, encode_ack(Ack(str(uuid.uuid4()), AckStatus.OK)))

    async def unknown() -> bool:
        return await counter(hub, "ack.unknown") == 1

    await eventually(unknown)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"device": "L-9999", "point": "level", "value": 1}, 404, "unknown_device"),
        ({"device": "L-0001", "point": "nope", "value": 1}, 404, "unknown_point"),
        ({"device": "L-0001", "point": "power", "value": 1}, 409, "point_not_writable"),
        ({"device": "L-0001", "point": "level", "value": 101}, 422, "out_of_range"),
        ({"device": "L-0001", "point": "level", "value": True}, 422, "invalid_value"),
        ({"device": "L-0001", "point": "on", "value": 1}, 422, "invalid_value"),
        ({"device": "L-0001", "point": "level", "value": 1, "ttl_s": 99999}, 422, "invalid_ttl"),
        ({"device": "L-0001", "point": "level"}, 400, "invalid_body"),
        ({"device": "L-0001", "point": "level", "value": 1, "x": 1}, 400, "invalid_body"),
    ],
)
async def test_command_validation_publishes_nothing(
    hub: Hub, gateway: aiomqtt.Client, body: dict[str, Any], status: int, code: str
) -> None:
    await born(hub, gateway)
    await gateway.subscribe(TOPICS.gateway(GW, Kind.CMD), qos=1)
    got, err = await hub.post("/commands", body)
    assert (got, err["error"]["code"]) == (status, code)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_next_cmd(gateway), 0.3)
    _, lst = await hub.get("/commands")
    assert lst["items"] == []


async def test_offline_gateway_still_accepts(hub: Hub, gateway: aiomqtt.Client) -> None:
    await born(hub, gateway)
    await pub(gateway, Kind.STATUS, encode_status(Status(online=False, session=1)))

    async def offline() -> bool:
        _, g = await hub.get(f"/gateways/{GW}")
        return g["online"] is False

    await eventually(offline)
    status, cmd = await hub.post("/commands", {"device": "L-0001", "point": "level", "value": 5})
    assert status == 202 and cmd["gateway_online"] is False and "offline" in cmd["warning"]


async def test_auth_roles_and_tokens(hub: Hub) -> None:
    c = hub.client
    r = await c.get("/api/v1/devices")
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert (await r.json())["error"]["code"] == "unauthenticated"
    r = await c.get("/api/v1/devices", headers=_auth("cnh_wrong"))
    assert r.status == 401
    status, err = await hub.post("/commands", {"device": "x", "point": "y", "value": 1}, "viewer")
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, _ = await hub.post("/commands", {"device": "x", "point": "y", "value": 1}, "operator")
    assert status == 404
    status, _ = await hub.get("/tokens", "operator")
    assert status == 403
    status, made = await hub.post("/tokens", {"name": "ops-2", "role": "viewer"}, "admin")
    assert status == 201 and made["token"].startswith("cnh_")
    status, dup = await hub.post("/tokens", {"name": "ops-2", "role": "viewer"}, "admin")
    assert (status, dup["error"]["code"]) == (409, "token_name_taken")
    r = await c.get("/api/v1/gateways", headers=_auth(made["token"]))
    assert r.status == 200
    _, lst = await hub.get("/tokens", "admin")
    assert "ops-2" in [t["name"] for t in lst["items"]]
    assert all("token" not in t and "token_hash" not in t for t in lst["items"])
    r = await c.delete(f"/api/v1/tokens/{made['id']}", headers=_auth(hub.tokens["admin"]))
    assert r.status == 204
    r = await c.get("/api/v1/gateways", headers=_auth(made["token"]))
    assert r.status == 401
    # Public endpoints and JSON errors everywhere.
    r = await c.get("/api/v1/health")
    health = await r.json()
    assert r.status == 200 and health["broker_connected"] is True
    r = await c.get("/api/v1/nope")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await c.put("/api/v1/health")
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    r = await c.post("/api/v1/commands", data=b"{oops", headers=_auth(hub.tokens["operator"]))
    body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "invalid_json"


async def test_openapi_matches_routes(hub: Hub) -> None:
    r = await hub.client.get("/api/v1/openapi.json")
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), "/api/v1" + p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (route.method, route.resource.canonical)
        for route in hub.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == served


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_restart_keeps_data(tmp_path: Path, mosquitto: Mosquitto, protocol: str) -> None:
    settings = _settings(tmp_path, mosquitto, mqtt={"host": mosquitto.host, "port": mosquitto.port,
                                                    "client_id": "hub-test", "protocol": protocol})
    first = await start_hub(settings)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=GW) as gw:
        await born(first, gw)
        await pub(gw, Kind.DATA, encode_data(Data(seq=1, samples=[
            ("L-0001", "level", 1000, 10.0, "good")])))
        await eventually(lambda: _stored(first))
        await first.client.close()
        # While the hub is away the broker keeps its session: nothing is lost.
        await pub(gw, Kind.DATA, encode_data(Data(seq=2, samples=[
            ("L-0001", "level", 2000, 20.0, "good")])))
        second = await start_hub(settings)
        try:
            async def both() -> bool:
                _, h = await second.get("/telemetry", device="L-0001", point="level",
                                        **{"from": "0", "to": "3000"})
                return len(h["items"]) == 2

            await eventually(both)
            _, pts = await second.get("/devices/L-0001/points")
            level = next(p for p in pts["items"] if p["id"] == "level")
            assert level["value"] == 20.0 and level["ts_ms"] == 2000
        finally:
            await second.client.close()


async def _stored(hub: Hub) -> bool:
    return await counter(hub, "stored.data") >= 1
