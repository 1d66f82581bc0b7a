"""The simulated machine as an asyncua OPC UA server, with faults.

Address space (namespace ``urn:cellctl:sim:opcua-machine``, string NodeIds)::

    Objects/Machine                         s=Machine
      State/CurrentState, ItemState, OperationMode
      Counters/GoodParts, BadParts
      Temperatures/Spindle, Coolant         (EURange properties)
      Spindle/Speed, Override (writable UInt16, 0..200 %)
      Job/JobId, OrderNumber, Program, State, ProducedQuantity,
          GoodQuantity, ScrapQuantity, Progress   (the current or last job)
      Alarm/Code, Active
      Process/Setpoint                      (writable Double, 0..1000 or `setpoint_range`,
                                            else BadOutOfRange)
      Identification/SerialNumber
      StartJob(jobId: String)               method: Idle -> Running, else BadInvalidState
    Objects/Bench/V0000...                  only with bench_items: Int64, every one
                                            written with the tick's time stamp (µs)

Faults: `restart()` stops the server and starts a new one on the same port (sessions
and subscriptions die, the address space is rebuilt, optionally with the namespace at
another index); `stop_listening()`/`start_listening()` split that in two; `stall()`
keeps every connection open but stops reading requests, so nothing is answered;
`drop_sessions()` closes the sessions but keeps the connections.

Uses asyncua internals for faults and range checks (tested with asyncua 2.1.0):
`InternalServer.asyncio_transports` (a list the protocol appends each connection to),
`InternalServer.time_task` (cancelled on stop)
and `InternalServer.attribute_service.write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from asyncua import ua as _ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from cellctl_sim.opcua.clienttrust import ClientTrust, Refusal, guard_secure_channel
from cellctl_sim.opcua.machine import (
    OVERRIDE_RANGE,
    POINTS,
    SETPOINT_RANGE,
    WRITABLE,
    JobRefused,
    Machine,
    Value,
)

log = logging.getLogger("cellctl_sim.opcua")

# asyncua annotates its types with int subclasses (ua.UInt32, ...) that plain values do
# not satisfy under mypy; the simulator uses it untyped.
ua: Any = _ua

NAMESPACE: Final = "urn:cellctl:sim:opcua-machine"
APPLICATION_URI: Final = "urn:cellctl:sim:opcua-server"
MIN_TICK: Final = 0.01
_VARIANT: Final = {
    "String": ua.VariantType.String,
    "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32,
    "UInt16": ua.VariantType.UInt16,
    "Double": ua.VariantType.Double,
    "Boolean": ua.VariantType.Boolean,
    "Int64": ua.VariantType.Int64,
}
_RANGES: Final[dict[str, tuple[float, float]]] = {  # writable points: EURange and write check
    "Process/Setpoint": SETPOINT_RANGE,
    "Spindle/Override": (float(OVERRIDE_RANGE[0]), float(OVERRIDE_RANGE[1])),
}
_EU_RANGES: Final[dict[str, tuple[float, float]]] = {  # read-only points: EURange only
    "Temperatures/Spindle": (0.0, 120.0),
    "Temperatures/Coolant": (0.0, 80.0),
    "Spindle/Speed": (0.0, 12_000.0),
}
ALL_POLICIES: Final = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


def node_id(name: str, ns: int) -> Any:
    """The NodeId of a machine point (``Process/Setpoint`` -> ``s=Machine.Process.Setpoint``)."""
    return ua.NodeId("Machine." + name.replace("/", "."), ns)


def bench_name(i: int) -> str:
    return f"V{i:04d}"


@dataclass(frozen=True)
class Security:
    """A secure endpoint: Sign and SignAndEncrypt with the three current policies.

    The server certificate and key are generated into `cert_dir` (kept across restarts,
    so a client that trusted it keeps trusting it; `regenerate()` makes a new one).
    `users` maps user name -> password; anonymous logins when there are no users, or
    with `allow_anonymous`; the unsecured endpoint only with `allow_insecure`.
    With `trust_clients`, a client certificate must be in ``<cert_dir>/pki/trusted/``
    (a refused one is parked in ``pki/rejected/`` and answered as `refusal` says);
    otherwise any is accepted.
    """

    cert_dir: Path
    users: Mapping[str, str] = field(default_factory=dict)
    allow_anonymous: bool = False
    allow_insecure: bool = False
    trust_clients: bool = False
    refusal: Refusal = "service_fault"

    @property
    def client_trust(self) -> ClientTrust:
        return ClientTrust(self.cert_dir / "pki", self.refusal)

    @property
    def anonymous(self) -> bool:
        """Whether anonymous logins are accepted: what the endpoints advertise and what
        the user manager accepts come from this one place, so they cannot disagree."""
        return self.allow_anonymous or not self.users

    @property
    def cert_path(self) -> Path:
        return self.cert_dir / "server-cert.der"

    @property
    def key_path(self) -> Path:
        return self.cert_dir / "server-key.pem"

    def ensure_certificate(self, *, regenerate: bool = False, hostname: str = "localhost") -> bytes:
        """Create the server certificate if missing; returns it (DER)."""
        if regenerate or not self.cert_path.is_file() or not self.key_path.is_file():
            self.cert_dir.mkdir(parents=True, exist_ok=True)
            key = cert_gen.generate_private_key()
            cert = cert_gen.generate_self_signed_app_certificate(
                key,
                "cellctl simulated OPC UA machine",
                {"organizationName": "cellctl-sim"},
                [
                    x509.UniformResourceIdentifier(APPLICATION_URI),
                    x509.DNSName(hostname),
                    x509.DNSName(socket.gethostname()),
                ],
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                days=365,
            )
            self.key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
            self.key_path.chmod(0o600)
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return self.cert_path.read_bytes()


class _UserManager:
    """asyncua's user manager interface: a User for accepted credentials, else None."""

    def __init__(self, security: Security | None) -> None:
        self.security = security

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        sec = self.security
        if sec is None:
            return User(role=UserRole.User)
        if username is None:
            return User(role=UserRole.User) if sec.anonymous else None
        if sec.users.get(username) == password and password is not None:
            return User(role=UserRole.User, name=username)
        return None


class _Transports(list[Any]):
    """asyncua appends each new connection's transport here; while stalled, a new
    connection is accepted but never read (a hung server, not a refusing one). With
    strict client trust, each connection refuses untrusted client certificates."""

    def __init__(self, sim: SimOpcUaServer) -> None:
        super().__init__()
        self.sim = sim

    def append(self, transport: Any) -> None:
        super().append(transport)
        security = self.sim.security
        if security is not None and security.trust_clients:
            guard_secure_channel(transport, security.client_trust)
        if self.sim.stalled:
            transport.pause_reading()


class SimOpcUaServer:
    """The simulated machine served over OPC UA (binary TCP) on 127.0.0.1.

    ``async with SimOpcUaServer(tick=0.1, seed=1) as sim:`` then ``sim.url``. With
    ``auto_tick=False`` values change only on ``await sim.step()``; with
    ``autonomous=False`` the state machine changes state only when told.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tick: float = 0.5,
        seed: int | None = None,
        auto_tick: bool = True,
        autonomous: bool = True,
        security: Security | None = None,
        namespace_shift: int = 0,
        bench_items: int = 0,
        bench_rate: float = 10.0,
        bench_jitter: float = 0.5,
        setpoint_range: tuple[float, float] = SETPOINT_RANGE,
    ) -> None:
        if tick < MIN_TICK:
            raise ValueError(f"tick must be at least {MIN_TICK} s, got {tick}")
        if bench_items < 0 or bench_rate <= 0 or not 0 <= bench_jitter < 1:
            raise ValueError("bench_items must be >= 0, bench_rate > 0 and 0 <= bench_jitter < 1")
        if not setpoint_range[0] <= setpoint_range[1]:
            raise ValueError(f"setpoint_range must be (low, high) with low <= high, got {setpoint_range}")
        self.host = host
        # What the writable nodes accept (their EURange): a write outside is refused with
        # BadOutOfRange, as a real server checks a setpoint against its own limits.
        self.ranges: dict[str, tuple[float, float]] = {**_RANGES, "Process/Setpoint": setpoint_range}
        self.port = port
        self.tick = tick
        self.auto_tick = auto_tick
        self.security = security
        self.namespace_shift = namespace_shift
        self.bench_items = bench_items
        self.bench_rate = bench_rate
        # Periods vary by +-jitter around 1/rate (same mean rate), so writes fall at every
        # phase of a client's publishing cycle: latency figures then do not depend on
        # when a subscription happened to start relative to the writes.
        self.bench_jitter = bench_jitter
        self._bench_rng = random.Random(seed)
        self.machine = Machine(tick=tick, seed=seed, autonomous=autonomous)
        self.server: Server | None = None
        self.ns = 0
        self.stalled = False
        self.starts = 0
        self.bench_ticks = 0
        self.bench_missed = 0
        self._nodes: dict[str, Any] = {}
        self._bench_nodes: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one start/stop at a time, and no writes meanwhile

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SimOpcUaServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/cellctl-sim"

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> int:
        """Build the address space and listen; returns the port (stable across restarts)."""
        await self.start_listening()
        if self.auto_tick and not self._tasks:
            self._tasks.append(asyncio.create_task(self._tick_loop(), name="opcua-sim-tick"))
            if self.bench_items:
                self._tasks.append(asyncio.create_task(self._bench_loop(), name="opcua-sim-bench"))
        return self.port

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.stop_listening()

    async def start_listening(self) -> None:
        async with self._lock:
            if self.server is not None:
                return
            server = await self._build()
            try:
                await server.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await server.stop()
                raise
            assert server.bserver is not None
            self.port = server.bserver.port
            self.server = server
            self.starts += 1
            log.info("listening on %s (namespace %s at index %d)", self.url, NAMESPACE, self.ns)

    async def stop_listening(self) -> None:
        """Stop the server: every connection closes, sessions and subscriptions are gone."""
        async with self._lock:
            server, self.server = self.server, None
            if server is not None:
                await _stop_clock(server)
                await server.stop()

    async def restart(self, *, down_for: float = 0.0, namespace_shift: int | None = None) -> None:
        """Stop and start again on the same port, after `down_for` seconds of silence.
        `namespace_shift` moves the machine's namespace to another index."""
        await self.stop_listening()
        if down_for > 0:
            await asyncio.sleep(down_for)
        if namespace_shift is not None:
            self.namespace_shift = namespace_shift
        await self.start_listening()

    def stall(self) -> None:
        """Stop reading requests on every connection (new ones too): nothing is answered."""
        self.stalled = True
        if self.server is not None:
            for transport in list(self.server.iserver.asyncio_transports):
                with contextlib.suppress(Exception):
                    transport.pause_reading()

    def resume(self) -> None:
        self.stalled = False
        if self.server is not None:
            for transport in list(self.server.iserver.asyncio_transports):
                with contextlib.suppress(Exception):
                    transport.resume_reading()

    async def drop_sessions(self) -> None:
        """Close every session but keep the connections, as a server does when a session
        times out: the next request on such a connection gets a session fault
        (asyncua's server answers BadSessionNotActivated)."""
        if self.server is None:
            return
        for transport in list(self.server.iserver.asyncio_transports):
            session = getattr(getattr(transport.get_protocol(), "processor", None), "session", None)
            if session is not None:
                await session.close_session()

    @property
    def connections(self) -> int:
        return len(self.server.iserver.asyncio_transports) if self.server is not None else 0

    # -- building the server ----------------------------------------------------------------

    async def _build(self) -> Server:
        sec = self.security
        server = Server(user_manager=_UserManager(sec))  # type: ignore[arg-type]
        server.iserver.asyncio_transports = _Transports(self)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/cellctl-sim")
        server.set_server_name("cellctl simulated OPC UA machine")
        await server.set_application_uri(APPLICATION_URI)
        server.product_uri = "urn:cellctl:sim"
        if sec is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        else:
            sec.ensure_certificate(hostname=self.host)
            if sec.trust_clients:
                sec.client_trust.ensure_dirs()
            await server.load_certificate(str(sec.cert_path))
            await server.load_private_key(str(sec.key_path))
            policies = list(ALL_POLICIES)
            if sec.allow_insecure:
                policies.insert(0, ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            tokens: list[type] = [ua.UserNameIdentityToken] if sec.users else []
            if sec.anonymous:
                tokens.append(ua.AnonymousIdentityToken)
            server.set_identity_tokens(tokens)
        for n in range(self.namespace_shift):
            await server.register_namespace(f"urn:cellctl:sim:placeholder-{n}")
        self.ns = await server.register_namespace(NAMESPACE)
        await self._populate(server)
        self._guard_writes(server)
        return server

    async def _populate(self, server: Server) -> None:
        ns = self.ns
        objects = server.nodes.objects
        machine = await objects.add_object(ua.NodeId("Machine", ns), ua.QualifiedName("Machine", ns))
        folders: dict[str, Any] = {}
        now = dt.datetime.now(dt.UTC)
        self._nodes = {}
        for name, type_name in POINTS.items():
            group, _, leaf = name.partition("/")
            if group not in folders:
                folders[group] = await machine.add_object(
                    ua.NodeId(f"Machine.{group}", ns), ua.QualifiedName(group, ns)
                )
            nid = node_id(name, ns)
            value = self.machine.values[name]
            var = await folders[group].add_variable(
                nid, ua.QualifiedName(leaf, ns), ua.Variant(value, _VARIANT[type_name])
            )
            await var.write_value(ua.DataValue(ua.Variant(value, _VARIANT[type_name]), SourceTimestamp=now))
            if name in WRITABLE:
                await var.set_writable()
            eu_range = self.ranges.get(name) or _EU_RANGES.get(name)
            if eu_range is not None:
                low, high = eu_range
                await var.add_property(
                    ua.NodeId(f"Machine.{name.replace('/', '.')}.EURange", ns),
                    ua.QualifiedName("EURange", 0),
                    ua.Range(Low=low, High=high),
                )
            self._nodes[name] = nid
        job = folders["Job"]
        del job
        job_arg = ua.Argument(
            Name="jobId",
            DataType=ua.NodeId(ua.ObjectIds.String),
            ValueRank=-1,
            Description=ua.LocalizedText("identifier of the job to run"),
        )
        await machine.add_method(
            ua.NodeId("Machine.StartJob", ns), ua.QualifiedName("StartJob", ns), self._start_job, [job_arg], []
        )
        self._bench_nodes = []
        if self.bench_items:
            bench = await objects.add_object(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
            for i in range(self.bench_items):
                nid = ua.NodeId(f"Bench.{bench_name(i)}", ns)
                await bench.add_variable(nid, ua.QualifiedName(bench_name(i), ns), ua.Variant(0, ua.VariantType.Int64))
                self._bench_nodes.append(nid)

    async def _start_job(self, parent: Any, job_id: Any) -> Any:
        try:
            self.machine.start_job(str(job_id.Value) if job_id.Value is not None else "")
        except JobRefused:
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        except ValueError:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        await self._render()
        return []

    def _guard_writes(self, server: Server) -> None:
        """Range-check writes to the writable points (BadOutOfRange) and let the machine
        adopt accepted ones; asyncua itself already refuses a wrong data type."""
        service = server.iserver.attribute_service
        original = service.write
        by_node = {nid: name for name, nid in self._nodes.items() if name in WRITABLE}

        async def write(params: Any, user: Any = None) -> list[Any]:
            results: list[Any | None] = [None] * len(params.NodesToWrite)
            forward: list[int] = []
            for k, wv in enumerate(params.NodesToWrite):
                name = by_node.get(wv.NodeId) if wv.AttributeId == ua.AttributeIds.Value else None
                value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
                if name is not None and isinstance(value, int | float) and not isinstance(value, bool):
                    low, high = self.ranges[name]
                    if not low <= value <= high:
                        results[k] = ua.StatusCode(ua.StatusCodes.BadOutOfRange)
                        continue
                forward.append(k)
            if forward:
                sub = ua.WriteParameters(NodesToWrite=[params.NodesToWrite[k] for k in forward])
                done = await (original(sub) if user is None else original(sub, user=user))
                for k, status in zip(forward, done, strict=True):
                    results[k] = status
                    name = by_node.get(params.NodesToWrite[k].NodeId)
                    if name is not None and status.is_good():
                        self.machine.write(name, params.NodesToWrite[k].Value.Value.Value)
            return [r if r is not None else ua.StatusCode(ua.StatusCodes.BadInternalError) for r in results]

        service.write = write  # type: ignore[method-assign]

    # -- values -----------------------------------------------------------------------------

    async def step(self, n: int = 1) -> None:
        """Advance the machine `n` ticks and publish its values (tests drive time this way)."""
        for _ in range(n):
            self.machine.advance()
        await self._render()

    async def _render(self) -> None:
        """Write every value that changed into its node, with a source timestamp."""
        server = self.server
        if server is None:
            return
        now = dt.datetime.now(dt.UTC)
        for name, nid in self._nodes.items():
            value = self.machine.values[name]
            current = server.read_attribute_value(nid)
            if current.Value is not None and current.Value.Value == value and type(current.Value.Value) is type(value):
                continue
            dv = ua.DataValue(ua.Variant(value, _VARIANT[POINTS[name]]), SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(nid, dv)

    async def set_value(self, name: str, value: Value, *, status: int | None = None) -> None:
        """Force a node's value (and optionally its status code, e.g. an Uncertain one)."""
        server = self.server
        if server is None:
            raise RuntimeError("the server is not running")
        now = dt.datetime.now(dt.UTC)
        dv = ua.DataValue(
            ua.Variant(value, _VARIANT[POINTS[name]]),
            StatusCode=ua.StatusCode(status) if status is not None else ua.StatusCode(),
            SourceTimestamp=now,
            ServerTimestamp=now,
        )
        await server.write_attribute_value(self._nodes[name], dv)

    def value(self, name: str) -> Any:
        """What a client reads from the node now."""
        if self.server is None:
            raise RuntimeError("the server is not running")
        dv = self.server.read_attribute_value(self._nodes[name])
        return dv.Value.Value if dv.Value is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {name: self.value(name) for name in POINTS}

    async def _tick_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += self.tick
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()
            async with self._lock:
                self.machine.advance()
                await self._render()

    async def _bench_loop(self) -> None:
        """About every 1/bench_rate s, write every bench node with the time stamp in µs."""
        period = 1.0 / self.bench_rate
        jitter = self.bench_jitter
        next_at = time.monotonic()
        while True:
            next_at += period * (1.0 + self._bench_rng.uniform(-jitter, jitter))
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.bench_missed += 1
                next_at = time.monotonic()
            async with self._lock:
                server = self.server
                if server is None:
                    continue
                stamp_ns = time.time_ns()
                now = dt.datetime.fromtimestamp(stamp_ns / 1e9, dt.UTC)
                dv = ua.DataValue(ua.Variant(stamp_ns // 1000, ua.VariantType.Int64), SourceTimestamp=now, ServerTimestamp=now)
                for nid in self._bench_nodes:
                    await server.write_attribute_value(nid, dv)
                self.bench_ticks += 1


async def _stop_clock(server: Server) -> None:
    """asyncua's stop waits for its once-a-second CurrentTime task to wake up; cancel it
    instead, so a restart takes the time of the rebuild only."""
    iserver: Any = server.iserver
    task = getattr(iserver, "time_task", None)
    if isinstance(task, asyncio.Task):
        iserver._time_task_stop = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        iserver.time_task = None


def temporary_security(users: Mapping[str, str] | None = None, **kw: Any) -> Security:
    """A Security with its certificate in a new temporary directory (demos, the CLI)."""
    return Security(Path(tempfile.mkdtemp(prefix="cellctl-sim-opcua-")), users=dict(users or {}), **kw)
