"""A real Mosquitto for the tests, on free ports, from a config generated in a temporary directory.

    with Mosquitto(tmp_path) as broker:                 # or the `mosquitto` fixture below
        broker.url("poller")                            # mqtts://poller:<password>@127.0.0.1:<tls port>
        broker.url("bridge", tls=False)                 # mqtt://... on the plain listener
        broker.ca_file                                  # the CA clients trust for the TLS listener
        broker.stop(); broker.start()                   # an outage: same ports, same users

Security as production runs it: no anonymous clients, a password file (mosquitto_passwd -b) and an
ACL. The default users (DEFAULT_USERS) are the edge path's:
  poller  writes evdash/+/+/telemetry, evdash/+/+/state, evdash/pollers/+/state and
          evdash/+/+/command-results, reads evdash/+/+/commands, nothing else;
  bridge  reads evdash/+/+/telemetry and evdash/+/+/command-results, writes evdash/+/+/commands;
  watcher reads everything (the tests' own subscriber).
No persistence (a restart forgets retained messages and sessions, as a broker that lost its disk
would) unless `persistence=True`; no limit on queued messages for persistent sessions.
The machine's own Mosquitto on 1883 is never touched.
"""

import contextlib
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.certs import Certificates, make_certificates
from tests.conftest import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class User:
    password: str
    acl: tuple[str, ...]  # ACL lines after "topic ", e.g. "write evdash/+/+/telemetry" or "read #"


DEFAULT_USERS: dict[str, User] = {
    "poller": User(
        "poller-Secr3t!pw",
        (
            "write evdash/+/+/telemetry",
            "write evdash/+/+/state",
            "write evdash/pollers/+/state",
            "write evdash/+/+/command-results",
            "read evdash/+/+/commands",
            "write evdash/+/site-status",
        ),
    ),
    "bridge": User(
        "bridge-Secr3t!pw",
        (
            "read evdash/+/+/telemetry",
            "read evdash/+/+/command-results",
            "write evdash/+/+/commands",
            "read evdash/+/site-status",
        ),
    ),
    "watcher": User("watcher-Secr3t!pw", ("read #",)),
}


@dataclass
class Mosquitto:
    """One mosquitto process with a plain listener (optional) and a TLS listener."""

    directory: Path
    users: dict[str, User] = field(default_factory=lambda: dict(DEFAULT_USERS))
    plain: bool = True  # also listen without TLS (port); the TLS listener is tls_port
    persistence: bool = False
    extra_config: str = ""  # appended to mosquitto.conf
    port: int = 0
    tls_port: int = 0
    process: subprocess.Popen | None = None
    certificates: Certificates | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or (free_port() if self.plain else 0)
        self.tls_port = self.tls_port or free_port()
        self.certificates = make_certificates(self.directory / "certs")
        self._write_config()

    @property
    def ca_file(self) -> Path:
        assert self.certificates is not None
        return self.certificates.ca_file

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def log(self) -> str:
        """The broker's log (connections, refusals, errors) and what it printed before logging started."""
        return "".join(f.read_text(errors="replace") for f in (self._output_file, self.log_file) if f.exists())

    @property
    def _output_file(self) -> Path:
        return self.directory / "mosquitto.out"

    def url(self, user: str | None = None, *, tls: bool = True, password: str | None = None) -> str:
        """The EVDASH_MQTT_URL for a user (its own password unless one is given)."""
        port = self.tls_port if tls else self.port
        credentials = ""
        if user is not None:
            credentials = f"{user}:{password if password is not None else self.users[user].password}@"
        return f"{'mqtts' if tls else 'mqtt'}://{credentials}{HOST}:{port}"

    def client_options(self, user: str = "watcher", *, tls: bool = True) -> dict:
        """Keyword arguments for aiomqtt.Client as this user."""
        import ssl

        import aiomqtt

        options: dict = {
            "hostname": HOST,
            "port": self.tls_port if tls else self.port,
            "username": user,
            "password": self.users[user].password,
        }
        if tls:
            options["tls_context"] = ssl.create_default_context(cafile=str(self.ca_file))
        options["protocol"] = aiomqtt.ProtocolVersion.V311
        return options

    def start(self) -> None:
        """Start and wait until every listener accepts connections (raises with the log if it died)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self._log_handle = self._output_file.open("a")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.directory / "mosquitto.conf")],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        ports = [p for p in (self.port, self.tls_port) if p]
        while not all(_listening(p) for p in ports):
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen within {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait (the ports are free again when this returns)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(AttributeError):
            self._log_handle.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "Mosquitto":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        passwords = self.directory / "passwd"
        passwords.unlink(missing_ok=True)
        passwords.touch(mode=0o600)
        for name, user in self.users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), name, user.password], check=True, timeout=30)
        acl = self.directory / "acl"
        acl.write_text("".join(f"user {name}\n" + "".join(f"topic {line}\n" for line in user.acl) + "\n"
                               for name, user in self.users.items()))  # fmt: skip
        certificates = self.certificates
        assert certificates is not None
        lines = [
            # Started as root (CI containers), mosquitto would switch to the "mosquitto" user, which
            # cannot read the test's private tmp directory: stay who we are.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwords}",
            f"acl_file {acl}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            "max_queued_messages 0",  # 0: no limit (the bridge's session queues while it is down)
            f"log_dest file {self.log_file}",  # flushed per line (stdout would be block-buffered)
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.plain:
            lines.append(f"listener {self.port} {HOST}")
        lines += [
            f"listener {self.tls_port} {HOST}",
            f"cafile {certificates.ca_file}",
            f"certfile {certificates.cert_file}",
            f"keyfile {certificates.key_file}",
        ]
        (self.directory / "mosquitto.conf").write_text("\n".join(lines) + "\n" + self.extra_config)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker of this test's own, as the fixture `mosquitto`.

    Use it with `from tests.mosquitto import mosquitto_fixture  # noqa: F401` in the test module.
    """
    broker = Mosquitto(tmp_path / "mosquitto")
    with broker:
        yield broker
