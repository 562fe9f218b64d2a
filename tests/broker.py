"""Start a private Mosquitto on a free loopback port for one test (real broker, no mocks)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of the mosquitto daemon; Debian installs it in /usr/sbin."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


@dataclass
class Mosquitto:
    """A running private broker; ``users`` maps user name to password when ACLs are on."""

    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    users: dict[str, str] = field(default_factory=dict)
    acl: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        """Write a config and start the daemon; returns once it accepts connections."""
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            # Run as root, Mosquitto drops to user "mosquitto", who cannot read our tmp files.
            lines.append("user root")
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self.workdir / "acl"
            aclfile.write_text(self.acl)
            aclfile.chmod(0o600)
            lines.append(f"acl_file {aclfile}")
        conf.write_text("\n".join(lines) + "\n")
        self.log = open(self.workdir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            log = (self.workdir / "mosquitto.log").read_text(errors="replace")
            raise RuntimeError(f"mosquitto did not start: {log[-2000:]}") from None
        return self

    def stop(self) -> None:
        """Terminate the daemon and wait for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
