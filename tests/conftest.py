"""Shared fixtures: a private Mosquitto per test, free ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import Mosquitto, free_port


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private, anonymous Mosquitto on a free loopback port."""
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def port() -> int:
    """A free loopback TCP port."""
    return free_port()
