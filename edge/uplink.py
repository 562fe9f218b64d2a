"""The MQTT uplink: retained birth and status (with last will), QoS 1 publishing, commands in.

Reconnection is one explicit loop in :meth:`Uplink.run`. A message being published keeps its
``seq`` across reconnects, so the hub's ``(gateway, seq)`` dedupe makes a resend harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt

import wire
from wire import Command, Kind

from .backoff import Backoff
from .buffer import Record
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


def birth_message(
    config: EdgeConfig, session: int, units: Mapping[tuple[str, str], str] | None = None
) -> wire.Birth:
    """Describe this gateway's devices and points for the hub's registry.

    ``units``: (device, point) -> unit learned from the device (BACnet ``units``), used where
    the config gives none: a configured unit always wins.
    """
    learned = units or {}
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
                        unit=p.unit or learned.get((d.id, p.id), ""),
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


def historical(rec: Record) -> bytes:
    """A buffered data or event message re-encoded with the ``historical`` flag (same ``seq``)."""
    if rec.kind is Kind.DATA:
        return wire.encode_data(dataclasses.replace(wire.decode_data(rec.payload), historical=True))
    if rec.kind is Kind.EVENT:
        return wire.encode_event(dataclasses.replace(wire.decode_event(rec.payload), historical=True))
    return rec.payload


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
        self._drops_reported_at = 0.0
        # Shown by ``citynerve-edge buffer``: live or replaying, and how far the replay got.
        self.replay: dict[str, Any] = {"state": "disconnected", "backlog_at_start": 0, "replayed_messages": 0}
        # Units learned from devices (BacnetDriver.units); a change is announced by a new birth.
        self.learned_units: dict[tuple[str, str], str] = {}
        self._rebirth = asyncio.Event()
        #: Called with the payload of each retained lighting plan for this gateway (edge/plan.py).
        self.on_plan: Callable[[bytes], None] | None = None

    def _client(self) -> aiomqtt.Client:
        m = self.config.mqtt
        will = aiomqtt.Will(
            self.topics.gateway(self.gw, Kind.STATUS),
            wire.encode_status(wire.Status(online=False, session=self.seqs.session)),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
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
        # Up to buffer.inflight publishes await their PUBACK at once by design: no warning for that.
        client.pending_calls_threshold = self.config.buffer.inflight + 10
        return client

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
                        tg.create_task(self._rebirther(client), name=f"uplink-rebirth-{self.gw}")
            except* aiomqtt.MqttError as group:
                err = group.exceptions[0]
                self.counters.uplink_failures += 1
                if self.connected or not self.last_error:
                    what = "lost" if self.connected else "cannot connect"
                    log.warning("uplink to %s:%d %s: %s; retrying with backoff", m.host, m.port, what, err)
                self.last_error = str(err)
            finally:
                self.connected = False
                self.replay["state"] = "disconnected"
                self.hub_online = None  # learnt again from the retained status after reconnecting
            await asyncio.sleep(backoff.next())

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        m = self.config.mqtt
        await client.subscribe(self.topics.gateway(self.gw, Kind.CMD), qos=1)
        await client.subscribe(self.topics.hub_status(), qos=1)
        if self.on_plan is not None:
            await client.subscribe(self.topics.plan(self.gw), qos=1)
        await client.publish(
            self.topics.gateway(self.gw, Kind.BIRTH),
            wire.encode_birth(birth_message(self.config, self.seqs.session, self.learned_units)),
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

    def rebirth(self) -> None:
        """Publish the birth again (units were learned); on the next connect if not connected."""
        self._rebirth.set()

    async def _rebirther(self, client: aiomqtt.Client) -> None:
        while True:
            await self._rebirth.wait()
            self._rebirth.clear()
            await client.publish(
                self.topics.gateway(self.gw, Kind.BIRTH),
                wire.encode_birth(birth_message(self.config, self.seqs.session, self.learned_units)),
                qos=1,
                retain=True,
            )
            log.info("birth published again: %d units learned from devices", len(self.learned_units))

    # -- sending: live first, the backlog replayed beside it, each deleted after its PUBACK ------

    def may_send(self) -> bool:
        """True while messages may be sent and deleted on PUBACK: the hub is online.

        The hub's retained ``cn/v1/hub/status`` must say online since this connection (a
        broker restarted without persistence has forgotten the hub's subscriptions until the
        hub reconnects, and says so by publishing its status again). With
        ``buffer.wait_for_hub: false`` (no citynerve hub), only an explicit offline stops us.
        """
        if self.config.buffer.wait_for_hub:
            return self.hub_online is True
        return self.hub_online is not False

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            if not self.may_send():
                self.replay["state"] = "waiting for the hub"
                self.outbox.stored.clear()
                await self.outbox.stored.wait()  # also set when the hub status changes
                continue
            await self._send_epoch(client)

    async def _send_epoch(self, client: aiomqtt.Client) -> None:
        """Send until the hub goes offline (or the buffer's ids change): live, then backlog."""
        buf = self.outbox.buffer
        bcfg = self.config.buffer
        generation = buf.generation
        mark = buf.last_id()  # rows up to here were waiting before this epoch: the backlog
        live_since = now_ms()
        self._report_drops()
        self.replay.update(
            state="replaying" if mark else "live",
            backlog_at_start=len(buf),
            replayed_messages=0,
            started_ms=live_since,
        )
        live: deque[Record] = deque()
        backlog: deque[Record] = deque()
        live_cursor, backlog_cursor = mark, 0
        window = asyncio.Semaphore(bcfg.inflight)
        acked: list[int] = []
        loop = asyncio.get_running_loop()
        interval = 1 / bcfg.replay_rate if bcfg.replay_rate > 0 else 0.0
        next_replay = loop.time()
        try:
            async with asyncio.TaskGroup() as tg:
                while self.may_send() and buf.generation == generation:
                    if buf.stats.pending_drops.messages and loop.time() >= self._drops_reported_at + 5:
                        self._report_drops()  # dropped while sending (memory still full): tell the hub
                    if len(acked) >= 32:
                        buf.ack(acked)
                        acked.clear()
                    if not live:
                        self.outbox.stored.clear()
                        live.extend(buf.fetch(live_cursor))
                        if live:
                            live_cursor = live[-1].id
                    rec: Record | None = None
                    wait = 1.0
                    if live:
                        rec = live.popleft()
                    elif backlog_cursor < mark or backlog:
                        now = loop.time()
                        if now >= next_replay:
                            if not backlog:
                                backlog.extend(buf.fetch(backlog_cursor, mark))
                                backlog_cursor = backlog[-1].id if backlog else mark
                            if backlog:
                                rec = backlog.popleft()
                                next_replay = max(next_replay, now - 0.2) + interval
                        else:
                            wait = next_replay - now
                    elif self.replay["state"] == "replaying":
                        self.replay["state"] = "live"
                        log.info("buffer replay complete: %d messages", self.replay["replayed_messages"])
                    if rec is None:
                        if acked:
                            buf.ack(acked)
                            acked.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait):
                                await self.outbox.stored.wait()
                        continue
                    await window.acquire()
                    hist = rec.created_ms < live_since
                    tg.create_task(self._publish(client, rec, hist, window, acked))
        finally:
            if acked:
                buf.ack(acked)

    def _report_drops(self) -> None:
        """Turn what the buffer dropped since the last report into one ``buffer_overflow`` event."""
        self._drops_reported_at = asyncio.get_running_loop().time()
        drops = self.outbox.buffer.take_drops()
        if drops is not None:
            self.counters.buffer_overflow_events += 1
            log.warning("reporting to the hub: %s", drops.describe())
            self.outbox.gateway_event("buffer_overflow", drops.describe())

    async def _publish(
        self, client: aiomqtt.Client, rec: Record, hist: bool, window: asyncio.Semaphore, acked: list[int]
    ) -> None:
        try:
            try:
                payload = historical(rec) if hist else rec.payload
            except wire.WireError as err:  # a row that cannot be decoded must not stall the uplink
                log.error("buffered %s message seq %d is corrupt (%s): dropped", rec.kind.value, rec.seq, err)
                self.counters.messages_malformed += 1
                acked.append(rec.id)
                return
            await client.publish(self.topics.gateway(self.gw, rec.kind), payload, qos=1)
        finally:
            window.release()
        if self.may_send():
            acked.append(rec.id)  # deleted from the buffer; otherwise resent when the hub is back
        if hist:
            self.replay["replayed_messages"] += 1
            self.counters.messages_replayed += 1
        if rec.kind is Kind.DATA:
            self.counters.messages_published += 1
            self.counters.samples_published += rec.n
            if hist:
                self.counters.samples_replayed += rec.n
        elif rec.kind is Kind.ACK:
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
                    self.outbox.stored.set()  # wake the sender: it starts or stops an epoch
                self.hub_online = status.online


__all__ = ["SOFTWARE_VERSION", "Outbox", "PendingEvent", "Uplink", "birth_message", "read_secret"]
