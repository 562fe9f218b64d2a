"""The hub's one broker connection: reconnect loop, subscriptions, hub status, publish, acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
# Packets one paho loop_read() may decode past the pause mark (it reads len(out + in) packets).
READ_SLACK = 16


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
    rx_ms: int = 0  # wall clock when the hub read it off the socket (clock-skew estimate)


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
        # Back-pressure on the socket: when aiomqtt's (unbounded, see _make_client) queue holds
        # ``_pause_at`` messages the socket reader is removed from the event loop, so paho reads
        # nothing more and TCP flow control holds the rest in the broker; it is put back at
        # ``_resume_at``. Memory is bounded whatever the broker does with Receive Maximum.
        self._pause_at = max(1, self._queue.maxsize)
        self._resume_at = self._pause_at // 2
        self._fd: int | None = None
        self._reader: Callable[[], None] | None = None
        self.paused = False
        self.backlog_peak = 0  # most messages held unacked in the hub's two queues at once

    @property
    def backlog_bound(self) -> int:
        """The most messages the two queues can hold: reading stops at ``_pause_at`` in aiomqtt's
        (give or take the packets of one socket read) and ours holds ``queue_max``."""
        return self._pause_at + self._queue.maxsize + READ_SLACK

    @property
    def backlog(self) -> int:
        """Messages received and not yet taken by the ingest writer (both queues)."""
        client = self._client
        return self._queue.qsize() + (len(client.messages) if client is not None else 0)

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
            # Not bounded here: with manual acks a message aiomqtt discards is never acked, its
            # Receive Maximum slot leaks and ingest stalls until a reconnect; and Mosquitto 2.0.11
            # (Debian 12) sends past Receive Maximum once acks flow. The bound is ours instead:
            # the reader stops reading the socket while this queue holds queue_max messages.
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
        self._own_reader(client)
        return client

    def _own_reader(self, client: aiomqtt.Client) -> None:
        """Take over the socket's read callback so that ``_pause``/``_resume`` can toggle it.

        aiomqtt registers a reader that calls paho's ``loop_read`` for as long as the socket is
        open; there is no option to stop reading. We register the same callback (its own, minus
        the TLS ``pending()`` loop: we speak plain TCP) under our control, after aiomqtt's.
        """
        paho = client._client
        loop = asyncio.get_running_loop()
        aiomqtt_open = paho.on_socket_open
        messages = client.messages
        pause_at = self._pause_at

        def read() -> None:
            try:
                paho.loop_read()
            except Exception as exc:  # a broken socket: handled as aiomqtt does
                disconnected = client._disconnected
                if not disconnected.done():
                    disconnected.set_exception(exc)
                return
            # Checked here, not only where run() takes messages: run() may be blocked on a
            # full ingest queue while the socket keeps delivering.
            if len(messages) >= pause_at:
                self._pause()

        def adopt(fd: int) -> None:
            # Runs on the loop after aiomqtt's add_reader (call_soon_threadsafe keeps order).
            self._fd, self._reader, self.paused = fd, read, False
            loop.remove_reader(fd)
            loop.add_reader(fd, read)

        def opened(c: Any, userdata: Any, sock: Any) -> None:
            aiomqtt_open(c, userdata, sock)  # type: ignore[misc]
            loop.call_soon_threadsafe(adopt, sock.fileno())

        paho.on_socket_open = opened

    def _pause(self) -> None:
        if self.paused or self._fd is None:
            return
        asyncio.get_running_loop().remove_reader(self._fd)
        self.paused = True
        self._counters.inc("mqtt.reader_paused")

    def _resume(self) -> None:
        if not self.paused or self._fd is None or self._reader is None:
            return
        asyncio.get_running_loop().add_reader(self._fd, self._reader)
        self.paused = False

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
                    # Consume before subscribing: a persistent session's backlog arrives right
                    # after CONNACK, and once the reader pauses on it the SUBACK could never be
                    # read if nobody took messages yet.
                    consumer = asyncio.create_task(self._consume(client, self._generation),
                                                   name="hub-mqtt-consume")
                    try:
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
                        await consumer
                    finally:
                        consumer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await consumer
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
                self._fd = self._reader = None
                self.paused = False
                self.connected.clear()
            self._counters.inc("mqtt.reconnects")
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _consume(self, client: aiomqtt.Client, gen: int) -> None:
        """Move received messages into the ingest queue; pause/resume the socket reader."""
        messages = client.messages
        queue = self._queue
        pause_at, resume_at = self._pause_at, self._resume_at
        async for m in messages:
            topic = str(m.topic)
            await queue.put(
                Incoming(topic, bytes(m.payload), m.mid, m.qos, gen,  # type: ignore[arg-type]
                         int(time.time() * 1000))
            )
            if topic.endswith("/ack"):
                self.urgent.set()
            waiting = len(messages)
            held = waiting + queue.qsize()
            if held > self.backlog_peak:
                self.backlog_peak = held
            if waiting >= pause_at:
                self._pause()
            elif waiting <= resume_at and self.paused:
                self._resume()

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
