"""The shipped Mosquitto ACL: a gateway publishes and subscribes only under its own topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
USERS = {"citynerve-hub": "hub-secret", "cab-01": "secret-1", "cab-02": "secret-2"}


@pytest.fixture
def secured_broker(tmp_path: Path):
    broker = Mosquitto(
        tmp_path / "broker", users=USERS, acl=(ROOT / "configs/mosquitto/citynerve.acl").read_text()
    ).start()
    try:
        yield broker
    finally:
        broker.stop()


def client(broker: Mosquitto, user: str, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, username=user, password=password or USERS[user], identifier=f"t-{user}"
    )


async def received(c: aiomqtt.Client, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []

    async def collect() -> None:
        async for m in c.messages:
            got.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]

    try:
        await asyncio.wait_for(collect(), seconds)
    except TimeoutError:
        pass
    return got


async def test_gateway_cannot_publish_as_another_gateway(secured_broker: Mosquitto) -> None:
    async with client(secured_broker, "citynerve-hub") as hub, client(secured_broker, "cab-01") as gw:
        await hub.subscribe("cn/v1/gw/+/data", qos=1)
        await gw.publish("cn/v1/gw/cab-01/data", b"own", qos=1)
        await gw.publish("cn/v1/gw/cab-02/data", b"forged", qos=1)
        await gw.publish("cn/v1/gw/cab-01/cmd", b"self-command", qos=1)
        got = await received(hub, 1.0)
    assert got == [("cn/v1/gw/cab-01/data", b"own")]


async def test_gateway_reads_only_its_own_commands(secured_broker: Mosquitto) -> None:
    async with client(secured_broker, "citynerve-hub") as hub, client(secured_broker, "cab-01") as gw:
        await gw.subscribe("cn/v1/gw/+/cmd", qos=1)
        await gw.subscribe("cn/v1/hub/status", qos=1)
        await asyncio.sleep(0.1)
        await hub.publish("cn/v1/gw/cab-01/cmd", b"for-1", qos=1)
        await hub.publish("cn/v1/gw/cab-02/cmd", b"for-2", qos=1)
        await hub.publish("cn/v1/hub/status", b"hub", qos=1)
        got = await received(gw, 1.0)
    assert sorted(got) == [("cn/v1/gw/cab-01/cmd", b"for-1"), ("cn/v1/hub/status", b"hub")]


async def test_wrong_password_is_refused(secured_broker: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(secured_broker, "cab-01", password="wrong"):
            pass
