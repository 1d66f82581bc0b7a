"""A fleet of real `cellctl run` daemons on this machine, for the fleet test and
bench/fleet.py: each cell its own identity, config and state dir, publishing either to one
site broker (`single`) or to a cell broker of its own bridged to the site broker
(`bridged`, the usual edge topology: the cell broker keeps queuing while the site link
is down), or to a clustered broker of three RabbitMQ nodes (`cluster`), every cell's
`backbone.hosts` listing the nodes (starting at a different one, so the cells spread
over the cluster) and failing over when one stops. Every process is ours and is stopped
by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from cellctl.localbroker import Mosquitto
from cellctl.testing.cell import modbus_device, root_topic
from cellctl.testing.mqtt import Message
from cellctl.testing.rabbitmq import RabbitCluster

Topology = Literal["single", "bridged", "cluster"]


def bridge_lines(name: str, site_port: int) -> list[str]:
    """mosquitto bridge settings: every UNS and Sparkplug topic out to the site, QoS 1, with
    a persistent session so the cell broker queues while the site is away."""
    return [
        f"connection {name}",
        f"address 127.0.0.1:{site_port}",
        f"remote_clientid bridge-{name}"[:64],
        "cleansession false",
        "restart_timeout 1 5",
        "topic uns/# out 1",
        "topic spBv1.0/# out 1",
    ]


@dataclass
class Cell:
    name: str
    config: Path
    log: Path
    broker: Mosquitto | None = None  # the cell's own broker (bridged topology)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return root_topic(self.name)


@dataclass
class Fleet:
    """`cells` daemons with `devices` simulated Modbus devices each (units 1.. of the
    simulator at `modbus_port`, shared by every cell) polled every `poll_interval` s."""

    base: Path
    cells: int
    topology: Topology
    modbus_port: int
    devices: int = 1
    poll_interval: float = 0.5
    site: Mosquitto = field(init=False)  # single, bridged
    cluster: RabbitCluster | None = field(default=None, init=False)
    members: list[Cell] = field(default_factory=list, init=False)

    @property
    def site_port(self) -> int:
        """Where the site consumer subscribes: the site broker, or the cluster's last node
        (the node a bench stops is the first)."""
        return self.cluster.nodes[-1].mqtt_port if self.cluster is not None else self.site.port

    def start(self) -> None:
        """Start the brokers and the cells; on failure whatever started is stopped again."""
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _start(self) -> None:
        if self.topology == "cluster":
            self.cluster = RabbitCluster(3)
            self.cluster.start()
        else:
            self.site = Mosquitto(persistence=True)
            self.site.start()
        for i in range(self.cells):
            name = f"fleet-cell-{i:03d}"
            folder = self.base / name
            folder.mkdir(parents=True, exist_ok=True)
            broker = None
            if self.topology == "bridged":
                broker = Mosquitto()
                with broker.config_path.open("a", encoding="utf-8") as f:
                    f.write("\n".join(bridge_lines(name, self.site.port)) + "\n")
                broker.start()
            if self.cluster is not None:
                nodes = self.cluster.addresses()
                backbone: dict[str, object] = {"hosts": nodes[i % len(nodes) :] + nodes[: i % len(nodes)]}
            else:
                port = broker.port if broker is not None else self.site.port
                backbone = {"host": "127.0.0.1", "port": port}
            cell = Cell(name, folder / "cell.yaml", folder / "daemon.log", broker)
            cell.config.write_text(yaml.safe_dump(self._config(name, folder, backbone)), encoding="utf-8")
            self.members.append(cell)
        for cell in self.members:
            with cell.log.open("ab") as log:
                cell.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cellctl.cli.main",
                        "--log-format",
                        "json",
                        "run",
                        str(cell.config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

    def _config(self, name: str, folder: Path, backbone: dict[str, object]) -> dict[str, object]:
        devices = [
            modbus_device(
                f"meter-{u}", "sim-energy-meter", self.modbus_port, u, poll_interval=self.poll_interval
            )
            for u in range(1, self.devices + 1)
        ]
        return {
            "identity": {"enterprise": "test", "site": "lab", "area": "a1", "line": "l1", "cell": name},
            "state_dir": str(folder / "state"),
            "outbox": {"fsync": "off"},
            "backbone": {**backbone, "reconnect_min": 0.2, "reconnect_max": 1},
            "publish": {"prefix": "uns/v1"},
            "devices": devices,
        }

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.members if c.proc is not None]

    def stop(self, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every daemon (by PID), wait for each (bounded), then stop the brokers.
        Returns the daemons' exit codes (None: killed after the timeout)."""
        codes: list[int | None] = []
        for c in self.members:
            if c.proc is not None and c.proc.poll() is None:
                os.kill(c.proc.pid, signal.SIGTERM)
        for c in self.members:
            if c.proc is None:
                continue
            try:
                codes.append(c.proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(timeout=5)
                codes.append(None)
        for c in self.members:
            if c.broker is not None:
                c.broker.stop()
        if self.cluster is not None:
            self.cluster.close()
        else:
            self.site.stop()
        return codes


@dataclass
class Completeness:
    """Per device of one cell: data messages received, seqs missing, duplicates."""

    received: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[int]] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)


def completeness(messages: list[Message], root: str) -> Completeness:
    """Every `seq` of every device's data from 1 to the highest seen, once (duplicates are
    at-least-once delivery's documented ones and only counted)."""
    seqs: dict[str, Counter[int]] = {}
    for m in messages:
        if m.topic.startswith(root + "/") and m.topic.endswith("/data"):
            device = m.topic[len(root) + 1 : -len("/data")]
            seqs.setdefault(device, Counter())[m.json()["seq"]] += 1
    out = Completeness()
    for device, counts in seqs.items():
        out.received[device] = sum(counts.values())
        out.missing[device] = sorted(set(range(1, max(counts) + 1)) - set(counts))
        out.duplicates[device] = sum(n - 1 for n in counts.values())
    return out
