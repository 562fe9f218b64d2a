"""The hub's one broker connection: reconnect loop, subscriptions, hub status, publish, acks."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wire import EDGE_PUBLISHES, Status, Topics, encode_status

from .config import MqttSettings
from .counters import Counters

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
# MQTT 5 CONNACK 0x84 / MQTT 3.1.1 CONNACK 1: unsupported protocol version.
_UNSUPPORTED_PROTOCOL = {1, 0x84}


class BrokerUnavailable(Exception):
    """The hub is not connected to the broker right now."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received message and what is needed to acknowledge it after it is stored."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    conn: int  # connection generation: acks only go back on the connection that received it


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    return random.uniform(BACKOFF_MIN_S, min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt))


class MqttLink:
    """Owns the connection; received messages go to ``queue``; ``publish`` sends commands."""

    def __init__(
        self,
        settings: MqttSettings,
        password: str | None,
        queue: asyncio.Queue[Incoming],
        counters: Counters,
    ) -> None:
        self._s = settings
        self._password = password
        self._queue = queue
        self._counters = counters
        self.topics = Topics(settings.topic_root)
        self.connected = asyncio.Event()
        # Set when a command ack is queued: the ingest writer cuts its group-commit wait short.
        self.urgent = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._v5 = settings.protocol == "5"
        self.protocol = settings.protocol
        # Until one connection succeeds we do not know whether the broker speaks MQTT 5:
        # some brokers (amqtt) never answer an MQTT 5 CONNECT instead of refusing it.
        self._protocol_known = settings.protocol != "5"

    def _make_client(self) -> aiomqtt.Client:
        s = self._s
        will = aiomqtt.Will(self.topics.hub_status(), encode_status(Status(online=False)), qos=1, retain=True)
        common = {
            "hostname": s.host,
            "port": s.port,
            "username": s.username,
            "password": self._password,
            "identifier": s.client_id,
            "keepalive": s.keepalive_s,
            "will": will,
            # Unbounded on purpose: with manual acks a message aiomqtt discards is never acked,
            # its Receive Maximum slot leaks and ingest stalls until a reconnect. Mosquitto 2.0.11
            # (Debian 12) sends past Receive Maximum once acks flow, so the bound is the broker's
            # flow control; run() warns when a broker overshoots it.
            "max_queued_incoming_messages": 0,
            "logger": logging.getLogger("hub.mqtt.client"),
            # Commands and acks are tiny: send them now, not after Nagle's delayed-ACK wait.
            "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        }
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            # Back-pressure: the broker sends at most this many unacknowledged QoS 1 messages,
            # so the bounded queues can never overflow (we ack only after storing).
            props.ReceiveMaximum = self._queue.maxsize
            client = aiomqtt.Client(
                **common,  # type: ignore[arg-type]
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
            )
        else:
            client = aiomqtt.Client(
                **common,  # type: ignore[arg-type]
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False,
            )
        # Ack QoS 1 messages only once they are stored (at-least-once; ingest is idempotent).
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, subscribe and receive until cancelled; reconnect with backoff."""
        attempt = 0
        failing = False
        while True:
            client = self._make_client()
            try:
                async with client:
                    self._protocol_known = True
                    self._generation += 1
                    self._client = client
                    for kind in EDGE_PUBLISHES:
                        await client.subscribe(self.topics.all_gateways(kind), qos=1)
                    await client.publish(
                        self.topics.hub_status(),
                        encode_status(Status(online=True, ts_ms=int(time.time() * 1000))),
                        qos=1,
                        retain=True,
                    )
                    self.connected.set()
                    attempt = 0
                    if failing:
                        log.info("broker %s:%d: recovered", self._s.host, self._s.port)
                    else:
                        log.info(
                            "broker %s:%d: connected as %s (user %s, MQTT %s)",
                            self._s.host,
                            self._s.port,
                            self._s.client_id,
                            self._s.username or "-",
                            self.protocol,
                        )
                    failing = False
                    gen = self._generation
                    messages = client.messages
                    window = self._queue.maxsize
                    overshoot_warned = False
                    async for m in messages:
                        topic = str(m.topic)
                        await self._queue.put(
                            Incoming(topic, bytes(m.payload), m.mid, m.qos, gen)  # type: ignore[arg-type]
                        )
                        if topic.endswith("/ack"):
                            self.urgent.set()
                        if not overshoot_warned and len(messages) > window:
                            overshoot_warned = True
                            self._counters.inc("mqtt.receive_maximum_exceeded")
                            log.warning(
                                "broker %s:%d sends beyond Receive Maximum %d (%d messages "
                                "waiting); buffering them (known Mosquitto 2.0.x behaviour)",
                                self._s.host, self._s.port, window, len(messages) + window,
                            )
            except aiomqtt.MqttCodeError as err:
                if self._v5 and getattr(err.rc, "value", err.rc) in _UNSUPPORTED_PROTOCOL:
                    log.warning("broker refuses MQTT 5; falling back to MQTT 3.1.1")
                    self._v5, self.protocol = False, "3.1.1"
                    continue
                failing = self._lost(err, failing)
            except aiomqtt.MqttError as err:
                failing = self._lost(err, failing)
                if not self._protocol_known:
                    # No answer at all: alternate MQTT 5 and 3.1.1 until one connects.
                    self._v5 = not self._v5
                    self.protocol = "5" if self._v5 else "3.1.1"
                    log.info(
                        "broker %s:%d: next attempt with MQTT %s", self._s.host, self._s.port, self.protocol
                    )
            finally:
                self._client = None
                self.connected.clear()
            self._counters.inc("mqtt.reconnects")
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    def _lost(self, err: Exception, failing: bool) -> bool:
        if not failing:
            log.warning(
                "broker %s:%d: connection lost or refused: %s; retrying", self._s.host, self._s.port, err
            )
        return True

    def ack(self, messages: list[Incoming]) -> None:
        """Acknowledge stored QoS 1 messages (those of an older connection are redelivered)."""
        client = self._client
        if client is None:
            return
        gen = self._generation
        paho = client._client
        for m in messages:
            if m.qos and m.conn == gen:
                paho.ack(m.mid, m.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1; BrokerUnavailable when not connected."""
        client = self._client
        if client is None:
            raise BrokerUnavailable("not connected to the broker")
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=5)
        except aiomqtt.MqttError as err:
            raise BrokerUnavailable(str(err)) from err

    async def say_goodbye(self) -> None:
        """Publish the retained offline status before a graceful shutdown."""
        try:
            await self.publish(self.topics.hub_status(), encode_status(Status(online=False)), retain=True)
        except BrokerUnavailable:
            pass
