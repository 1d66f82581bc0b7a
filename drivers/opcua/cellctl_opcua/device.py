"""An open OPC UA device: one asyncua session, one subscription, optional polled groups.

Recovery is deliberately simple and total. asyncua's own reconnect (transfer
subscriptions, reactivate sessions) is off: any sign that the session is gone (socket
closed, keep-alive overdue, subscription status change, server state not Running)
ends `subscribe()` with DeviceUnavailable, the engine marks every point bad and
reopens with backoff, and the reopen does everything from scratch: new session,
NamespaceArray read again (indexes may have moved), NodeIds and browse paths resolved
again, subscription and monitored items created again. A restarted server is
indistinguishable from a new one, which is exactly the case gateways get wrong.

This module imports asyncua; the plugin imports it only when a device is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies
from asyncua.ua import status_codes
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from pydantic import BaseModel

from cellctl.driver import DeviceContext, DeviceUnavailable, PointSpec, Reading, WriteRejected, secret_path
from cellctl_opcua.browse import builtin_of
from cellctl_opcua.config import (
    DataChangeTrigger,
    MethodAddress,
    NodeAddress,
    OpcUaAddress,
    OpcUaConnection,
    OpcUaOptions,
)
from cellctl_opcua.nodeid import NodeRef
from cellctl_opcua.pki import PkiError, TrustStore, der_of, thumbprint
from cellctl_opcua.uahelp import as_node_id, forward_hierarchical, node_id
from cellctl_opcua.values import ACCEPTED, Builtin, Unconvertible, code_only, received, to_builtin

log = structlog.get_logger("cellctl.opcua")

SERVER_STATE_HANDLE: Final = 0x7FFF_FFFF  # client handle of the hidden ServerStatus.State item
_SERVER_STATE_NODE: Final = 2259  # i=2259, Server_ServerStatus_State
_NAMESPACE_ARRAY_NODE: Final = 2255
_RUNNING: Final = 0
_SERVER_STATES: Final = {
    0: "Running",
    1: "Failed",
    2: "NoConfiguration",
    3: "Suspended",
    4: "Shutdown",
    5: "Test",
    6: "CommunicationFault",
    7: "Unknown",
}
_GOOD_MASK: Final = 0xC000_0000
_BAD_BIT: Final = 0x8000_0000

POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES: Final = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_TRIGGERS: Final[dict[DataChangeTrigger, ua.DataChangeTrigger]] = {
    "status": ua.DataChangeTrigger.Status,
    "status_value": ua.DataChangeTrigger.StatusValue,
    "status_value_timestamp": ua.DataChangeTrigger.StatusValueTimestamp,
}
_AUTH_REFUSED: Final = frozenset(
    {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid", "BadUserSignatureInvalid"}
)
_CERT_REFUSED: Final = frozenset(
    {
        "BadCertificateUntrusted",
        "BadSecurityChecksFailed",
        "BadCertificateInvalid",
        "BadCertificateUriInvalid",
        "BadCertificateTimeInvalid",
        "BadCertificateRevoked",
        "BadCertificateUseNotAllowed",
        "BadSecurityPolicyRejected",
    }
)
# Status codes that say the session or the link is gone, not that the request was wrong:
# a write or call answered with one of these is DeviceUnavailable, not a refusal.
_SESSION_GONE: Final = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadSecureChannelTokenUnknown",
        "BadTcpSecureChannelUnknown",
        "BadConnectionClosed",
        "BadNotConnected",
        "BadServerNotConnected",
        "BadDisconnect",
        "BadServerHalted",
        "BadShutdown",
        "BadTimeout",
        "BadRequestTimeout",
        "BadCommunicationError",
    }
)
_REPORTED_REJECTIONS: set[tuple[str, str]] = set()  # (device, thumbprint) already logged


def status_name(code: int) -> str:
    """The symbolic name of a StatusCode (info bits ignored), e.g. BadNodeIdUnknown."""
    name, _ = status_codes.get_name_and_doc(code_only(code))
    return name


def _describe_status(code: int) -> str:
    name, doc = status_codes.get_name_and_doc(code_only(code))
    return f"{name} ({doc.rstrip('.').lower()})" if doc and not doc.startswith("Unknown") else name


class OpcUaError(WriteRejected):
    """A write or method call the server refused, or a point that cannot be written.

    A `WriteRejected`, so the command path counts it and the device stays online:
    `reason` (and `status`) is the status name when the server gave one (e.g.
    BadOutOfRange), str() the full message naming device, point and value.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(status or message)
        self.args = (message,)
        self.status = status


class _ChannelRefused(Exception):
    """Opening the secure channel failed: the server answered our OpenSecureChannel
    (signed with our certificate) with a fault, an error message or a closed socket.
    asyncua surfaces the first of these as a bare AssertionError."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def _first_cert(der: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its issuers)."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    first = der[1]
    if first < 0x80:
        return der[: 2 + first]
    n = first & 0x7F
    length = int.from_bytes(der[2 : 2 + n], "big")
    return der[: 2 + n + length]


def _model(value: BaseModel, model: type[Any]) -> Any:
    if isinstance(value, model):
        return value
    return model.model_validate(value.model_dump())


_asyncua_level_set: int | None = None  # the level quiet_asyncua() last gave "asyncua"


def quiet_asyncua() -> None:
    """asyncua logs every lost connection as a warning with a traceback; the device
    task reports the same once, as a transition: keep it quiet unless debugging. When
    debugging, keep its INFO (connects, channels, sessions) but not its DEBUG, which
    traces every request and response (about 30 lines a second per subscribed device;
    142 of 152 lines of a debug log). A level someone else set on "asyncua" (to trace
    the wire: ``logging.getLogger("asyncua").setLevel(logging.DEBUG)``) is kept."""
    global _asyncua_level_set
    logger = logging.getLogger("asyncua")
    if logger.level in (logging.NOTSET, _asyncua_level_set):
        debugging = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        _asyncua_level_set = logging.INFO if debugging else logging.CRITICAL
        logger.setLevel(_asyncua_level_set)
    if not any(isinstance(f, _RedactCredentials) for f in logging.getLogger("asyncua.client").filters):
        redact = _RedactCredentials()
        for name in ("asyncua.client", "asyncua.client.ua_client", "asyncua.client.ua_client.UASocketProtocol"):
            logging.getLogger(name).addFilter(redact)


class _RedactCredentials(logging.Filter):
    """asyncua logs every request at debug level, ActivateSession (with the user's
    password) included: drop those records, the password must never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        return not any(type(a).__name__ in ("ActivateSessionRequest", "ActivateSessionParameters") for a in args)


class _Resolver:
    """NodeIds by namespace URI and browse paths into this session's NodeIds."""

    def __init__(self, client: Client, namespaces: list[str], batch: int) -> None:
        self.client = client
        self.namespaces = namespaces
        self.index = {uri: i for i, uri in enumerate(namespaces)}
        self.batch = batch

    def ns_index(self, uri: str | None) -> int:
        if uri is None:
            return 0
        i = self.index.get(uri)
        if i is None:
            raise LookupError(f"namespace {uri!r} is not on the server (its NamespaceArray has {len(self.namespaces)} entries)")
        return i

    def node_id(self, ref: NodeRef) -> ua.NodeId:
        kinds = {
            "i": ua.NodeIdType.Numeric,
            "s": ua.NodeIdType.String,
            "g": ua.NodeIdType.Guid,
            "b": ua.NodeIdType.ByteString,
        }
        return node_id(ref.identifier, self.ns_index(ref.namespace), kinds[ref.kind])

    async def resolve(self, addresses: Sequence[NodeAddress]) -> list[ua.NodeId | str]:
        """Each address as a NodeId, or a reason why it cannot be one (that point goes bad)."""
        out: list[ua.NodeId | str] = [""] * len(addresses)
        paths: list[tuple[int, ua.BrowsePath]] = []
        for k, addr in enumerate(addresses):
            try:
                ref = addr.node_ref
                if ref is not None:
                    out[k] = self.node_id(ref)
                    continue
                elements = [
                    forward_hierarchical(ua.QualifiedName(e.name, self.ns_index(e.namespace)))
                    for e in addr.path_elements
                ]
                start = self.node_id(addr.root_ref)
            except LookupError as exc:
                out[k] = f"{addr.describe()}: {exc.args[0]}"
                continue
            paths.append((k, ua.BrowsePath(StartingNode=start, RelativePath=ua.RelativePath(Elements=elements))))
        for chunk_start in range(0, len(paths), self.batch):
            chunk = paths[chunk_start : chunk_start + self.batch]
            results = await self.client.uaclient.translate_browsepaths_to_nodeids([p for _, p in chunk])
            for (k, _), result in zip(chunk, results, strict=True):
                code = result.StatusCode.value
                if code & _GOOD_MASK or not result.Targets:
                    out[k] = f"browse path {addresses[k].describe()} not found: {status_name(code)}"
                else:
                    out[k] = as_node_id(result.Targets[0].TargetId)
        return out


@dataclasses.dataclass(slots=True)
class _PollGroup:
    interval: float
    handles: list[int]
    params: ua.ReadParameters


class OpcUaDevice:
    """An open device: Subscriber, Writer, Browser and method caller over one session."""

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.id = ctx.device_id
        self.connection: OpcUaConnection = _model(ctx.connection, OpcUaConnection)
        self.options: OpcUaOptions = _model(ctx.options, OpcUaOptions)
        self.points: list[PointSpec] = list(ctx.points)
        self.addresses: list[OpcUaAddress] = [_model(p.address, OpcUaAddress) for p in self.points]
        self.timeout = ctx.timeout
        self.log = log.bind(device=self.id)
        self.client: Client | None = None
        self.namespaces: list[str] = []
        self.resolver: _Resolver | None = None
        self.node_ids: list[ua.NodeId | None] = [None] * len(self.points)
        self.problems: dict[int, str] = {}  # handle -> why the point cannot be read
        self._by_index = {p.index: k for k, p in enumerate(self.points)}
        self._point_index = [p.index for p in self.points]
        self._accepted = [ACCEPTED[p.type] for p in self.points]
        self._types = [p.type for p in self.points]
        self._data_types: dict[int, tuple[Builtin, int]] = {}
        self._type_cache: dict[str, Builtin | None] = {}
        self._methods: dict[str, tuple[ua.NodeId, ua.NodeId, list[Any]]] = {}
        self._on_reading: Callable[[Reading], None] | None = None
        self._alive_at = time.monotonic()
        self._lost: str | None = None
        self._wake = asyncio.Event()
        self._own_cert: tuple[Path, str] | None = None  # (path, thumbprint) when secured
        self._may_repeat = any((a.queue_size or self.options.queue_size) > 1 for a in self.addresses)

    # -- connect ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, authenticate, read the NamespaceArray and resolve every point."""
        quiet_asyncua()
        conn = self.connection
        client = Client(conn.endpoint, timeout=self.timeout, watchdog_intervall=self.options.keepalive)
        client.name = client.description = f"cellctl ({self.id})"
        client.product_uri = "urn:cellctl"
        client.session_timeout = int(conn.session_timeout * 1000)
        client.secure_channel_timeout = max(client.session_timeout, 600_000)
        self.client = client
        try:
            await self._configure_security(client)
            if conn.username is not None and conn.password_file is not None:
                client.set_user(conn.username)
                client.set_password(self._read_password(conn))
            with self._channel_phase(client):
                await client.connect(auto_reconnect=False)
        except DeviceUnavailable:
            await self.close()
            raise
        except BaseException as exc:
            await self.close()
            if isinstance(exc, Exception):
                raise DeviceUnavailable(self._connect_error(exc)) from None
            raise
        try:
            self.namespaces = list(await client.get_namespace_array())
            self.resolver = _Resolver(client, self.namespaces, self.options.max_items_per_request)
            resolved = await self.resolver.resolve(self.addresses)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, Exception):
                raise DeviceUnavailable(self._request_error("resolving nodes", exc)) from None
            raise
        for k, r in enumerate(resolved):
            if isinstance(r, str):
                self.problems[k] = r
            else:
                self.node_ids[k] = r
        client.connection_lost_callback = self._connection_lost
        with contextlib.suppress(AttributeError):  # private in asyncua; we also check on a timer
            client.uaclient._add_state_listener(lambda _state: self._wake.set())
        self.log.debug("opcua_connected", endpoint=conn.endpoint, namespaces=len(self.namespaces))

    @contextlib.contextmanager
    def _channel_phase(self, client: Client) -> Iterator[None]:
        """While connecting, mark failures of OpenSecureChannel as such: with security,
        that step is where a server refuses our certificate, and asyncua reports it as
        an AssertionError or a lost connection that say nothing of the cause."""
        if not self.connection.secured:
            yield
            return
        original = client.open_secure_channel

        async def open_secure_channel(renew: bool = False) -> None:
            try:
                await original(renew)
            except (AssertionError, ConnectionError, UaStatusCodeError) as exc:
                raise _ChannelRefused(exc) from exc

        vars(client)["open_secure_channel"] = open_secure_channel
        try:
            yield
        finally:
            vars(client).pop("open_secure_channel", None)

    def _read_password(self, conn: OpcUaConnection) -> str:
        assert conn.password_file is not None
        try:
            # a bare name may be a systemd credential (LoadCredential=, cellctl.credentials)
            return secret_path(conn.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise DeviceUnavailable(
                f"connection.password_file: cannot read {str(conn.password_file)!r}: {exc.strerror}"
            ) from None

    async def _configure_security(self, client: Client) -> None:
        conn = self.connection
        if not conn.secured:
            return
        store = TrustStore(conn.pki_dir, certificate=conn.certificate, private_key=conn.private_key)
        try:
            me = store.identity()
        except PkiError as exc:
            raise DeviceUnavailable(str(exc)) from None
        client.application_uri = me.uri
        self._own_cert = (me.cert_path, thumbprint(der_of(me.cert)))
        policy = POLICIES[conn.policy or "Basic256Sha256"]
        mode = _MODES[conn.security_mode]
        try:
            endpoints = await client.connect_and_get_server_endpoints()
        except Exception as exc:
            raise DeviceUnavailable(self._connect_error(exc)) from None
        match = [e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == policy.URI]
        if not match:
            offered = sorted(
                {f"{e.SecurityMode.name.rstrip('_')} {e.SecurityPolicyUri.rpartition('#')[2]}" for e in endpoints}
            )
            raise DeviceUnavailable(
                f"{conn.endpoint} offers no endpoint with {conn.security_mode} {conn.policy} "
                f"(it offers: {', '.join(offered)})"
            )
        server_der = _first_cert(match[0].ServerCertificate or b"")
        verdict = store.check(server_der)
        if not verdict.trusted:
            trust_with = None
            if verdict.rejected_path is not None:
                trust_with = f"cellctl cert trust --pki {store.root} {thumbprint(server_der)[:16]}"
            key = (self.id, thumbprint(server_der))
            if key not in _REPORTED_REJECTIONS:  # a transition, not every retry
                _REPORTED_REJECTIONS.add(key)
                self.log.warning(
                    "opcua_server_certificate_rejected",
                    endpoint=conn.endpoint,
                    reason=verdict.reason,
                    thumbprint=thumbprint(server_der),
                    saved_to=str(verdict.rejected_path) if verdict.rejected_path else None,
                    trust_with=trust_with,
                )
            how = f"; saved to {verdict.rejected_path}: trust it with `{trust_with}`" if trust_with else ""
            raise DeviceUnavailable(f"{verdict.reason}{how}")
        try:
            await client.set_security(
                policy, str(me.cert_path), str(me.key_path), server_certificate=server_der, mode=mode
            )
        except (OSError, ValueError) as exc:
            raise DeviceUnavailable(f"cannot load the client certificate or key: {exc}") from None

    def _connect_error(self, exc: BaseException) -> str:
        url = self.connection.endpoint
        if isinstance(exc, UaStatusCodeError):
            name = status_name(exc.code)
            if name in _AUTH_REFUSED:
                who = f"user {self.connection.username!r}" if self.connection.username else "anonymous login"
                hint = " (wrong user name or password?)" if self.connection.username else ""
                return f"{url} refused {who}: {name}{hint}"
            if name in _CERT_REFUSED:
                return self._certificate_refused(f"{url} refused our client certificate ({name})", name)
            return f"{url}: {_describe_status(exc.code)}"
        if isinstance(exc, _ChannelRefused):
            cause = exc.cause
            code = cause.code if isinstance(cause, UaStatusCodeError) else None
            said = status_name(code) if code is not None else None
            if code is not None and said not in _CERT_REFUSED:  # a reason that is not about trust
                return f"{url}: opening the secure channel: {_describe_status(code)}"
            how = f"with {said}" if said else "and closed the connection" if isinstance(cause, ConnectionError) else ""
            return self._certificate_refused(
                f"{url} refused to open a secure channel {how}".rstrip()
                + ": it most likely does not trust our client certificate",
                said,
            )
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return f"{url}: no answer within {self.timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return f"{url}: connection refused"
        if isinstance(exc, OSError):
            return f"{url}: {exc.strerror or exc}"
        if isinstance(exc, ConnectionError):
            return f"{url}: connection lost ({exc})"
        return f"{url}: {exc!r}"

    def _certificate_refused(self, headline: str, status: str | None) -> str:
        """What to do when a server refuses our certificate: where it usually is on the
        server now, and which file to hand to its administrator. Logged once per
        device and certificate (a transition, not every retry)."""
        conn = self.connection
        path, print_ = self._own_cert or (conn.certificate or conn.pki_dir / "own/cert.der", None)
        key = (self.id, f"client:{print_ or path}")
        if key not in _REPORTED_REJECTIONS:
            _REPORTED_REJECTIONS.add(key)
            self.log.warning(
                "opcua_client_certificate_refused",
                endpoint=conn.endpoint,
                status=status,
                certificate=str(path),
                thumbprint=print_,
            )
        which = f"{str(path)!r}" + (f" (thumbprint {print_})" if print_ else "")
        return (
            f"{headline}. Servers keep a client certificate they refused in their PKI's rejected "
            f"folder (often pki/rejected/): ask the server's administrator to move it to trusted, "
            f"or hand them our certificate {which}"
        )

    def _request_error(self, what: str, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return f"{what}: no answer within {self.timeout:g} s"
        if isinstance(exc, UaStatusCodeError):
            return f"{what}: {status_name(exc.code)}"
        if isinstance(exc, ConnectionError | OSError):
            return f"{what}: connection lost"
        return f"{what}: {exc!r}"

    async def close(self) -> None:
        """Close the session, bounded in time; a dead or stalled server gets its socket closed."""
        client, self.client = self.client, None
        self._on_reading = None
        if client is None:
            return
        try:
            async with asyncio.timeout(min(2.0, 2 * self.timeout)):
                await client.disconnect()
        except Exception as exc:  # a dead server cannot say goodbye: the socket goes anyway
            self.log.debug("opcua_close_incomplete", error=repr(exc))
        finally:
            client.uaclient.request_disconnect()
            for name in ("_supervisor_task", "_stale_watchdog_task", "_renew_channel_task"):
                task = getattr(client, name, None)
                if isinstance(task, asyncio.Task) and not task.done():
                    task.cancel()
            publish = getattr(client.uaclient.session, "_publish_task", None)
            if isinstance(publish, asyncio.Task) and not publish.done():
                publish.cancel()
            with contextlib.suppress(Exception):
                client.uaclient.disconnect_socket()

    def _need_client(self) -> Client:
        if self.client is None:
            raise DeviceUnavailable("not connected")
        return self.client

    # -- Subscriber ------------------------------------------------------------------------

    async def subscribe(self, on_reading: Callable[[Reading], None]) -> None:
        """Create the subscription and polled groups, then deliver readings until the
        session is lost; raise DeviceUnavailable saying why."""
        client = self._need_client()
        self._on_reading = on_reading
        self._alive_at = time.monotonic()
        try:
            await self._create_subscription(client)
            if self.problems:
                bad = sorted(self.problems)
                on_reading(
                    Reading(
                        values=[None] * len(bad),
                        indexes=[self._point_index[k] for k in bad],
                        errors={self._point_index[k]: self.problems[k] for k in bad},
                    )
                )
            try:
                async with asyncio.TaskGroup() as tg:
                    for group in self._poll_groups():
                        tg.create_task(self._poll(client, group), name=f"opcua-poll-{self.id}-{group.interval:g}s")
                    tg.create_task(self._watch(client), name=f"opcua-watchdog-{self.id}")
            except* DeviceUnavailable as group_exc:
                raise group_exc.exceptions[0] from None
        finally:
            self._on_reading = None

    async def _create_subscription(self, client: Client) -> None:
        opts = self.options
        keepalive_count = max(1, math.ceil(opts.keepalive / opts.publishing_interval))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=opts.publishing_interval * 1000,
            RequestedLifetimeCount=max(3 * keepalive_count, math.ceil(60.0 / opts.publishing_interval)),
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        try:
            result = await client.uaclient.create_subscription(params, self._on_publish)
            items = [self._server_state_item()]
            handles = [SERVER_STATE_HANDLE]
            for k, addr in enumerate(self.addresses):
                if addr.mode == "subscribe" and self.node_ids[k] is not None:
                    items.append(self._item(k, addr))
                    handles.append(k)
            batch = opts.max_items_per_request
            for start in range(0, len(items), batch):
                create = ua.CreateMonitoredItemsParameters(
                    SubscriptionId=result.SubscriptionId,
                    TimestampsToReturn=ua.TimestampsToReturn.Source,
                    ItemsToCreate=items[start : start + batch],
                )
                results = await client.uaclient.create_monitored_items(create)
                for handle, res in zip(handles[start : start + batch], results, strict=True):
                    code = res.StatusCode.value
                    if code & _BAD_BIT and handle != SERVER_STATE_HANDLE:
                        self.problems[handle] = self._node_problem(handle, code)
        except UaStatusCodeError as exc:
            raise DeviceUnavailable(f"creating the subscription: {_describe_status(exc.code)}") from None
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise DeviceUnavailable(self._request_error("creating the subscription", exc)) from None

    def _node_problem(self, handle: int, code: int) -> str:
        name = status_name(code)
        where = self.addresses[handle].describe()
        if name in ("BadNodeIdUnknown", "BadNodeIdInvalid"):
            return f"{name}: node {where} does not exist on the server"
        if name == "BadAttributeIdInvalid":
            return f"{name}: node {where} is not a variable (it has no value)"
        return f"{name}: {where}"

    def _server_state_item(self) -> ua.MonitoredItemCreateRequest:
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node_id(_SERVER_STATE_NODE), AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=SERVER_STATE_HANDLE,
                SamplingInterval=max(self.options.publishing_interval, 1.0) * 1000,
                QueueSize=1,
                DiscardOldest=True,
            ),
        )

    def _item(self, k: int, addr: OpcUaAddress) -> ua.MonitoredItemCreateRequest:
        opts = self.options
        sampling = addr.sampling_interval
        if sampling is None:
            sampling = opts.sampling_interval if opts.sampling_interval is not None else opts.publishing_interval
        mparams = ua.MonitoringParameters(
            ClientHandle=k,
            SamplingInterval=sampling * 1000,
            QueueSize=addr.queue_size or opts.queue_size,
            DiscardOldest=True,
        )
        trigger = addr.trigger or opts.trigger
        if addr.deadband is not None or trigger != "status_value":
            dtype, value = ua.DeadbandType.None_, 0.0
            if addr.deadband is not None:
                if addr.deadband.absolute is not None:
                    dtype, value = ua.DeadbandType.Absolute, addr.deadband.absolute
                else:
                    dtype, value = ua.DeadbandType.Percent, addr.deadband.percent or 0.0
            mparams.Filter = ua.DataChangeFilter(
                Trigger=_TRIGGERS[trigger], DeadbandType=dtype, DeadbandValue=value
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=self.node_ids[k], AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=mparams,
        )

    async def _connection_lost(self, exc: Exception) -> None:
        """asyncua's supervisor found the session dead (socket closed, or its periodic
        read of the server state got no answer); it calls this before telling the
        subscription, so this reason wins over the generic BadShutdown that follows."""
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            self._lose("the server stopped answering (its server-status read timed out)")
        elif isinstance(exc, UaStatusCodeError):
            self._lose(f"the server refused the session: {status_name(exc.code)}")
        else:
            self._lose("connection to the server lost")

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        self._wake.set()

    def _on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop hands us every PublishResponse (data or keep-alive);
        one Reading per response keeps one MQTT message per publishing interval."""
        self._alive_at = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        # asyncua sends the next Publish request only when this returns: hand the values
        # to the engine on the next loop turn, so the server is never kept waiting.
        asyncio.get_running_loop().call_soon(self._notified, data)

    def _notified(self, data: Sequence[Any]) -> None:
        try:
            for notification in data:
                items = getattr(notification, "MonitoredItems", None)
                if items is not None:
                    self._deliver([(item.ClientHandle, item.Value) for item in items])
                elif isinstance(notification, ua.StatusChangeNotification):
                    code = notification.Status.value
                    self._lose(f"subscription ended by the server: {status_name(code)}")
        except Exception as exc:  # never let a bug vanish into asyncua's log
            # One JSON-friendly line with where it happened, no multi-line traceback.
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" if frame else None
            self.log.error("opcua_notification_error", error=repr(exc), at=at)  # noqa: TRY400
            self._lose(f"internal error handling a notification: {exc!r}")

    def _deliver(self, pairs: Sequence[tuple[int, ua.DataValue]]) -> None:
        """(client handle, DataValue) pairs into Readings: one per notification message,
        or, when items queue several values, one per rank (every item's first value,
        then every item's second...), so each queued change is published in order."""
        if not self._may_repeat:
            self._reading(pairs)
            return
        ranks: dict[int, int] = {}
        buckets: list[list[tuple[int, ua.DataValue]]] = []
        for pair in pairs:
            rank = ranks.get(pair[0], 0)
            ranks[pair[0]] = rank + 1
            if rank == len(buckets):
                buckets.append([])
            buckets[rank].append(pair)
        for bucket in buckets:
            self._reading(bucket)

    def _reading(self, pairs: Sequence[tuple[int, ua.DataValue]]) -> None:
        """The hot path: one pass, plain lists, conversions only when the type is off."""
        sink = self._on_reading
        if sink is None:
            return
        point_index, accepted, types = self._point_index, self._accepted, self._types
        values: list[Any] = []
        indexes: list[int] = []
        stamps: list[float | None] = []
        errors: dict[int, str] | None = None
        uncertain: dict[int, str] | None = None
        for handle, dv in pairs:
            if handle == SERVER_STATE_HANDLE:
                self._server_state(dv)
                continue
            i = point_index[handle]
            status = dv.StatusCode
            code = status.value if status is not None else 0
            ts = dv.SourceTimestamp
            if code & _GOOD_MASK:
                if code & _BAD_BIT:  # Bad (and the reserved 0b11 severity): no value
                    if errors is None:
                        errors = {}
                    errors[i] = status_name(code)
                    values.append(None)
                    indexes.append(i)
                    stamps.append(ts.timestamp() if ts is not None else None)
                    continue
                if uncertain is None:
                    uncertain = {}
                uncertain[i] = status_name(code)
            variant = dv.Value
            v = variant.Value if variant is not None else None
            if type(v) not in accepted[handle]:
                try:
                    v = received(types[handle], v)
                except Unconvertible as exc:
                    if errors is None:
                        errors = {}
                    errors[i] = str(exc)
                    v = None
            values.append(v)
            indexes.append(i)
            stamps.append(ts.timestamp() if ts is not None else None)
        self._emit(sink=sink, values=values, indexes=indexes, stamps=stamps, errors=errors, uncertain=uncertain)

    def _emit(
        self,
        *,
        sink: Callable[[Reading], None],
        values: list[Any],
        indexes: list[int],
        stamps: list[float | None],
        errors: dict[int, str] | None,
        uncertain: dict[int, str] | None,
    ) -> None:
        if not values:
            return
        sink(
            Reading(values=values, indexes=indexes, errors=errors, source_ts_each=stamps, uncertain=uncertain or None)
        )

    def _server_state(self, dv: ua.DataValue) -> None:
        status = dv.StatusCode
        if status is not None and status.value & _BAD_BIT:
            return  # a server without ServerStatus.State: rely on the keep-alive
        state = dv.Value.Value if dv.Value is not None else None
        if isinstance(state, int) and state != _RUNNING:
            self._lose(f"server state is {_SERVER_STATES.get(state, str(state))}")

    def _poll_groups(self) -> list[_PollGroup]:
        by_interval: dict[float, list[int]] = {}
        for k, addr in enumerate(self.addresses):
            if addr.mode == "poll" and self.node_ids[k] is not None:
                by_interval.setdefault(addr.poll_interval or self.options.poll_interval, []).append(k)
        return [
            _PollGroup(
                interval,
                handles,
                ua.ReadParameters(
                    MaxAge=0,
                    TimestampsToReturn=ua.TimestampsToReturn.Source,
                    NodesToRead=[
                        ua.ReadValueId(NodeId=self.node_ids[k], AttributeId=AttributeIds.Value) for k in handles
                    ],
                ),
            )
            for interval, handles in sorted(by_interval.items())
        ]

    async def _poll(self, client: Client, group: _PollGroup) -> None:
        """Read one group on monotonic deadlines (skipping, not bursting, when late)."""
        next_at = time.monotonic()
        batch = self.options.max_items_per_request
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            results: list[ua.DataValue] = []
            try:
                for start in range(0, len(group.handles), batch):
                    params = group.params
                    if len(group.handles) > batch:
                        params = ua.ReadParameters(
                            MaxAge=0,
                            TimestampsToReturn=ua.TimestampsToReturn.Source,
                            NodesToRead=group.params.NodesToRead[start : start + batch],
                        )
                    results += await client.uaclient.read(params)
            except UaStatusCodeError as exc:
                raise DeviceUnavailable(f"read refused: {_describe_status(exc.code)}") from None
            except (TimeoutError, ConnectionError, OSError) as exc:
                raise DeviceUnavailable(self._request_error("read", exc)) from None
            self._alive_at = max(self._alive_at, time.monotonic())
            self._deliver(list(zip(group.handles, results, strict=True)))
            next_at += group.interval
            now = time.monotonic()
            next_at = max(next_at, now)

    async def _watch(self, client: Client) -> None:
        """The keep-alive watchdog: any sign of a lost session ends the subscription."""
        span = self.options.keepalive + self.timeout + self.options.publishing_interval
        while True:
            self._wake.clear()
            if self._lost is not None:
                raise DeviceUnavailable(self._lost)
            if client.uaclient.state is not UaClientState.CONNECTED:
                raise DeviceUnavailable("connection to the server lost")
            silent = time.monotonic() - self._alive_at
            if silent > span:
                raise DeviceUnavailable(
                    f"no message from the server for {silent:.1f} s (keep-alive expected every "
                    f"{self.options.keepalive:g} s)"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(span - silent, 0.5) + 0.01):
                    await self._wake.wait()

    # -- Writer ----------------------------------------------------------------------------

    async def _data_type(self, client: Client, k: int) -> tuple[Builtin, int]:
        """The built-in type and value rank of point k's node (read once per session)."""
        found = self._data_types.get(k)
        if found is not None:
            return found
        node_id = self.node_ids[k]
        assert node_id is not None
        dvs = await client.uaclient.read(
            ua.ReadParameters(
                NodesToRead=[
                    ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.DataType),
                    ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.ValueRank),
                ]
            )
        )
        for dv in dvs:
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            if code & _BAD_BIT:
                raise OpcUaError(self._node_problem(k, code), status_name(code))
        data_type = dvs[0].Value.Value if dvs[0].Value is not None else None
        rank = dvs[1].Value.Value if dvs[1].Value is not None else None
        if not isinstance(data_type, ua.NodeId):
            raise OpcUaError(f"node {self.addresses[k].describe()} has no data type")
        builtin = await self._builtin_of(client, data_type)
        found = (builtin, int(rank) if isinstance(rank, int) else -1)
        self._data_types[k] = found
        return found

    async def _builtin_of(self, client: Client, data_type: ua.NodeId) -> Builtin:
        """The built-in type a data type derives from (UtcTime -> DateTime, an enum -> Int32)."""
        found = await builtin_of(client, data_type, self._type_cache)
        if found is None:
            raise OpcUaError(f"data type {data_type.to_string()} is not a built-in type cellctl can write")
        return found

    async def write(self, index: int, raw_value: Any) -> None:
        """Write one raw value to point `index`, converted to its node's data type first.

        ValueError (nothing sent) for a read-only point or a value the data type cannot
        hold; OpcUaError, a `WriteRejected` whose reason is the status name, when the
        server refuses (e.g. BadOutOfRange); DeviceUnavailable when the session is gone.
        """
        client = self._need_client()
        k = self._by_index.get(index)
        if k is None:
            raise ValueError(f"device {self.id!r}: no point with index {index}")
        spec = self.points[k]
        if spec.access == "r":
            raise ValueError(f"device {self.id!r}: point {spec.id!r} is read-only")
        node_id = self.node_ids[k]
        if node_id is None:
            raise OpcUaError(f"device {self.id!r}: point {spec.id!r} cannot be written: {self.problems.get(k)}")
        what = f"device {self.id!r}: point {spec.id!r}"
        try:
            builtin, rank = await self._data_type(client, k)
            if rank > 0:
                raise ValueError(f"{what}: node {self.addresses[k].describe()} holds an array; arrays cannot be written")
            value = to_builtin(raw_value, builtin, what)
            if builtin == Builtin.LocalizedText:
                value = ua.LocalizedText(value)
            variant = ua.Variant(value, ua.VariantType(int(builtin)))
            results = await client.uaclient.write(
                ua.WriteParameters(
                    NodesToWrite=[
                        ua.WriteValue(
                            NodeId=node_id, AttributeId=AttributeIds.Value, Value=ua.DataValue(variant)
                        )
                    ]
                )
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise DeviceUnavailable(self._request_error(f"writing {spec.id!r}", exc)) from None
        except UaStatusCodeError as exc:
            raise self._refusal(exc, f"writing {spec.id!r}", f"{what}: write of {raw_value!r} refused") from None
        except UaError as exc:  # asyncua's own "not connected" family: the session is gone
            raise DeviceUnavailable(self._request_error(f"writing {spec.id!r}", exc)) from None
        code = results[0].value
        if code & _BAD_BIT:
            raise OpcUaError(f"{what}: write of {raw_value!r} refused: {_describe_status(code)}", status_name(code))

    def _refusal(self, exc: UaStatusCodeError, doing: str, what: str) -> DeviceUnavailable | OpcUaError:
        """A service-level Bad status: the session is gone (DeviceUnavailable), or the
        server refused this one request (OpcUaError, a WriteRejected)."""
        name = status_name(exc.code)
        if name in _SESSION_GONE:
            return DeviceUnavailable(f"{doing}: {_describe_status(exc.code)}")
        return OpcUaError(f"{what}: {_describe_status(exc.code)}", name)

    # -- methods ---------------------------------------------------------------------------

    async def call(self, address: BaseModel | dict[str, Any], args: Sequence[Any]) -> list[Any]:
        """Call a method with arguments converted to its declared input types; returns
        the output arguments. ValueError for arguments that do not fit (nothing sent),
        OpcUaError (a `WriteRejected`) when the server refuses the call, DeviceUnavailable
        when the session is gone."""
        client = self._need_client()
        method: MethodAddress = (
            MethodAddress.model_validate(address) if isinstance(address, dict) else _model(address, MethodAddress)
        )
        what = f"device {self.id!r}: method {method.describe()}"
        try:
            object_id, method_id, inputs = await self._method(client, method, what)
            if len(args) != len(inputs):
                raise ValueError(f"{what} takes {len(inputs)} argument(s), got {len(args)}")
            variants = []
            for n, (arg, (name, builtin)) in enumerate(zip(args, inputs, strict=True)):
                value = to_builtin(arg, builtin, f"{what}: argument {n + 1} ({name})")
                if builtin == Builtin.LocalizedText:
                    value = ua.LocalizedText(value)
                variants.append(ua.Variant(value, ua.VariantType(int(builtin))))
            results = await client.uaclient.call(
                [ua.CallMethodRequest(ObjectId=object_id, MethodId=method_id, InputArguments=variants)]
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise DeviceUnavailable(self._request_error(f"calling {method.describe()}", exc)) from None
        except UaStatusCodeError as exc:
            raise self._refusal(exc, f"calling {method.describe()}", f"{what}: call refused") from None
        except UaError as exc:
            raise DeviceUnavailable(self._request_error(f"calling {method.describe()}", exc)) from None
        result = results[0]
        code = result.StatusCode.value
        if code & _BAD_BIT:
            bad_args = [
                f"argument {n + 1}: {status_name(s.value)}"
                for n, s in enumerate(result.InputArgumentResults or [])
                if s.value & _BAD_BIT
            ]
            extra = f" ({'; '.join(bad_args)})" if bad_args else ""
            raise OpcUaError(f"{what}: call refused: {_describe_status(code)}{extra}", status_name(code))
        return [v.Value for v in result.OutputArguments or []]

    async def _method(
        self, client: Client, method: MethodAddress, what: str
    ) -> tuple[ua.NodeId, ua.NodeId, list[tuple[str, Builtin]]]:
        key = method.model_dump_json()
        found = self._methods.get(key)
        if found is not None:
            return found
        assert self.resolver is not None
        ids = await self.resolver.resolve([method.object, method.method])
        for r in ids:
            if isinstance(r, str):
                raise OpcUaError(f"{what}: {r}")
        object_id, method_id = ids
        assert not isinstance(object_id, str)
        assert not isinstance(method_id, str)
        inputs: list[tuple[str, Builtin]] = []
        node = client.get_node(method_id)
        for child in await node.get_properties():
            name = (await child.read_browse_name()).Name
            if name != "InputArguments":
                continue
            for arg in await child.read_value() or []:
                inputs.append((arg.Name, await self._builtin_of(client, arg.DataType)))
        found = (object_id, method_id, inputs)
        self._methods[key] = found
        return found

    # -- Browser ---------------------------------------------------------------------------

    async def browse(self, depth: int) -> list[dict[str, Any]]:
        """The address space under the Objects folder, `depth` levels deep."""
        from cellctl_opcua.browse import browse_tree

        return await browse_tree(self._need_client(), self.namespaces, depth=depth)
