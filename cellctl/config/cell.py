"""The cell config: who this cell is (ISA-95 path), where the backbone is, which devices
it has. Validated once at start-up; frozen afterwards."""

from __future__ import annotations

import re
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

from cellctl.config.profile import ID_PATTERN, Deadband

# Topic levels must not contain MQTT wildcards or separators.
_TOPIC_LEVEL = re.compile(r"^[^/+#$\s][^/+#\s]{0,63}$")


def _topic_level(value: str) -> str:
    if not _TOPIC_LEVEL.match(value):
        raise ValueError(
            f"{value!r} cannot be an MQTT topic level: use 1-64 characters without / + # or spaces, not starting with $"
        )
    return value


TopicLevel = Annotated[str, AfterValidator(_topic_level)]
RESERVED_DEVICE_IDS = frozenset({"status", "cmd"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    """Accept 0.5, "500ms", "2s", "5m", "1h" for durations; leave other types to pydantic."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 500ms, 2s or 5m, got {value!r}")
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]


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


class Backbone(_Frozen):
    """The MQTT broker of the site's data backbone."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None  # default: cellctl-<enterprise>-<site>-...-<cell>
    username: str | None = None
    password_file: Path | None = None  # the password itself never sits in the config
    tls: Tls | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    qos: Literal[0, 1] = 1
    reconnect_min: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 30.0
    # Messages held in memory while the broker is unreachable (until the durable outbox
    # lands); past this the oldest are dropped and counted.
    max_queued_messages: Annotated[int, Field(ge=100)] = 100_000

    @model_validator(mode="after")
    def _auth(self) -> Backbone:
        if self.password_file is not None and self.username is None:
            raise ValueError("'password_file' needs 'username'")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("'reconnect_min' is greater than 'reconnect_max'")
        return self


class Publish(_Frozen):
    """How samples become MQTT messages (see docs/topics.md)."""

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
        return self


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


class DeviceConfig(_Frozen):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    driver: str
    profile: str
    enabled: bool = True
    connection: dict[str, Any]
    options: dict[str, Any] = {}
    poll_interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 1.0
    availability: Availability = Availability()
    # Per-device overrides of profile points; `disabled_points` are not read at all.
    points: dict[str, PointOverride] = {}
    disabled_points: list[str] = []

    @model_validator(mode="after")
    def _reserved(self) -> DeviceConfig:
        if self.id in RESERVED_DEVICE_IDS:
            raise ValueError(f"device id {self.id!r} is reserved for cell-level topics")
        return self


class CellConfig(_Frozen):
    identity: Identity
    backbone: Backbone = Backbone()
    publish: Publish = Publish()
    profile_dirs: list[Path] = []
    devices: list[DeviceConfig] = []
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        seen: dict[str, int] = {}
        for i, d in enumerate(devices):
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} is used twice (devices[{seen[d.id]}] and devices[{i}])")
            seen[d.id] = i
        return devices

    @property
    def enabled_devices(self) -> list[DeviceConfig]:
        return [d for d in self.devices if d.enabled]
