"""Shared helpers of the benchmarks: a private Mosquitto, machine facts, tables and results.

Every benchmark reports its figures as ratios to a baseline measured in the same run, so the
numbers travel between machines; the machine is recorded next to them anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# One broker starter for tests and benchmarks: the port and binary helpers live in tests/broker.py.
from broker import free_port, mosquitto_binary, wait_port  # noqa: E402

LIBS = ("aiomqtt", "paho-mqtt", "pymodbus", "msgpack", "tortoise-orm", "aiosqlite", "aiohttp")


@dataclass
class Broker:
    """A private Mosquitto on a free loopback port, tuned for a backlog benchmark."""

    workdir: Path
    max_inflight: int = 1000
    max_queued: int = 10_000_000
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Broker:
        """Write a config and start the daemon; returns once it accepts connections."""
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "set_tcp_nodelay true",
            f"max_queued_messages {self.max_queued}",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight}",
            "log_dest stderr",
            "log_type error",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = open(self.workdir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        wait_port(self.host, self.port)
        return self

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the broker has used so far."""
        if self.proc is None:
            return 0.0
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        """Terminate the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """The facts needed to compare runs: cores, CPU, Python, library versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for name in LIBS:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    try:
        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5)
        mosq = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, RuntimeError, IndexError, subprocess.TimeoutExpired):
        mosq = "-"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosq,
        "libs": libs,
    }


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The common command line: ``--quick`` for a smoke run, ``--json`` to write results."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a full run")
    p.add_argument("--json", action="store_true", help="also write bench/results/<name>.json")
    return p


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, right-aligned numbers."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def save(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine and command added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


async def mqtt_rtt(port: int, n: int) -> list[float]:
    """Baseline: a bare QoS 1 publish -> subscribe round trip through the broker, in ms."""
    import aiomqtt

    out: list[float] = []
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="rtt-sub") as sub,
        aiomqtt.Client("127.0.0.1", port, identifier="rtt-pub") as pub,
    ):
        await sub.subscribe("bench/rtt", qos=1)
        it = sub.messages.__aiter__()
        for i in range(n):
            t0 = time.perf_counter()
            await pub.publish("bench/rtt", str(i).encode(), qos=1)
            await it.__anext__()
            out.append((time.perf_counter() - t0) * 1000)
    return out
