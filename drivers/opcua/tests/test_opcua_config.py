"""Pure parts, no server: NodeId texts, config models and their error messages, value
conversions (property tests), status severities, the trust store, and start-up cost."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_opcua.config import OpcUaAddress, OpcUaConnection, OpcUaOptions
from cellctl_opcua.nodeid import NodeIdSyntaxError, parse_node_id, parse_path_element
from cellctl_opcua.pki import TrustStore, der_of, generate, thumbprint
from cellctl_opcua.plugin import plugin
from cellctl_opcua.values import INT_RANGES, Builtin, Unconvertible, quality_of, received, to_builtin
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cellctl.config.loader import load_cell
from cellctl.errors import ConfigError

pytestmark = pytest.mark.timeout(60)
NS = "urn:cellctl:sim:opcua-machine"


# -- NodeIds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "namespace", "kind", "identifier"),
    [
        (f"nsu={NS};s=Machine.State", NS, "s", "Machine.State"),
        (f"nsu={NS};i=42", NS, "i", 42),
        ("i=2258", None, "i", 2258),
        ("ns=0;i=85", None, "i", 85),
        ("nsu=http://opcfoundation.org/UA/;i=85", None, "i", 85),
        (f"nsu={NS};s=a;b=c", NS, "s", "a;b=c"),  # string ids may hold ; and =
        (f"nsu={NS};g=72962b91-fa75-4ae6-8d28-b404dc7daf63", NS, "g", uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")),
        (f"nsu={NS};b=AAEC", NS, "b", b"\x00\x01\x02"),
    ],
)
def test_node_ids_parse_with_namespace_uris(text: str, namespace: str | None, kind: str, identifier: Any) -> None:
    ref = parse_node_id(text)
    assert (ref.namespace, ref.kind, ref.identifier) == (namespace, kind, identifier)
    assert parse_node_id(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ns=3;s=Machine", "must not hard-code a namespace index"),
        ("Machine.State", "is not a NodeId"),
        (f"nsu={NS};i=abc", "i= needs a number"),
        (f"nsu={NS};s=", "non-empty"),
        (f"nsu={NS};g=nope", "needs a GUID"),
    ],
)
def test_bad_node_ids_are_refused_with_the_users_text(text: str, message: str) -> None:
    with pytest.raises(NodeIdSyntaxError, match=message) as err:
        parse_node_id(text)
    assert repr(text) in str(err.value)


def test_browse_path_elements() -> None:
    assert parse_path_element("Machine", NS).namespace == NS
    assert parse_path_element("nsu=urn:other;Thing", NS).namespace == "urn:other"
    assert parse_path_element("Server", None).namespace is None
    with pytest.raises(NodeIdSyntaxError, match="namespace indexes change"):
        parse_path_element("2:Machine", NS)


# -- config models ----------------------------------------------------------------------


def errors_of(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return "; ".join(e["msg"] for e in err.value.errors())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": "ns=2;s=X"}, "must not hard-code a namespace index"),
        ({}, "give exactly one of 'node'"),
        ({"node": f"nsu={NS};s=X", "path": ["X"]}, "give exactly one of 'node'"),
        ({"node": f"nsu={NS};s=X", "namespace": NS}, "belong to a 'path'"),
        ({"path": [], "namespace": NS}, "'path' is empty"),
        ({"node": f"nsu={NS};s=X", "mode": "poll", "queue_size": 5}, "queue_size: only for mode subscribe"),
        ({"node": f"nsu={NS};s=X", "poll_interval": "1s"}, "'poll_interval' is for mode poll"),
        ({"node": f"nsu={NS};s=X", "deadband": {"absolute": 1, "percent": 2}}, "exactly one of 'absolute'"),
        ({"node": f"nsu={NS};s=X", "mode": "sometimes"}, "'subscribe' or 'poll'"),
    ],
)
def test_address_errors(data: dict[str, Any], message: str) -> None:
    assert message in errors_of(OpcUaAddress, data)


def test_address_path_forms() -> None:
    a = OpcUaAddress.model_validate({"path": "Machine/Temperatures/Spindle", "namespace": NS})
    assert a.path == ["Machine", "Temperatures", "Spindle"]
    assert a.describe() == f"/nsu={NS};Machine/nsu={NS};Temperatures/nsu={NS};Spindle"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"endpoint": "http://x:4840"}, "must start with opc.tcp://"),
        ({"endpoint": "opc.tcp://x:4840", "security_policy": "Basic256Sha256"}, "needs security_mode Sign"),
        ({"endpoint": "opc.tcp://x:4840", "username": "u"}, "'username' needs 'password_file'"),
        ({"endpoint": "opc.tcp://x:4840", "password_file": "/p"}, "'password_file' needs 'username'"),
        ({"endpoint": "opc.tcp://x:4840", "certificate": "/c"}, "give both 'certificate' and 'private_key'"),
        ({"endpoint": "opc.tcp://x:4840", "security_mode": "Encrypt"}, "'None', 'Sign' or 'SignAndEncrypt'"),
    ],
)
def test_connection_errors(data: dict[str, Any], message: str) -> None:
    assert message in errors_of(OpcUaConnection, data)


def test_options_errors() -> None:
    assert "keepalive (0.1 s) is shorter than publishing_interval (0.5 s)" in errors_of(
        OpcUaOptions, {"keepalive": "100ms"}
    )


def test_cellctl_check_reports_opcua_problems_with_file_and_field(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "press.yaml").write_text(
        textwrap.dedent(
            """
            name: press
            driver: opcua
            points:
              - {id: a, type: string, address: {node: "ns=4;s=A", }}
              - {id: b, type: string, address: {node: "nsu=urn:x;s=B", deadband: {absolute: 1}}}
            """
        )
    )
    config = tmp_path / "cell.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "identity": {"enterprise": "e", "site": "s", "area": "a", "line": "l", "cell": "c"},
                "profile_dirs": [str(profiles)],
                "devices": [
                    {"id": "press-1", "driver": "opcua", "profile": "press", "connection": {"endpoint": "tcp://x"}}
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        load_cell(config)
    text = "\n".join(err.value.problems)
    assert "connection.endpoint" in text
    assert "'tcp://x'" in text
    assert "press.yaml" in text
    assert "namespace index 4" in text
    assert "a server deadband needs a numeric point, but the point is type string" in text


def test_plan_summary_names_the_subscription_and_polled_groups() -> None:
    from opcua_testutil import device_ctx

    lines = plugin.plan_summary(device_ctx("opc.tcp://192.0.2.1:4840"))
    assert lines[0] == "session opc.tcp://192.0.2.1:4840 (no security)"
    assert lines[1].startswith("subscription every 0.05 s: 19 monitored item(s)")  # the profile's 20 points, 1 polled
    assert lines[2] == "read every 60 s: 1 node(s)"


# -- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "quality"),
    [(0, "good"), (0x0000_0400, "good"), (0x4090_0000, "uncertain"), (0x808C_0000, "bad"), (0xC000_0000, "bad")],
)
def test_status_severity(code: int, quality: str) -> None:
    assert quality_of(code) == quality


@given(st.sampled_from(sorted(INT_RANGES)), st.integers(min_value=-(2**65), max_value=2**65))
def test_integer_writes_fit_their_type_or_are_refused(builtin: Builtin, value: int) -> None:
    low, high = INT_RANGES[builtin]
    if low <= value <= high:
        assert to_builtin(value, builtin, "p") == value
    else:
        with pytest.raises(ValueError, match=f"{value} is outside {builtin.name}"):
            to_builtin(value, builtin, "p")


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float32_values_are_written_as_given(value: float) -> None:
    assert to_builtin(value, Builtin.Float, "p") == value


def test_write_conversions() -> None:
    assert to_builtin(True, Builtin.Boolean, "p") is True
    assert to_builtin(1, Builtin.Boolean, "p") is True
    with pytest.raises(ValueError, match="'yes' is not a Boolean"):
        to_builtin("yes", Builtin.Boolean, "p")
    with pytest.raises(ValueError, match="True is not an integer"):
        to_builtin(True, Builtin.Int32, "p")
    with pytest.raises(ValueError, match="outside the range of data type Float"):
        to_builtin(1e39, Builtin.Float, "p")
    assert to_builtin("2026-01-02T03:04:05", Builtin.DateTime, "p") == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert to_builtin(0, Builtin.DateTime, "p") == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="writing data type ExtensionObject is not supported"):
        to_builtin({}, Builtin.ExtensionObject, "p")


def test_received_values_convert_to_the_point_type_or_refuse() -> None:
    assert received("int", True) == 1
    assert received("int", 3.0) == 3
    assert received("float", 3) == 3.0
    assert received("string", 42) == "42"
    assert received("bool", 0) is False
    with pytest.raises(Unconvertible, match="array value"):
        received("float", [1.0, 2.0])
    with pytest.raises(Unconvertible, match="no value"):
        received("float", None)
    with pytest.raises(Unconvertible, match="not an integer"):
        received("int", 2.5)


# -- trust store ------------------------------------------------------------------------


def test_certificate_init_keeps_the_application_uri(tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    me, created = store.init(uri="urn:cell-3:cellctl", hostname="cell-3")
    assert created
    assert me.uri == "urn:cell-3:cellctl"
    assert (store.key_path.stat().st_mode & 0o777) == 0o600
    again, created = store.init()
    assert not created
    assert der_of(again.cert) == der_of(me.cert)
    renewed, created = store.init(force=True)
    assert created
    assert renewed.uri == "urn:cell-3:cellctl"
    assert der_of(renewed.cert) != der_of(me.cert)


def test_trust_decisions(tmp_path: Path) -> None:
    store = TrustStore(tmp_path)
    server_der, _ = generate("urn:server", common="plc-7", hostnames=["plc-7"], role="server")
    verdict = store.check(server_der)
    assert not verdict.trusted
    assert verdict.rejected_path is not None
    assert verdict.rejected_path.read_bytes() == server_der
    assert store.check(server_der).rejected_path == verdict.rejected_path  # parked once
    trusted = store.trust(thumbprint(server_der)[:8])
    assert trusted.parent == store.trusted_dir
    assert not verdict.rejected_path.exists()
    assert store.check(server_der).trusted
    expired = store.check(server_der, now=dt.datetime(2200, 1, 1, tzinfo=dt.UTC))
    assert not expired.trusted
    assert "not valid now" in expired.reason


def test_trust_of_an_unknown_thumbprint_explains(tmp_path: Path) -> None:
    from cellctl_opcua.pki import PkiError

    with pytest.raises(PkiError, match="neither a certificate file nor the thumbprint"):
        TrustStore(tmp_path).trust("ABCDEF123456")


# -- start-up cost ----------------------------------------------------------------------


def test_checking_an_opcua_cell_does_not_import_asyncua(tmp_path: Path) -> None:
    """The plugin and its config are asyncua-free; the daemon imports it only when it
    opens an OPC UA device."""
    config = tmp_path / "cell.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "identity": {"enterprise": "e", "site": "s", "area": "a", "line": "l", "cell": "c"},
                "devices": [
                    {
                        "id": "m",
                        "driver": "opcua",
                        "profile": "sim-opcua-machine",
                        "connection": {"endpoint": "opc.tcp://127.0.0.1:4840"},
                    }
                ],
            }
        )
    )
    code = (
        "import sys; from cellctl.config.loader import load_cell; "
        f"load_cell(__import__('pathlib').Path({str(config)!r})); "
        "print(sorted(m for m in sys.modules if m.startswith('asyncua')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


def test_the_commented_sample_config_is_valid() -> None:
    from cellctl.config.cell import DeviceConfig

    sample = yaml.safe_load((Path(__file__).parents[1] / "sample-config.yaml").read_text())
    for device in sample["devices"]:
        DeviceConfig.model_validate(device)
        OpcUaConnection.model_validate(device["connection"])
        OpcUaOptions.model_validate(device.get("options", {}))
