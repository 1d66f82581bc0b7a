"""The cell config: who this cell is (ISA-95 path), where the backbone is, which devices
it has. Validated once at start-up; frozen afterwards."""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cellctl.config.commands import CommandsConfig
from cellctl.config.profile import ID_PATTERN, Deadband
from cellctl.durations import Duration, PositiveDuration, parse_duration
from cellctl.sparkplug.topics import validate_id

# Topic levels must not contain MQTT wildcards or separators.
_TOPIC_LEVEL = re.compile(r"^[^/+#$\s][^/+#\s]{0,63}$")


def _topic_level(value: str) -> str:
    if not _TOPIC_LEVEL.match(value):
        raise ValueError(
            f"{value!r} cannot be an MQTT topic level: use 1-64 characters without / + # or spaces, not starting with $"
        )
    return value


TopicLevel = Annotated[str, AfterValidator(_topic_level)]
# `status`, `outbox`, `events` and `manifest` are cell-level UNS topics; `cmd` is reserved for commands.
RESERVED_DEVICE_IDS = frozenset({"status", "cmd", "outbox", "events", "manifest"})


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def _parse_size(value: Any) -> Any:
    """Accept 1048576, "512MiB", "1GiB", "200MB" for sizes; leave other types to pydantic."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"expected a size such as 512MiB, 1GiB or 200MB, got {value!r}")
        return int(float(m.group(1)) * _UNIT_BYTES[m.group(2)])
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(ge=4096)]


def _sparkplug_id(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        return validate_id(kind, value)

    return AfterValidator(check)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Identity(_Frozen):
    """ISA-95 path of this cell; each level becomes one topic level."""

    enterprise: TopicLevel
    site: TopicLevel
    area: TopicLevel
    line: TopicLevel
    cell: TopicLevel


class Tls(_Frozen):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False


def _host_port(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError naming the value otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() or c in "/[]" for c in host) or not port.isdigit():
        raise ValueError(f"{value!r} is not 'host:port'")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is not within 1-65535")
    return host, int(port)


def _check_node(value: str) -> str:
    _host_port(value)
    return value


def _check_hosts(value: list[str]) -> list[str]:
    nodes = [_host_port(v) for v in value]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"a node is listed twice: {value}")
    return value


Node = Annotated[str, AfterValidator(_check_node)]


class Backbone(_Frozen):
    """The MQTT broker of the site's data backbone: one address (`host`, `port`), or the
    nodes of a clustered broker (`hosts`) the session fails over between."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    # Several nodes of one (clustered or bridged) broker, tried in turn: a node that is down
    # or drops the connection sends the session to the next. `host`/`port` become the first.
    hosts: Annotated[list[Node], Field(min_length=1, max_length=16), AfterValidator(_check_hosts)] | None = None
    client_id: str | None = None  # default: cellctl-<enterprise>-<site>-...-<cell>
    username: str | None = None
    password_file: Path | None = None  # the password itself never sits in the config
    tls: Tls | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    qos: Literal[0, 1] = 1
    reconnect_min: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 10.0
    # Live messages that may wait in memory for room in the in-flight window. The durable
    # outbox is the queue: past this, live publishing falls back to paced replay from it;
    # nothing is lost.
    max_queued_messages: Annotated[int, Field(ge=100)] = 10_000

    @model_validator(mode="before")
    @classmethod
    def _first_node(cls, data: Any) -> Any:
        """With `hosts`, `host` and `port` name the first node (and may not be given)."""
        if isinstance(data, dict) and isinstance(data.get("hosts"), list) and data["hosts"]:
            both = [k for k in ("host", "port") if k in data]
            if both:
                raise ValueError(f"give either 'hosts' or {' and '.join(repr(k) for k in both)}, not both")
            first = data["hosts"][0]
            if isinstance(first, str):
                try:
                    host, port = _host_port(first)
                except ValueError:
                    return data  # the field's own check reports it, with its index
                return {**data, "host": host, "port": port}
        return data

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) to try, in order."""
        if self.hosts is None:
            return ((self.host, self.port),)
        return tuple(_host_port(h) for h in self.hosts)

    @model_validator(mode="after")
    def _auth(self) -> Backbone:
        if self.password_file is not None and self.username is None:
            raise ValueError("'password_file' needs 'username'")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("'reconnect_min' is greater than 'reconnect_max'")
        return self


OutputFormat = Literal["uns", "sparkplug"]


class Publish(_Frozen):
    """How samples become MQTT messages (see docs/topics.md, docs/sparkplug.md)."""

    # uns: UNS JSON topics; sparkplug: a Sparkplug B edge node; both: the same samples twice
    formats: Annotated[list[OutputFormat], Field(min_length=1)] = ["uns"]
    prefix: str = "uns/v1"
    # batched: one non-retained message per device per scan with every change;
    # per_point: additionally one retained message per changed point (costly, see docs).
    mode: Literal["batched", "per_point"] = "batched"
    # Retained device state is republished at most this often when it changes...
    state_min_interval: Duration = 5.0
    # ...and at least this often even when nothing changed, so late subscribers converge.
    full_refresh: PositiveDuration = 60.0

    @model_validator(mode="after")
    def _prefix(self) -> Publish:
        for level in self.prefix.split("/") if self.prefix else []:
            _topic_level(level)
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"'formats' lists a format twice: {self.formats}")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StatusPage(_Frozen):
    """The daemon's read-only local status page (docs/status-page.md); off unless the
    section is given. On any address but loopback it needs a token or basic auth."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8088  # 0: any free port
    token_file: Path | None = None  # ?token=... or Authorization: Bearer ...
    username: str | None = None  # basic auth, with password_file
    password_file: Path | None = None
    events: Annotated[int, Field(ge=1, le=1000)] = 50  # last events kept for the page

    @model_validator(mode="after")
    def _auth(self) -> StatusPage:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both 'username' and 'password_file'")
        if self.token_file is not None and self.username is not None:
            raise ValueError("give 'token_file' or 'username'/'password_file', not both")
        if not _loopback(self.host) and self.token_file is None and self.username is None:
            raise ValueError(
                f"host {self.host!r} is reachable from other machines: set 'token_file', or "
                "'username' and 'password_file' (the page is open only on 127.0.0.1)"
            )
        return self


class OutboxConfig(_Frozen):
    """The durable store-and-forward outbox in `state_dir` (docs/decisions/0004)."""

    max_bytes: ByteSize = 2**30  # 1 GiB of stored messages; the oldest history goes first
    max_age: PositiveDuration = 7 * 86400.0  # messages older than this are dropped (counted)
    # always: every commit fsynced; batch: at most ~1 s lost on power loss; off: tmpfs/tests
    fsync: Literal["always", "batch", "off"] = "batch"
    replay_rate: Annotated[int, Field(ge=1, le=1_000_000)] = 2000  # messages/s after reconnecting
    # at most one commit per interval: less CPU at high message rates, up to this much latency
    commit_interval: Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=1.0)] = 0.0
    # round: a commit first waits (at most 5 ms) for the polls in flight, so the devices
    # polled together share one transaction; turn: what arrived in one loop turn, at once
    commit_gather: Literal["round", "turn"] = "round"


class SparkplugConfig(_Frozen):
    """The Sparkplug B edge node (docs/sparkplug.md). Ids default from `identity`."""

    group_id: Annotated[str, _sparkplug_id("group id")] | None = None  # <enterprise>-<site>-<area>
    edge_node_id: Annotated[str, _sparkplug_id("edge node id")] | None = None  # <line>-<cell>
    client_id: str | None = None  # default: backbone's client id (+ "-spb" with both formats)
    primary_host: Annotated[str, _sparkplug_id("host id")] | None = None
    bdseq_datatype: Literal["Int64", "UInt64"] = "Int64"
    # QoS of stored data replayed as historical DATA. 0 (the specification's): a fence
    # proves the broker has it before it leaves the outbox. 1: every message of the node
    # at QoS 1 (a deviation), so they still reach subscribers in seq order.
    historical_qos: Literal[0, 1] = 0
    # DCMD writes: `refuse` (logged, counted) every one; `allow` hands them to the command
    # router. With `commands.enabled` the cell's command policy then decides; without it,
    # every writable point of the profile may be written within its min/max (the
    # behaviour before the policy existed). See docs/commands.md.
    device_writes: Literal["refuse", "allow"] = "refuse"


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    return value


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


def minutes_of(hhmm: str) -> int:
    """'06:30' -> 390 (the pattern has been checked)."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class Shift(_Frozen):
    """One shift of the calendar in local time; `end` before `start` crosses midnight."""

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    start: Annotated[str, Field(pattern=_HHMM)]
    end: Annotated[str, Field(pattern=_HHMM)]

    @model_validator(mode="after")
    def _not_empty(self) -> Shift:
        if self.start == self.end:
            raise ValueError(f"shift {self.name!r}: start and end are both {self.start!r}")
        return self

    def minutes(self) -> set[int]:
        """The minutes of the day (0..1439) the shift covers."""
        s, e = minutes_of(self.start), minutes_of(self.end)
        return set(range(s, e)) if s < e else set(range(s, 1440)) | set(range(0, e))


class OeeConfig(_Frozen):
    """OEE windows (docs/jobs.md): always the current hour; with `shifts`, also the current
    shift. Times are wall-clock times in `timezone` (an IANA name; default: the machine's)."""

    shifts: list[Shift] = []
    timezone: str | None = None

    @model_validator(mode="after")
    def _calendar(self) -> OeeConfig:
        names = [s.name for s in self.shifts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"shift names used twice: {twice}")
        for i, a in enumerate(self.shifts):
            for b in self.shifts[i + 1 :]:
                if a.minutes() & b.minutes():
                    raise ValueError(f"shifts {a.name!r} ({a.start}-{a.end}) and {b.name!r} ({b.start}-{b.end}) overlap")
        if self.timezone is not None:
            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {self.timezone!r} (an IANA name such as 'Europe/Berlin')") from None
        return self


class MetricsConfig(_Frozen):
    """The Prometheus `/metrics` and JSON `/health` endpoint (docs/metrics.md). Off
    unless the section is present; loopback by default, for a local agent or proxy."""

    listen: Annotated[str, AfterValidator(_listen_address)] = "127.0.0.1:9464"
    # /health reports "outbox filling" when the outbox holds more than this share of max_bytes
    outbox_filling: Annotated[float, Field(gt=0, le=1)] = 0.8

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _default_state_dir() -> Path:
    """systemd's StateDirectory= ($STATE_DIRECTORY, first entry), else /var/lib/cellctl."""
    env = os.environ.get("STATE_DIRECTORY", "")
    return Path(env.split(":")[0]) if env else Path("/var/lib/cellctl")


class Availability(_Frozen):
    """Hysteresis: how many failed polls make a device unavailable, and how many good
    ones make it available again."""

    offline_after: Annotated[int, Field(ge=1, le=100)] = 1
    online_after: Annotated[int, Field(ge=1, le=100)] = 1


class PointOverride(_Frozen):
    deadband: Deadband | None = None
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None
    decimals: Annotated[int, Field(ge=0, le=15)] | None = None


class EnergyFrom(_Frozen):
    """A cell-level relation (docs/jobs.md): the energy meter in the same cell that feeds
    this machine, and the meter's energy counter point (kWh); a job's energy is the
    meter's advance over the job window."""

    meter: Annotated[str, Field(pattern=ID_PATTERN)]
    point: str = "energy_import"


PollPhase = Literal["aligned", "connect"]


class DeviceConfig(_Frozen):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    driver: str
    profile: str
    enabled: bool = True
    connection: dict[str, Any]
    options: dict[str, Any] = {}
    poll_interval: PositiveDuration = 1.0
    # aligned: polls at the multiples of poll_interval on the daemon's clock, so devices
    # with the same interval poll together and share outbox commits; connect: every
    # poll_interval from the first poll after the device connected
    poll_phase: PollPhase = "aligned"
    timeout: PositiveDuration = 1.0
    availability: Availability = Availability()
    # Per-device overrides of profile points; `disabled_points` are not read at all.
    points: dict[str, PointOverride] = {}
    disabled_points: list[str] = []
    energy: EnergyFrom | None = None  # energy per job from a meter in the cell
    # The lot of each job material in use on this device (MTConnect RawMaterial lot), by
    # the material's name in the profile's `job.materials`; a profile's `lot_point` comes
    # first, then the lots a job's `job_start` names (docs/jobs.md).
    lots: dict[Annotated[str, Field(pattern=ID_PATTERN)], Annotated[str, Field(min_length=1, max_length=64)]] = {}

    @model_validator(mode="after")
    def _reserved(self) -> DeviceConfig:
        if self.id in RESERVED_DEVICE_IDS:
            raise ValueError(f"device id {self.id!r} is reserved for cell-level topics")
        if self.energy is not None and self.energy.meter == self.id:
            raise ValueError(f"device {self.id!r}: 'energy.meter' names the device itself")
        return self


class CellConfig(_Frozen):
    identity: Identity
    # outbox.sqlite, the Sparkplug bdSeq and aliases; relative paths are relative to the file
    state_dir: Path = Field(default_factory=_default_state_dir)
    backbone: Backbone = Backbone()
    publish: Publish = Publish()
    outbox: OutboxConfig = OutboxConfig()
    sparkplug: SparkplugConfig = SparkplugConfig()
    metrics: MetricsConfig | None = None  # off unless set
    oee: OeeConfig = OeeConfig()  # OEE windows: the hour, and shifts when a calendar is given
    commands: CommandsConfig = CommandsConfig()
    profile_dirs: list[Path] = []
    devices: list[DeviceConfig] = []
    status_page: StatusPage | None = None  # off unless configured
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        seen: dict[str, int] = {}
        for i, d in enumerate(devices):
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} is used twice (devices[{seen[d.id]}] and devices[{i}])")
            seen[d.id] = i
        for i, d in enumerate(devices):
            if d.energy is not None and d.energy.meter not in seen:
                raise ValueError(
                    f"devices[{i}] ({d.id!r}): energy.meter names device {d.energy.meter!r}, which the cell does not have"
                )
        return devices

    @property
    def enabled_devices(self) -> list[DeviceConfig]:
        return [d for d in self.devices if d.enabled]

    @property
    def sparkplug_group_id(self) -> str:
        i = self.identity
        return self.sparkplug.group_id or f"{i.enterprise}-{i.site}-{i.area}"

    @property
    def sparkplug_edge_node_id(self) -> str:
        i = self.identity
        return self.sparkplug.edge_node_id or f"{i.line}-{i.cell}"
