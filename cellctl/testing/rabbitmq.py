"""A clustered MQTT broker for the fleet bench and tests: N RabbitMQ nodes (Debian's
`rabbitmq-server` with its MQTT plugin) on loopback ports of their own, forming one
cluster through classic peer discovery, each a process group of ours stopped by its id.

Three nodes, not two: RabbitMQ's MQTT plugin tracks client ids in a Raft cluster, which
accepts new connections only while a majority of the nodes is up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from cellctl.localbroker import BrokerError, free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def find_rabbitmq() -> str | None:
    """The server script, when RabbitMQ and its MQTT plugin are installed."""
    plugins = Path("/usr/lib/rabbitmq/lib")
    if not Path(SERVER).is_file() or not any(plugins.glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*")):
        return None
    return SERVER


@dataclass
class Node:
    name: str
    mqtt_port: int
    amqp_port: int
    dist_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"


class RabbitCluster:
    """`size` nodes of one cluster; `start()` waits until every node accepts MQTT."""

    def __init__(self, size: int = 3) -> None:
        if find_rabbitmq() is None:
            raise BrokerError("rabbitmq-server with the rabbitmq_mqtt plugin is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="cellctl-rabbit-"))
        self.home = self.dir / "home"  # the Erlang cookie the nodes share (and nobody else)
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16), encoding="ascii")
        cookie.chmod(0o600)
        tag = secrets.token_hex(3)
        self.nodes = [
            Node(f"cellctl{tag}n{i}@localhost", free_port(), free_port(), free_port(), self.dir / f"n{i}")
            for i in range(1, size + 1)
        ]
        for node in self.nodes:
            self._configure(node)

    def _configure(self, node: Node) -> None:
        (node.dir / "log").mkdir(parents=True)
        (node.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        peers = [
            f"cluster_formation.classic_config.nodes.{i} = {n.name}" for i, n in enumerate(self.nodes, 1)
        ]
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}",
            "mqtt.allow_anonymous = true",
            "loopback_users = none",
            "cluster_formation.peer_discovery_backend = classic_config",
            *peers,
        ]
        (node.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _env(self, node: Node) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(node.dir / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(node.dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def start(self, timeout: float = 120.0) -> None:
        """Start every node and wait until each accepts MQTT; on failure every node started
        is stopped again (a node left running would outlive the test run).

        The first node boots alone, the others once it accepts MQTT: booted all at once,
        RabbitMQ 3.10's MQTT plugin sometimes gives a node a member of the client-id Raft
        cluster that never learns its leader ("mqtt_node: leader call - leader not known"),
        and that node refuses every CONNECT for good (1 start in 4 here)."""
        first, *others = self.nodes
        try:
            self.start_node(first, timeout=timeout)
            for node in others:
                self.start_node(node, wait=False)
            for node in others:
                self._wait(node, timeout)
        except BaseException:
            self.close()
            raise

    def start_node(self, node: Node, *, wait: bool = True, timeout: float = 120.0) -> None:
        if node.proc is not None and node.proc.poll() is None:
            return
        with (node.dir / "stdout.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [SERVER],
                env=self._env(node),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a process group of ours: stopped by its id
            )
        if wait:
            self._wait(node, timeout)

    def _wait(self, node: Node, timeout: float) -> None:
        """Until the node accepts an MQTT session: its listener opens before the cluster's
        client-id tracking has a leader, and until then it refuses CONNECT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                raise BrokerError(f"rabbitmq node {node.name} exited: {self.log_tail(node)}")
            if _accepts_mqtt(node.mqtt_port):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"rabbitmq node {node.name}: no MQTT session accepted within {timeout} s; its log ends:\n"
            + self.log_tail(node)
        )

    def stop_node(self, node: Node, timeout: float = 30.0) -> None:
        """SIGTERM to the node's process group (a clean Erlang stop), bounded; then SIGKILL."""
        proc, node.proc = node.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # the Erlang VM may outlive the launcher script briefly: wait for the group to go
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, node: Node, n: int = 15) -> str:
        try:
            return "\n".join((node.dir / "stdout.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss_kib(self) -> int:
        """Resident memory of every running node's VM (KiB), from /proc."""
        total = 0
        for node in self.nodes:
            if node.proc is None:
                continue
            for pid in group_pids(node.proc.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    continue
        return total

    def close(self) -> None:
        for node in self.nodes:
            self.stop_node(node)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _accepts_mqtt(port: int) -> bool:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cellctl-probe-{secrets.token_hex(4)}")
    try:
        client.connect("127.0.0.1", port, 10)
        for _ in range(100):  # bounded: CONNACK within about 10 s (a loaded node is slow to answer)
            client.loop(timeout=0.1)
            if client.is_connected():
                return True
        return False
    except OSError:
        return False
    finally:
        client.disconnect()
        with contextlib.suppress(OSError):
            client.loop(timeout=0.1)


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            out.append(int(entry.name))
    return out
