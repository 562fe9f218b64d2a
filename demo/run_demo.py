"""A demo city on embedded defaults: one command, no root, nothing to configure.

Starts an MQTT broker (Mosquitto with per-gateway passwords and the shipped ACL if it is
installed, otherwise the embedded amqtt broker), the hub on SQLite, two simulated Modbus lamp
cabinets and two edge gateways polling them. Prints the REST URL, an operator token and curl
commands that work as printed. Ctrl-C stops everything.

``--smoke`` runs the same city, checks the operator's path end to end (lamps visible, a
command acknowledged and the simulated register changed), and exits: CI runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LAMPS_PER_CABINET = 8
CABINETS = 2


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there, else any free loopback port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    """Wait until ``port`` accepts connections, failing early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited with status {proc.returncode}; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not listen on port {port} within {timeout}s")


def mosquitto_binary() -> str | None:
    """Mosquitto's daemon if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class City:
    """The processes of the demo city and their files under ``var/demo``."""

    def __init__(self, workdir: Path, http_port: int, broker: str = "auto") -> None:
        self.broker_choice = broker
        self.workdir = workdir
        self.http_port = http_port
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = dict(os.environ)
        self.passwords: dict[str, str] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a child process with its output in ``<workdir>/logs/<name>.log``."""
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or self.env, cwd=ROOT)
        self.procs.append((name, proc))
        return proc

    def start_broker(self) -> None:
        """Mosquitto with passwords and the shipped ACL, or amqtt when Mosquitto is absent."""
        self.mqtt_port = free_port()
        mosq = mosquitto_binary()
        broker_dir = self.workdir / "broker"
        broker_dir.mkdir(parents=True, exist_ok=True)
        use_mosquitto = bool(mosq and shutil.which("mosquitto_passwd"))
        if self.broker_choice == "mosquitto" and not use_mosquitto:
            raise SystemExit(
                "demo: --broker mosquitto, but mosquitto is not installed (apt-get install mosquitto)"
            )
        if mosq and use_mosquitto and self.broker_choice != "amqtt":
            users = ["citynerve-hub"] + [f"cab-{k:02d}" for k in range(1, CABINETS + 1)]
            pwfile = broker_dir / "passwd"
            pwfile.write_text("")
            pwfile.chmod(0o600)
            for user in users:
                self.passwords[user] = secrets.token_urlsafe(18)
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, self.passwords[user]],
                    check=True,
                    capture_output=True,
                )
            acl = broker_dir / "acl"
            shutil.copy(ROOT / "configs/mosquitto/citynerve.acl", acl)
            acl.chmod(0o600)
            conf = broker_dir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.mqtt_port} 127.0.0.1\n"
                "allow_anonymous false\n"
                f"password_file {pwfile}\n"
                f"acl_file {acl}\n"
                "persistence false\n"
                "set_tcp_nodelay true\n"
                # As root, Mosquitto would drop to user "mosquitto", who cannot read these files.
                + ("user root\n" if os.geteuid() == 0 else "")
                + "max_queued_messages 1000000\n"
                "max_inflight_messages 200\n"
            )
            proc = self.spawn("mosquitto", [mosq, "-c", str(conf)])
            self.broker = (
                f"Mosquitto (per-gateway passwords and the shipped ACL) on 127.0.0.1:{self.mqtt_port}"
            )
        else:
            conf = broker_dir / "amqtt.yaml"
            conf.write_text(
                "listeners:\n  default:\n    type: tcp\n"
                f"    bind: 127.0.0.1:{self.mqtt_port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            )
            proc = self.spawn("amqtt", [str(BIN / "amqtt"), "-c", str(conf)])
            self.broker = (
                f"embedded amqtt broker on 127.0.0.1:{self.mqtt_port} -- DEMO ONLY: MQTT 3.1.1, anonymous, "
                "no queueing for persistent sessions; install Mosquitto for anything real"
            )
            print(
                "demo: WARNING: using the embedded amqtt broker (Mosquitto is not installed, or "
                "--broker amqtt): fine for a demo, not for production; see docs/install.md",
                file=sys.stderr,
            )
        wait_port(self.mqtt_port, proc, "the MQTT broker")

    def start_sims(self) -> None:
        """One simulated Modbus lamp cabinet per gateway, each with a control port."""
        self.sims: list[tuple[int, int]] = []
        for k in range(1, CABINETS + 1):
            port, control = free_port(), free_port()
            proc = self.spawn(
                f"sim-cab-{k:02d}",
                [
                    str(BIN / "citynerve-sim"),
                    "modbus",
                    "--port",
                    str(port),
                    "--lamps",
                    str(LAMPS_PER_CABINET),
                    "--control-port",
                    str(control),
                ],
            )
            wait_port(port, proc, f"cabinet simulator {k}")
            self.sims.append((port, control))

    def start_hub(self) -> None:
        """The hub on SQLite, with an operator token created first."""
        hub_dir = self.workdir / "hub"
        conf = self.workdir / "hub.yaml"
        conf.write_text(
            f"data_dir: {hub_dir}\n"
            "mqtt:\n"
            "  host: 127.0.0.1\n"
            f"  port: {self.mqtt_port}\n"
            "  username: citynerve-hub\n"
            "  client_id: citynerve-hub-demo\n"
            # amqtt speaks only MQTT 3.1.1.
            + ("  protocol: '3.1.1'\n" if self.broker.startswith("embedded amqtt") else "")
            + "http:\n"
            "  host: 127.0.0.1\n"
            f"  port: {self.http_port}\n"
        )
        env = dict(self.env)
        if "citynerve-hub" in self.passwords:
            env["CITYNERVE_HUB_MQTT_PASSWORD"] = self.passwords["citynerve-hub"]
        tokens = {}
        for role in ("operator", "admin"):
            out = subprocess.run(
                [
                    str(BIN / "citynerve-hub"),
                    "token",
                    "create",
                    "--config",
                    str(conf),
                    "--role",
                    role,
                    "--name",
                    f"demo-{role}",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            tokens[role] = out.stdout.strip().splitlines()[-1]
        self.token, self.admin_token = tokens["operator"], tokens["admin"]
        proc = self.spawn("hub", [str(BIN / "citynerve-hub"), "run", "--config", str(conf)], env=env)
        wait_port(self.http_port, proc, "the hub")

    def start_edges(self) -> None:
        """One gateway per cabinet, configured with the lamp template."""
        self.edge_configs = []
        for k, (port, _) in enumerate(self.sims, start=1):
            gw = f"cab-{k:02d}"
            conf = self.workdir / f"edge-{gw}.yaml"
            first = (k - 1) * LAMPS_PER_CABINET + 1
            lamps = "\n".join(
                f"  - {{id: L-{first + n:04d}, bus: cabinet, unit: 1, template: lamp, address_offset: {10 * n}}}"
                for n in range(LAMPS_PER_CABINET)
            )
            conf.write_text(
                (ROOT / "demo/edge-template.yaml")
                .read_text()
                .format(
                    gateway=gw,
                    cabinet=f"{k:02d}",
                    mqtt_port=self.mqtt_port,
                    data_dir=self.workdir / gw,
                    sim_port=port,
                    lamps=lamps,
                )
            )
            env = dict(self.env)
            if gw in self.passwords:
                env["CITYNERVE_EDGE_MQTT_PASSWORD"] = self.passwords[gw]
            self.spawn(f"edge-{gw}", [str(BIN / "citynerve-edge"), "run", "--config", str(conf)], env=env)
            self.edge_configs.append(conf)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, admin: bool = False) -> Any:
        """Call the hub's REST API with the operator (or admin) token."""
        token = self.admin_token if admin else self.token
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/v1/{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def wait_for_lamps(self, timeout: float = 30) -> None:
        """Wait until the hub knows every lamp and has a value for L-0003."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            try:
                devices = self.api("GET", "devices")
                points = self.api("GET", "devices/L-0003/points")
                items = devices["items"] if isinstance(devices, dict) else devices
                pts = points["items"] if isinstance(points, dict) else points
                if len(items) >= CABINETS * (LAMPS_PER_CABINET + 1) and any(
                    p.get("value") is not None for p in pts
                ):
                    return
            except (urllib.error.URLError, OSError, KeyError):
                pass
            time.sleep(0.5)
        raise SystemExit("demo: the hub did not see every lamp within 30s; see var/demo/logs/")

    def check_children(self) -> None:
        """Fail loudly if a child died."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(
                    f"demo: {name} exited with status {proc.returncode}; see {self.workdir}/logs/{name}.log"
                )

    def stop(self) -> None:
        """SIGTERM every child, newest first, then wait."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def load_policy(city: City) -> None:
    """A default lighting policy: every lamp follows the issue's night profile (dusk-10 100%,
    23:00 70%, 01:00 40%, 05:30 70%, dawn+10 off), one street per cabinet in central Dijon."""
    writes: list[tuple[str, dict[str, Any]]] = [
        (
            "profiles",
            {
                "id": "night",
                "name": "Dijon default",
                "steps": [
                    {"at": "dusk", "offset_min": -10, "level": 100},
                    {"at": "23:00", "level": 70},
                    {"at": "01:00", "level": 40},
                    {"at": "05:30", "level": 70},
                    {"at": "dawn", "offset_min": 10, "level": 0},
                ],
            },
        ),
        ("calendars", {"id": "default", "default_profile": "night"}),
        ("presence-rules", {"id": "walk", "level": 100, "hold_s": 60, "ramp_down_s": 10, "reach_lamps": 2}),
        ("zones", {"id": "dijon", "kind": "municipality", "name": "Dijon"}),
        ("zones", {"id": "centre", "kind": "district", "parent": "dijon"}),
    ]
    for k in range(1, CABINETS + 1):
        street = f"street-{k:02d}"
        writes.append(
            (
                "zones",
                {
                    "id": street,
                    "kind": "street",
                    "parent": "centre",
                    "lighting_class": "P3",
                    "presence": "walk",
                },
            )
        )
        for n in range(LAMPS_PER_CABINET):
            lid = f"L-{(k - 1) * LAMPS_PER_CABINET + n + 1:04d}"
            writes.append(
                (
                    "lamps",
                    {
                        "id": lid,
                        "street": street,
                        "lat": 47.3220 + 0.001 * k,
                        "lon": 5.0415 + 0.0004 * n,
                        "rated_w": 60,
                        "gateway": f"cab-{k:02d}",
                    },
                )
            )
    for seg, body in writes:
        city.api("PUT", f"policy/{seg}/{body['id']}", body, admin=True)


def smoke(city: City) -> None:
    """The operator's path, checked: set L-0003 to 40% and see it acknowledged and applied."""
    cmd = city.api("POST", "commands", {"device": "L-0003", "point": "level", "value": 40})
    deadline = time.monotonic() + 15
    while True:
        state = city.api("GET", f"commands/{cmd['id']}")
        if state["status"] != "pending":
            break
        if time.monotonic() > deadline:
            raise SystemExit("demo smoke: command still pending after 15s")
        time.sleep(0.2)
    if state["status"] != "acknowledged":
        raise SystemExit(f"demo smoke: command ended {state['status']}: {state.get('detail')}")
    _, control = city.sims[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{control}/state", timeout=5) as resp:
        sim = json.loads(resp.read())
    setpoint = sim["lamps"][2]["setpoint"]  # L-0003 is lamp 2 of cabinet 1
    if setpoint != 40:
        raise SystemExit(f"demo smoke: simulator lamp 2 setpoint is {setpoint}, expected 40")
    while True:
        points = {p["id"]: p for p in city.api("GET", "devices/L-0003/points")["items"]}
        if points["level"]["value"] == 40:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"demo smoke: hub shows L-0003 level {points['level']['value']}, expected 40")
        time.sleep(0.2)
    print(f"demo smoke: OK: command {cmd['id']} acknowledged, simulator register 40, hub shows 40%")


def main() -> int:
    """Run the demo city until Ctrl-C (or, with --smoke, check it and exit)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "var/demo"), help="where configs, data and logs go")
    ap.add_argument("--http-port", type=int, default=8080, help="hub REST port (a free one if taken)")
    ap.add_argument("--smoke", action="store_true", help="check the operator path end to end and exit")
    ap.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="auto: Mosquitto if installed, else the embedded amqtt broker",
    )
    args = ap.parse_args()

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    city = City(workdir, free_port(args.http_port), args.broker)
    try:
        city.start_broker()
        city.start_sims()
        city.start_hub()
        city.start_edges()
        city.wait_for_lamps()
        if args.smoke:
            smoke(city)
            load_policy(city)
            status = city.api("GET", "policy")
            explain = city.api("GET", "policy/lamps/L-0003/explain")
            if not status["running"] or explain["source"] not in ("schedule", "override", "presence"):
                raise SystemExit(f"demo smoke: the lighting policy does not run: {status['problems']}")
            print(f"demo smoke: OK: lighting policy runs; L-0003 {explain['level']:g}% ({explain['detail']})")
            return 0
        load_policy(city)
        url = f"http://127.0.0.1:{city.http_port}/api/v1"
        auth = f'-H "Authorization: Bearer {city.token}"'
        edge = city.edge_configs[0]
        print(
            f"""
citynerve demo city is running
  broker     {city.broker}
  hub REST   {url}   (OpenAPI: {url}/openapi.json)
  token      {city.token}   (role: operator)
  cabinets   {CABINETS} simulated Modbus cabinets, {LAMPS_PER_CABINET} lamps each (L-0001 .. L-{CABINETS * LAMPS_PER_CABINET:04d})
  logs       {workdir}/logs/

Try:
  curl -s {auth} {url}/devices
  curl -s {auth} {url}/devices/L-0003/points
  curl -s {auth} -H "Content-Type: application/json" -X POST {url}/commands -d '{{"device": "L-0003", "point": "level", "value": 40}}'

The lamps follow a night (docs/policy.md); the edges run it even without the hub:
  curl -s {auth} {url}/policy/lamps/L-0003/explain
  curl -s {auth} "{url}/policy/lamps/L-0003/explain?at=2026-12-24T23:30:00Z"
  curl -s {auth} -H "Content-Type: application/json" -X POST {url}/policy/overrides -d '{{"target": {{"kind": "lamp", "id": "L-0003"}}, "level": 90, "duration_s": 600}}'
  curl -s {auth} "{url}/policy/energy?zone=street-01"

At the cabinet (technician CLI, talks to the running gateway over its local socket):
  {BIN}/citynerve-edge status --config {edge}
  {BIN}/citynerve-edge points --config {edge} --device L-0003

Ctrl-C stops the city.""",
            flush=True,
        )
        while True:
            time.sleep(1)
            city.check_children()
    except KeyboardInterrupt:
        print("\ndemo: stopping", file=sys.stderr)
        return 0
    finally:
        city.stop()


if __name__ == "__main__":
    sys.exit(main())
