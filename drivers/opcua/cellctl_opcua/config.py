"""Configuration models: a point's ``address:`` block, a device's ``connection:`` and
``options:``, and the address of a method. Validated once at load time (no asyncua
import, no I/O), frozen afterwards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellctl.driver import Duration, PositiveDuration
from cellctl_opcua.nodeid import NodeIdSyntaxError, NodeRef, PathElement, parse_node_id, parse_path_element

SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
SecurityPolicyName = Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
PointMode = Literal["subscribe", "poll"]
DataChangeTrigger = Literal["status", "status_value", "status_value_timestamp"]

OBJECTS_FOLDER = "i=85"


def default_pki_dir() -> Path:
    """Where the client's certificate and trust store live: systemd's StateDirectory
    (``/var/lib/cellctl`` for the shipped unit) when set, else ``/var/lib/cellctl``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or "/var/lib/cellctl") / "pki"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _node(value: str) -> NodeRef:
    try:
        return parse_node_id(value)
    except NodeIdSyntaxError as exc:
        raise ValueError(str(exc)) from None


class ServerDeadband(_Frozen):
    """A deadband the *server* applies before it sends a change (OPC UA DataChangeFilter).

    ``percent`` is of the node's EURange, so the server must know one. This is not the
    profile's ``deadband``, which cellctl applies after receiving the value.
    """

    absolute: Annotated[float, Field(ge=0)] | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ServerDeadband:
        if (self.absolute is None) == (self.percent is None):
            raise ValueError("give exactly one of 'absolute' or 'percent'")
        return self


class NodeAddress(_Frozen):
    """A node, by NodeId with namespace URI (``node``) or by browse path (``path``)."""

    node: str | None = None
    path: list[str] | None = None
    namespace: str | None = None  # namespace URI of the path's browse names
    root: str = OBJECTS_FOLDER  # where the path starts

    @field_validator("node", "root")
    @classmethod
    def _valid_node(cls, value: str | None) -> str | None:
        if value is not None:
            _node(value)
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _split_path(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.split("/") if p]
        return value

    @model_validator(mode="after")
    def _one_way(self) -> NodeAddress:
        if (self.node is None) == (self.path is None):
            raise ValueError("give exactly one of 'node' (nsu=<namespace URI>;s=...) or 'path' (browse names)")
        if self.path is not None:
            if not self.path:
                raise ValueError("'path' is empty")
            for element in self.path:
                try:
                    parse_path_element(element, self.namespace)
                except NodeIdSyntaxError as exc:
                    raise ValueError(str(exc)) from None
        elif self.namespace is not None or self.root != OBJECTS_FOLDER:
            raise ValueError("'namespace' and 'root' belong to a 'path', not to a 'node'")
        return self

    @property
    def node_ref(self) -> NodeRef | None:
        return None if self.node is None else _node(self.node)

    @property
    def root_ref(self) -> NodeRef:
        return _node(self.root)

    @property
    def path_elements(self) -> list[PathElement]:
        return [parse_path_element(p, self.namespace) for p in self.path or []]

    def describe(self) -> str:
        if self.node is not None:
            return str(self.node_ref)
        base = "" if self.root == OBJECTS_FOLDER else f"{self.root_ref}:"
        return base + "/" + "/".join(str(e) for e in self.path_elements)


class OpcUaAddress(NodeAddress):
    """Where a point lives and how it is sampled.

    ``mode: subscribe`` (default) makes it a monitored item of the device's subscription;
    ``mode: poll`` reads it every ``poll_interval`` instead (for servers whose
    subscriptions misbehave, or values that only matter now and then).
    """

    mode: PointMode = "subscribe"
    sampling_interval: Duration | None = None  # default: the device's options
    queue_size: Annotated[int, Field(ge=1, le=10_000)] | None = None
    deadband: ServerDeadband | None = None
    trigger: DataChangeTrigger | None = None
    poll_interval: PositiveDuration | None = None  # mode poll only

    @model_validator(mode="after")
    def _mode_fields(self) -> OpcUaAddress:
        if self.mode == "poll":
            given = [
                f for f in ("sampling_interval", "queue_size", "deadband", "trigger") if f in self.model_fields_set
            ]
            if given:
                raise ValueError(f"{', '.join(given)}: only for mode subscribe, this point has mode poll")
        elif self.poll_interval is not None:
            raise ValueError("'poll_interval' is for mode poll; this point has mode subscribe")
        return self


class MethodAddress(_Frozen):
    """A method and the object it is called on (each by NodeId or browse path)."""

    object: NodeAddress
    method: NodeAddress

    def describe(self) -> str:
        return f"{self.method.describe()} on {self.object.describe()}"


class OpcUaConnection(_Frozen):
    """How to reach the server and who we are to it."""

    endpoint: Annotated[str, Field(min_length=10)]
    security_mode: SecurityMode = "None"
    security_policy: SecurityPolicyName | None = None  # default Basic256Sha256 when secured
    username: Annotated[str, Field(min_length=1)] | None = None
    password_file: Path | None = None  # the password itself never sits in the config
    pki_dir: Path = Field(default_factory=default_pki_dir)
    certificate: Path | None = None  # default: <pki_dir>/own/cert.der
    private_key: Path | None = None  # default: <pki_dir>/own/private/key.pem
    session_timeout: PositiveDuration = 60.0

    @field_validator("endpoint")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError(f"endpoint {value!r} must start with opc.tcp:// (e.g. opc.tcp://192.0.2.10:4840)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> OpcUaConnection:
        if self.security_mode == "None" and self.security_policy is not None:
            raise ValueError(
                f"security_policy {self.security_policy} needs security_mode Sign or SignAndEncrypt"
            )
        if self.password_file is not None and self.username is None:
            raise ValueError("'password_file' needs 'username'")
        if self.username is not None and self.password_file is None:
            raise ValueError("'username' needs 'password_file' (a file holding the password)")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both 'certificate' and 'private_key', or neither (to use the PKI directory's)")
        return self

    @property
    def policy(self) -> SecurityPolicyName | None:
        if self.security_mode == "None":
            return None
        return self.security_policy or "Basic256Sha256"

    @property
    def secured(self) -> bool:
        return self.security_mode != "None"

    def describe(self) -> str:
        sec = "no security" if not self.secured else f"{self.security_mode} {self.policy}"
        user = f", user {self.username!r}" if self.username else ""
        return f"{self.endpoint} ({sec}{user})"


class OpcUaOptions(_Frozen):
    """How to talk to the server: subscription timing, polling, batch sizes."""

    publishing_interval: PositiveDuration = 0.5
    sampling_interval: Duration | None = None  # default: the publishing interval
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 1
    trigger: DataChangeTrigger = "status_value"
    # The server sends a keep-alive after this much silence; the watchdog gives up after
    # keepalive + the device timeout without any message.
    keepalive: PositiveDuration = 1.0
    poll_interval: PositiveDuration = 1.0  # for points with mode poll
    max_items_per_request: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @model_validator(mode="after")
    def _timing(self) -> OpcUaOptions:
        if self.keepalive < self.publishing_interval:
            raise ValueError(
                f"keepalive ({self.keepalive:g} s) is shorter than publishing_interval "
                f"({self.publishing_interval:g} s)"
            )
        return self
