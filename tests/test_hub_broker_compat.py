"""The hub finds a protocol the broker speaks: amqtt never answers an MQTT 5 CONNECT."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from broker import free_port, wait_port
from hubtest import start_hub

from hub.config import HubSettings
from hub.keys import LINK


async def test_hub_falls_back_to_mqtt_311_on_a_broker_that_ignores_mqtt_5(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    amqtt = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop does work
        [str(Path(sys.executable).parent / "amqtt"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_port, "127.0.0.1", port)
        settings = HubSettings.model_validate(
            {"data_dir": str(tmp_path / "hub"), "mqtt": {"host": "127.0.0.1", "port": port, "protocol": "5"}}
        )
        assert settings.mqtt.protocol == "5"
        hub = await start_hub(settings, connect_timeout=40)
        try:
            assert hub.app[LINK].protocol == "3.1.1"
        finally:
            await hub.client.close()
    finally:
        amqtt.terminate()
        amqtt.wait(10)
