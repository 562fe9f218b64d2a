"""The MQTT uplink: retained birth and status (with last will), QoS 1 publishing, commands in.

Reconnection is one explicit loop in :meth:`Uplink.run`. A message being published keeps its
``seq`` across reconnects, so the hub's ``(gateway, seq)`` dedupe makes a resend harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import aiomqtt

import wire
from wire import Ack, Command, Kind

from .backoff import Backoff
from .config import EdgeConfig
from .outbox import Outbox, PendingEvent
from .seqstore import SeqStore
from .state import Counters, now_ms

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "citynerve-edge 0.1.0"


def read_secret(env_name: str, file: Path | None) -> str | None:
    """The broker password: systemd credential, file, or environment variable, in that order."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "mqtt_password").is_file():
        return (Path(cred_dir) / "mqtt_password").read_text().strip()
    if file is not None:
        return file.read_text().strip()
    return os.environ.get(env_name) or None


def birth_message(config: EdgeConfig, session: int) -> wire.Birth:
    """Describe this gateway's devices and points for the hub's registry."""
    return wire.Birth(
        session=session,
        software_version=SOFTWARE_VERSION,
        config_hash=config.config_hash,
        ts_ms=now_ms(),
        devices=tuple(
            wire.DeviceInfo(
                id=d.id,
                kind=d.kind,
                driver=next((b.driver for b in config.buses if b.id == d.bus), ""),
                points=tuple(
                    wire.PointInfo(
                        id=p.id,
                        type=p.value_type(),
                        unit=p.unit,
                        min=p.min,
                        max=p.max,
                        writable=p.writable,
                    )
                    for p in d.points
                ),
                members=d.members([x for x in config.devices if x.bus == d.bus]),
            )
            for d in config.devices
        ),
    )


class Uplink:
    """Keeps one MQTT connection up and moves the outbox to the broker."""

    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        seqs: SeqStore,
        counters: Counters,
        on_command: Callable[[Command], None],
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.seqs = seqs
        self.counters = counters
        self.on_command = on_command
        self.topics = wire.Topics(config.mqtt.topic_root)
        self.gw = config.gateway.id
        self.connected = False
        self.connected_since_ms = 0
        self.last_error = ""
        self.hub_online: bool | None = None
        #: Called with the payload of each retained lighting plan for this gateway (edge/plan.py).
        self.on_plan: Callable[[bytes], None] | None = None
        # The message being published: (topic, payload, samples in it, kind). Survives reconnects.
        self._inflight: tuple[str, bytes, int, Kind] | None = None

    def _client(self) -> aiomqtt.Client:
        m = self.config.mqtt
        will = aiomqtt.Will(
            self.topics.gateway(self.gw, Kind.STATUS),
            wire.encode_status(wire.Status(online=False, session=self.seqs.session)),
            qos=1,
            retain=True,
        )
        return aiomqtt.Client(
            m.host,
            m.port,
            username=m.username or self.gw,
            password=read_secret(m.password_env, m.password_file),
            identifier=m.client_id or self.gw,
            will=will,
            keepalive=m.keepalive_s,
            clean_session=False,  # commands queued while we blinked are still delivered
            max_queued_incoming_messages=1000,
            timeout=10,
            # Acks and commands are tiny: send them now, not after Nagle's delayed-ACK wait.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Connect, publish, receive; on any MQTT error, back off and reconnect. Forever."""
        backoff = Backoff(0.5, self.config.mqtt.reconnect_max_s)
        m = self.config.mqtt
        while True:
            try:
                async with self._client() as client:
                    await self._on_connect(client)
                    backoff.reset()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._sender(client), name=f"uplink-sender-{self.gw}")
                        tg.create_task(self._receiver(client), name=f"uplink-receiver-{self.gw}")
            except* aiomqtt.MqttError as group:
                err = group.exceptions[0]
                self.counters.uplink_failures += 1
                if self.connected or not self.last_error:
                    what = "lost" if self.connected else "cannot connect"
                    log.warning("uplink to %s:%d %s: %s; retrying with backoff", m.host, m.port, what, err)
                self.last_error = str(err)
            finally:
                self.connected = False
            await asyncio.sleep(backoff.next())

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        m = self.config.mqtt
        await client.subscribe(self.topics.gateway(self.gw, Kind.CMD), qos=1)
        await client.subscribe(self.topics.hub_status(), qos=1)
        if self.on_plan is not None:
            await client.subscribe(self.topics.plan(self.gw), qos=1)
        await client.publish(
            self.topics.gateway(self.gw, Kind.BIRTH),
            wire.encode_birth(birth_message(self.config, self.seqs.session)),
            qos=1,
            retain=True,
        )
        await client.publish(
            self.topics.gateway(self.gw, Kind.STATUS),
            wire.encode_status(wire.Status(online=True, session=self.seqs.session, ts_ms=now_ms())),
            qos=1,
            retain=True,
        )
        self.connected = True
        self.connected_since_ms = now_ms()
        self.counters.uplink_connects += 1
        log.info(
            "uplink connected to %s:%d as %s (session %d)",
            m.host,
            m.port,
            m.username or self.gw,
            self.seqs.session,
        )
        self.last_error = ""

    def _next_message(self) -> tuple[str, bytes, int, Kind]:
        if self.outbox.urgent:
            item = self.outbox.urgent.popleft()
            if isinstance(item, Ack):
                return self.topics.gateway(self.gw, Kind.ACK), wire.encode_ack(item), 0, Kind.ACK
            ev = wire.Event(
                seq=self.seqs.next(),
                ts_ms=item.ts_ms,
                device=item.device,
                kind=item.kind,
                active=item.active,
                severity=item.severity,
                point=item.point,
                detail=item.detail,
            )
            return self.topics.gateway(self.gw, Kind.EVENT), wire.encode_event(ev), 0, Kind.EVENT
        n = min(len(self.outbox.samples), self.config.publish.max_batch)
        popleft = self.outbox.samples.popleft
        samples = [popleft() for _ in range(n)]
        payload = wire.encode_data(wire.Data(seq=self.seqs.next(), samples=samples))
        return self.topics.gateway(self.gw, Kind.DATA), payload, n, Kind.DATA

    async def _fill_batch(self) -> None:
        """Give a small batch up to max_delay_ms to fill, unless something urgent waits."""
        pub = self.config.publish
        if pub.max_delay_ms <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pub.max_delay_ms / 1000
        while not self.outbox.urgent and len(self.outbox.samples) < pub.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not await self.outbox.wait_more(remaining):
                return

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            if self._inflight is None:
                await self.outbox.wait()
                await self._fill_batch()
                self._inflight = self._next_message()
            topic, payload, n, kind = self._inflight
            await client.publish(topic, payload, qos=1)
            self._inflight = None
            if kind is Kind.DATA:
                self.counters.messages_published += 1
                self.counters.samples_published += n
            elif kind is Kind.ACK:
                self.counters.acks_published += 1
            else:
                self.counters.events_published += 1

    async def _receiver(self, client: aiomqtt.Client) -> None:
        cmd_topic = self.topics.gateway(self.gw, Kind.CMD)
        hub_topic = self.topics.hub_status()
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == cmd_topic:
                try:
                    cmd = wire.decode_command(payload)
                except wire.WireError as err:
                    self.counters.commands_malformed += 1
                    log.warning("malformed command on %s dropped: %s", topic, err)
                    continue
                self.on_command(cmd)
            elif topic == self.topics.plan(self.gw) and self.on_plan is not None:
                self.on_plan(payload)
            elif topic == hub_topic:
                try:
                    status = wire.decode_status(payload)
                except wire.WireError as err:
                    self.counters.messages_malformed += 1
                    log.warning("malformed hub status on %s dropped: %s", topic, err)
                    continue
                if status.online != self.hub_online:
                    log.info("hub is %s", "online" if status.online else "offline")
                self.hub_online = status.online


__all__ = ["SOFTWARE_VERSION", "Outbox", "PendingEvent", "Uplink", "birth_message", "read_secret"]
