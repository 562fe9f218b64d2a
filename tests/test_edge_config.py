"""Edge config: every error names the file, the line and the field; all errors at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnconfig import EXIT_BAD_CONFIG, ConfigError
from edge import config as edge_config

ROOT = Path(__file__).resolve().parent.parent

GOOD_HEAD = """\
gateway:
  id: cab-1
buses:
  - {id: b1, driver: modbus, transport: tcp, host: 127.0.0.1, port: 5020}
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edge.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        edge_config.load(path)
    return [str(i).replace(str(path), "edge.yaml") for i in info.value.issues]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            GOOD_HEAD + "colour: red\n",
            "edge.yaml:5: colour: unknown key",
        ),
        (
            "gateway:\n  id: cab-1\n  colour: red\n",
            "edge.yaml:3: gateway.colour: unknown key",
        ),
        (
            GOOD_HEAD + "mqtt:\n  port: abc\n",
            "edge.yaml:6: mqtt.port: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            "gateway:\n  id: 'cab/1'\n",
            "edge.yaml:2: gateway.id: must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
        ),
        (
            GOOD_HEAD + "devices:\n  - {id: L-1, bus: b1, unit: 1}\n  - {id: L-1, bus: b1, unit: 2}\n",
            "edge.yaml:7: devices[1].id: duplicate device id 'L-1' (first at devices[0])",
        ),
        (
            GOOD_HEAD
            + "devices:\n  - id: L-1\n    bus: b1\n    unit: 1\n    points:\n"
            + "      - {id: a, register: input, address: 10, type: u32}\n"
            + "      - {id: b, register: input, address: 11}\n",
            "edge.yaml:11: devices[0].points[1]: points 'a' and 'b' overlap at input 11",
        ),
        (
            GOOD_HEAD
            + "devices:\n  - id: L-1\n    bus: b1\n    unit: 1\n    points:\n"
            + "      - {id: a, register: input, address: 10}\n"
            + "      - {id: a, register: input, address: 12}\n",
            "edge.yaml:11: devices[0].points[1].id: duplicate point id 'a' in device 'L-1'",
        ),
        (
            GOOD_HEAD + "devices:\n  - {id: L-1, bus: nowhere, unit: 1}\n",
            "edge.yaml:6: devices[0].bus: unknown bus 'nowhere' (buses: b1)",
        ),
        (
            GOOD_HEAD + "  - {id: b2, driver: profibus}\n",
            "edge.yaml:5: buses[1].driver: unknown driver 'profibus' (known: bacnet, dali, modbus)",
        ),
        (
            GOOD_HEAD + "  - {id: b1, driver: modbus, transport: tcp, host: h}\n",
            "edge.yaml:5: buses[1].id: duplicate bus id 'b1'",
        ),
        (
            GOOD_HEAD + "devices:\n  - {id: L-1, bus: b1, unit: 1, template: lampy}\n",
            "edge.yaml:6: devices[0].template: unknown template 'lampy' (known: none defined)",
        ),
        (
            GOOD_HEAD + "devices:\n  - {id: L-1, bus: b1, unit: 300}\n",
            "edge.yaml:6: devices[0].unit: Input should be less than or equal to 247",
        ),
        (
            GOOD_HEAD + "devices:\n  - id: L-1\n    bus: b1\n    unit: 1\n    points:\n"
            "      - {id: a, register: input, address: 1, writable: true}\n",
            "edge.yaml:10: devices[0].points[0].writable: register input is read-only: writable needs coil or holding",
        ),
        (
            GOOD_HEAD + "devices:\n  - id: L-1\n    bus: b1\n    unit: 1\n    points:\n"
            "      - {id: a, register: input, address: 1, alarm: too_bright}\n",
            "edge.yaml:10: devices[0].points[0].alarm: alarm applies to bool points only, this one is int",
        ),
        (
            GOOD_HEAD + "gateway:\n  id: again\n",
            "edge.yaml:5: gateway: duplicate key (first on line 1)",
        ),
        (
            "gateway: {id: cab-1\n",
            "edge.yaml:2: invalid YAML: expected ',' or '}', but got '<stream end>'",
        ),
    ],
)
def test_config_error_names_file_line_and_field(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in errors_of(tmp_path, body)


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """\
        gateway:
          id: cab-1
          colour: red
        buses:
          - {id: b1, driver: modbus, transport: tcp, host: 127.0.0.1}
        devices:
          - {id: L-1, bus: b1, unit: 1}
          - {id: L-1, bus: b1, unit: 1}
          - {id: L-2, bus: b9, unit: 1}
        """,
    )
    assert errors == [
        "edge.yaml:3: gateway.colour: unknown key",
        "edge.yaml:8: devices[1].id: duplicate device id 'L-1' (first at devices[0])",
        "edge.yaml:9: devices[2].bus: unknown bus 'b9' (buses: b1)",
    ]


def test_template_errors_point_at_the_template_line(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        GOOD_HEAD
        + "templates:\n  lamp:\n    kind: lamp\n    points:\n"
        + "      - {id: level, register: holding, address: 100, type: q16}\n"
        + "devices:\n  - {id: L-1, bus: b1, unit: 1, template: lamp, address_offset: 10}\n",
    )
    assert len(errors) == 1
    assert errors[0].startswith("edge.yaml:9: devices[0].points[0].type: Input should be ")


def test_templates_expand_with_address_offset(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(
        GOOD_HEAD
        + "templates:\n  lamp:\n    kind: lamp\n    points:\n"
        + "      - {id: level, register: holding, address: 100, writable: true, min: 0, max: 100}\n"
        + "devices:\n"
        + "  - {id: L-1, bus: b1, unit: 1, template: lamp}\n"
        + "  - {id: L-2, bus: b1, unit: 1, template: lamp, address_offset: 10}\n"
    )
    cfg = edge_config.load(path)
    assert [(d.id, d.kind, d.points[0].address) for d in cfg.devices] == [  # type: ignore[attr-defined]
        ("L-1", "lamp", 100),
        ("L-2", "lamp", 110),
    ]


def test_shipped_example_config_is_valid() -> None:
    cfg = edge_config.load(ROOT / "configs/edge.example.yaml")
    assert cfg.gateway.id == "cab-0001"
    assert {d.id for d in cfg.devices} >= {"CAB-0001", "L-0003"}


def test_check_config_cli_prints_every_error_and_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  id: cab-1\n  colour: red\nmqtt:\n  port: 0\n")
    good = ROOT / "configs/edge.example.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_BAD_CONFIG
    assert f"{good}: OK (gateway cab-0001, 1 buses, 5 devices, 25 points)" in proc.stdout
    assert proc.stderr.splitlines() == [
        f"{bad}:3: gateway.colour: unknown key",
        f"{bad}:5: mqtt.port: Input should be greater than or equal to 1",
    ]


def test_run_with_bad_config_exits_78_without_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  id: cab-1\nbuses:\n  - {id: b, driver: modbus, transport: rtu}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_BAD_CONFIG
    assert f"{bad}:4: buses[0]: transport rtu requires 'serial_port'" in proc.stderr


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, GOOD_HEAD + f"mqtt:\n  password_file: {tmp_path}/nope\n")
    assert errors == [
        f"edge.yaml:6: mqtt.password_file: cannot read {tmp_path}/nope (missing, or not readable by this user)"
    ]
