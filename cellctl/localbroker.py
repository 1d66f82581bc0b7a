"""A private mosquitto on a loopback port, for `cellctl demo`, the tests and the
benchmarks. It binds 127.0.0.1 only, runs from its own config in a temporary directory,
and is stopped by its PID; it never touches a broker that may already run on 1883."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def _port_slice() -> range:
    """This process's ports: below the kernel's ephemeral range, which outgoing connections
    and bind(0) draw from (so a broker stopped for an outage keeps its port free until it
    starts again), and a slice of their own per pytest-xdist worker."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    slices = (low - _PORTS_FROM) // _PORTS_PER_SLICE
    if slices < 1:
        return range(0)
    first = _PORTS_FROM + (index % slices) * _PORTS_PER_SLICE
    return range(first, first + _PORTS_PER_SLICE)


_PORTS_FROM = 10_000
_PORTS_PER_SLICE = 1_500
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on now and that this process has not handed out
    before (see `_port_slice`); the kernel's choice when the slice is used up."""
    with _handed_out_lock:
        candidates = [p for p in _port_slice() if p not in _handed_out]
        random.shuffle(candidates)
        for port in candidates[:200]:  # bounded: a busy slice falls back to the kernel
            if _bindable(host, port):
                _handed_out.add(port)
                return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).is_file():
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The broker's side of TLS: its certificate and key, and the CA that client
    certificates must chain to (required only with `require_certificate`)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    # mutual TLS: a client without a certificate signed by `ca_file` is refused, and the
    # certificate's common name is the client's user name (for the ACL)
    require_certificate: bool = False


class Mosquitto:
    """Start/stop/restart one mosquitto process on a fixed loopback port."""

    name = "mosquitto"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        persistence: bool = False,
        users: dict[str, str] | None = None,
        max_inflight_messages: int = 1000,
        tls: BrokerTls | None = None,
        acl: str | None = None,
    ) -> None:
        """`users` (name -> password) turns anonymous access off, for tests of auth.
        `max_inflight_messages` 20 is mosquitto's own default (QoS 1/2 messages to one
        client beyond it are queued while QoS 0 ones go out at once). `tls` makes the
        listener TLS only (and mutual TLS with `require_certificate`); `acl` is the text of
        a mosquitto ACL file (`user NAME` / `topic read|write|readwrite FILTER` lines)."""
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        self.command = [binary, "-c", "{config}"]
        self.host = host
        self.port = port or free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="cellctl-mosquitto-"))
        self.log_path = self.dir / "mosquitto.log"
        lines = [
            f"listener {self.port} {host}",
            f"allow_anonymous {'false' if users else 'true'}",
            "set_tcp_nodelay true",
            "max_queued_messages 1000000",
            f"max_inflight_messages {max_inflight_messages}",
            f"persistence {'true' if persistence else 'false'}",
            # a persistent session (clean_session false) then also gets the QoS 0 messages
            # published while it reconnects: tests that restart the broker see everything
            f"queue_qos0_messages {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if users:
            passwords = self.dir / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwords), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {passwords}")
        if tls is not None:
            lines += [
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
                f"require_certificate {'true' if tls.require_certificate else 'false'}",
            ]
            if tls.require_certificate:
                lines.append("use_identity_as_username true")
        if acl is not None:
            acl_file = self.dir / "acl"
            acl_file.write_text(acl, encoding="utf-8")
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        if (users or persistence or tls or acl is not None) and os.geteuid() == 0:
            # mosquitto drops root for user 'mosquitto', who can neither read nor write
            # (persistence) our private temp dir, nor read the test's keys
            lines.append("user root")
        self.config_path = self.dir / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.log_path.open("ab")
        command = [part.format(config=self.config_path, port=self.port) for part in self.command]
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"{self.name} did not accept connections on {self.host}:{self.port} within {timeout} s"
        )

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class EmbeddedBroker(Mosquitto):
    """The demo's fallback when mosquitto is missing: amqtt in its own process."""

    name = "embedded broker (amqtt)"

    def __init__(self, port: int | None = None) -> None:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise BrokerError(
                "the embedded broker needs amqtt, an optional extra that is not installed: "
                "pip install 'cellctl[embedded-broker]'"
            ) from None
        self.command = [sys.executable, "-m", "cellctl.embedded_broker", "{port}"]
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.dir = Path(tempfile.mkdtemp(prefix="cellctl-embedded-broker-"))
        self.log_path = self.dir / "broker.log"
        self.config_path = self.dir / "unused"
        self.proc = None
