"""Hub config errors, check-config, run with a bad file, and token admin through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker import Mosquitto
from hubtest import _settings, start_hub

from cnconfig import EXIT_BAD_CONFIG, ConfigError
from hub.cli import main
from hub.config import HubSettings, MqttSettings, load_settings, mqtt_password
from hub.policy import POLICY

ROOT = Path(__file__).parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hub.yaml"
    p.write_text(text)
    return p


def test_example_config_is_valid() -> None:
    s = load_settings(ROOT / "configs" / "hub.example.yaml")
    assert s == HubSettings(data_dir=Path("./var/hub"))
    assert s.db_url == "sqlite://var/hub/citynerve.db"


def test_unknown_key_and_wrong_type_name_file_line_and_path(tmp_path: Path) -> None:
    p = _write(tmp_path, "mqtt:\n  host: broker\n  prot: 1883\nhttp:\n  port: eighty\n")
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    assert [str(i) for i in err.value.issues] == [
        f"{p}:3: mqtt.prot: unknown key",
        f"{p}:5: http.port: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "ingest:\n  queue_max: 0\n")
    assert main(["check-config", str(bad)]) == EXIT_BAD_CONFIG
    assert capsys.readouterr().err == (
        f"{bad}:2: ingest.queue_max: Input should be greater than or equal to 1\n"
    )
    assert main(["run", "--config", str(bad)]) == EXIT_BAD_CONFIG
    good = _write(tmp_path, "log_level: debug\n")
    assert main(["check-config", str(good)]) == 0


def test_password_sources(tmp_path: Path) -> None:
    m = MqttSettings(password_env="PW")
    assert mqtt_password(m, {}) is None
    assert mqtt_password(m, {"PW": "s3cret"}) == "s3cret"
    (tmp_path / "mqtt_password").write_text("fromcred\n")
    assert mqtt_password(m, {"PW": "x", "CREDENTIALS_DIRECTORY": str(tmp_path)}) == "fromcred"
    (tmp_path / "pw").write_text("fromfile\n")
    assert mqtt_password(MqttSettings(password_file=tmp_path / "pw"), {}) == "fromfile"


def test_token_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path, f"data_dir: {tmp_path / 'data'}\n")
    assert main(["token", "create", "--config", str(cfg), "--role", "admin", "--name", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("cnh_") and len(token) > 40 and "\n" not in token
    assert main(["token", "create", "--config", str(cfg), "--role", "admin", "--name", "ci"]) == 1
    capsys.readouterr()
    assert main(["token", "list", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "1\tci\tadmin\tactive\n"
    assert main(["token", "revoke", "--config", str(cfg), "1"]) == 0
    assert main(["token", "revoke", "--config", str(cfg), "1"]) == 1
    capsys.readouterr()
    main(["token", "list", "--config", str(cfg)])
    assert capsys.readouterr().out == "1\tci\tadmin\trevoked\n"


def test_run_logs_url_and_stops_cleanly_on_sigterm(tmp_path: Path, mosquitto: object) -> None:
    import signal
    import subprocess
    import sys
    import time

    from broker import free_port, wait_port

    port = free_port()
    cfg = _write(tmp_path, (
        f"data_dir: {tmp_path / 'data'}\nhttp: {{port: {port}}}\n"
        f"mqtt: {{port: {mosquitto.port}, username: hubuser}}\n"  # type: ignore[attr-defined]
    ))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())",
         "run", "--config", str(cfg)],
        stderr=subprocess.PIPE, text=True, env={"CITYNERVE_HUB_MQTT_PASSWORD": "hunter2",
                                                "PATH": "/usr/bin:/bin"},
    )
    try:
        wait_port("127.0.0.1", port)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert f"REST API on http://127.0.0.1:{port}/api/v1" in err
    assert "hubuser" in err and "hunter2" not in err


def test_policy_rate_is_validated_with_its_location(tmp_path: Path) -> None:
    p = _write(tmp_path, "policy:\n  rate_per_gateway: 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    assert [str(i) for i in err.value.issues] == [
        f"{p}:2: policy.rate_per_gateway: Input should be greater than 0",
    ]


async def test_the_policy_runner_takes_its_rate_from_the_hub_config(tmp_path: Path, mosquitto: Mosquitto) -> None:
    hub = await start_hub(_settings(tmp_path, mosquitto, policy={"rate_per_gateway": 2.5, "max_sleep_s": 7}))
    try:
        runner = hub.app[POLICY]
        assert (runner.settings.rate_per_gateway, runner.settings.max_sleep_s) == (2.5, 7)
    finally:
        await hub.client.close()
