"""Secrets never appear in logs, even at DEBUG; passwords come from credentials or the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
HUB_PW = "hub-Secret-0x5eed-not-for-logs"
GW_PW = "gw-Secret-0xcafe-not-for-logs"


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged within {timeout}s:\n{text[-3000:]}")


def test_passwords_never_reach_the_logs(tmp_path: Path) -> None:
    broker = Mosquitto(
        tmp_path / "broker",
        users={"citynerve-hub": HUB_PW, "cab-01": GW_PW},
        acl=(ROOT / "configs/mosquitto/citynerve.acl").read_text(),
    ).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hub_yaml = tmp_path / "hub.yaml"
        hub_yaml.write_text(
            f"data_dir: {tmp_path / 'hub'}\nlog_level: DEBUG\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: citynerve-hub}}\n"
            f"http: {{host: 127.0.0.1, port: {free_port()}}}\n"
        )
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "mqtt_password").write_text(GW_PW + "\n")
        edge_yaml = tmp_path / "edge.yaml"
        edge_yaml.write_text(
            f"gateway: {{id: cab-01}}\nlog_level: DEBUG\ndata_dir: {tmp_path / 'edge'}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}\n"
        )
        bin_dir = Path(sys.executable).parent
        hub_log, edge_log = tmp_path / "hub.log", tmp_path / "edge.log"
        with open(hub_log, "wb") as hl, open(edge_log, "wb") as el:
            hub = subprocess.Popen(
                [str(bin_dir / "citynerve-hub"), "run", "--config", str(hub_yaml)],
                stdout=hl,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CITYNERVE_HUB_MQTT_PASSWORD": HUB_PW},
            )
            procs.append(hub)
            edge = subprocess.Popen(
                [str(bin_dir / "citynerve-edge"), "run", "--config", str(edge_yaml)],
                stdout=el,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)},
            )
            procs.append(edge)
            wait_for_line(edge_log, "uplink connected", edge)
            wait_for_line(hub_log, "connected as", hub)
            for p, log in ((hub, hub_log), (edge, edge_log)):
                p.send_signal(signal.SIGTERM)
                try:
                    rc = p.wait(20)
                except subprocess.TimeoutExpired:
                    rc = None
                assert rc == 0, f"{p.args[0]} exit {rc} after SIGTERM:\n{log.read_text(errors='replace')[-3000:]}"
        logs = hub_log.read_text(errors="replace") + edge_log.read_text(errors="replace")
        assert "DEBUG" in logs  # the debug output was really on
        assert HUB_PW not in logs and GW_PW not in logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        broker.stop()
