"""The README's demo command works: the demo city runs and the operator path succeeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_city_smoke(tmp_path: Path, broker: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "demo/run_demo.py"),
            "--smoke",
            "--broker",
            broker,
            "--workdir",
            str(tmp_path / "demo"),
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted((tmp_path / "demo/logs").glob("*.log"))
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    assert "demo smoke: OK: command" in proc.stdout
    assert "simulator register 40, hub shows 40%" in proc.stdout
    if broker == "amqtt":
        assert "embedded amqtt broker" in proc.stderr
