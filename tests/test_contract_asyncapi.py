"""`cellctl asyncapi CELL.yaml` (issue 14 item 2): the document names every topic of the
cell concretely, with the schemas, QoS and retain of the registry and the metrics of each
DBIRTH, and the AsyncAPI project's own parser (npm @asyncapi/parser, run by node) finds it
valid. Where node or the parser is missing the parser tests skip with the reason, unless
CELLCTL_REQUIRE_ASYNCAPI=1 (CI, .ci/run) makes that a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.config.loader import load_cell
from cellctl.contract.registry import PAYLOADS
from cellctl.contract.schema import payload_schema
from cellctl.encode.sparkplug import device_model
from cellctl.encode.uns import cell_root
from cellctl.sparkplug.state import AliasBook

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "contract" / "validate_asyncapi.cjs"
PARSER_DIR = Path(os.environ.get("CELLCTL_ASYNCAPI_PARSER", REPO / ".pytest_cache" / "asyncapi-parser"))
SAMPLE = REPO / "drivers" / "modbus" / "sample-config.yaml"

pytestmark = pytest.mark.timeout(120)


def _parser_or_skip() -> str:
    """The node binary, or skip (fail under CELLCTL_REQUIRE_ASYNCAPI=1) saying what is missing."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed (CI installs nodejs and npm in .ci/run)"
    elif not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        missing = f"@asyncapi/parser is not installed in {PARSER_DIR} (run `make asyncapi-parser`)"
    if missing is not None:
        if os.environ.get("CELLCTL_REQUIRE_ASYNCAPI") == "1":
            pytest.fail(f"CELLCTL_REQUIRE_ASYNCAPI=1 but {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


def parse(document: Path) -> subprocess.CompletedProcess[str]:
    node = _parser_or_skip()
    return subprocess.run(
        [node, str(SCRIPT), str(PARSER_DIR), str(document)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def full_config(tmp_path: Path) -> Path:
    """The Modbus sample with both formats, per_point mode and a primary host: every kind of channel."""
    config = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    config["publish"] = {**config.get("publish", {}), "formats": ["uns", "sparkplug"], "mode": "per_point"}
    config["sparkplug"] = {**config.get("sparkplug", {}), "primary_host": "scada-1"}
    config["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def generate(config: Path, out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["asyncapi", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = yaml.safe_load(out.read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize("which", ["sample", "full"])
def test_the_asyncapi_parser_finds_the_document_valid(which: str, tmp_path: Path) -> None:
    config = SAMPLE if which == "sample" else full_config(tmp_path)
    out = tmp_path / "asyncapi.yaml"
    doc = generate(config, out)
    result = parse(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"valid: {len(doc['channels'])} channels" in result.stdout


def test_the_parser_refuses_a_broken_document(tmp_path: Path) -> None:
    """The check can fail: an operation on a channel that does not exist."""
    doc = generate(SAMPLE, tmp_path / "good.yaml")
    op = next(iter(doc["operations"].values()))
    op["channel"] = {"$ref": "#/channels/no-such-channel"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = parse(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "invalid" in result.stdout


def test_every_topic_of_the_cell_is_a_concrete_channel_with_qos_and_retain(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    doc = generate(config, tmp_path / "asyncapi.yaml")
    compiled = load_cell(config)
    root = cell_root(compiled.config.publish.prefix, compiled.config.identity)
    qos = compiled.config.backbone.qos
    addresses = {c["address"]: cid for cid, c in doc["channels"].items()}
    expected = {f"{root}/status", f"{root}/outbox", f"{root}/events", f"{root}/manifest"}
    for dev in compiled.devices:
        d = dev.config.id
        expected |= {f"{root}/{d}/state", f"{root}/{d}/data"}
        expected |= {f"{root}/{d}/points/{p.id}" for p in dev.points}
    assert expected <= set(addresses), sorted(expected - set(addresses))
    ops = {op["channel"]["$ref"].rsplit("/", 1)[1]: op for op in doc["operations"].values()}
    for pl in PAYLOADS.values():
        address = pl.address(root, compiled.devices[0].config.id, compiled.devices[0].points[0].id)
        binding = ops[addresses[address]]["bindings"]["mqtt"]
        assert binding["retain"] is pl.retain, pl.name
        assert binding["qos"] >= (qos if pl.qos == "backbone" else pl.qos), pl.name
    # the message schemas are the registry's (same fields, same required ones)
    schemas = doc["components"]["schemas"]
    data = schemas[doc["components"]["messages"]["data"]["payload"]["$ref"].rsplit("/", 1)[1]]
    assert set(data["properties"]) == set(payload_schema("data")["properties"])
    assert data["required"] == payload_schema("data")["required"]


def test_each_dbirth_lists_the_metrics_the_node_births(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    doc = generate(config, tmp_path / "asyncapi.yaml")
    compiled = load_cell(config)
    aliases = AliasBook(None)  # no daemon has run: what a fresh one assigns
    for dev in compiled.devices:
        model = device_model(dev, aliases)
        listed = doc["components"]["messages"][f"spb_dbirth_{dev.config.id}"]["x-sparkplug-metrics"]
        assert {(m["name"], m["alias"], m["datatype"]) for m in listed} == {
            (d.name, d.alias, d.datatype.name) for d in model.table.by_name.values()
        }
    node = doc["components"]["messages"]["spb_nbirth"]["x-sparkplug-metrics"]
    assert {"bdSeq", "Node Control/Rebirth", "Outbox/Messages"} <= {m["name"] for m in node}
    group = compiled.config.sparkplug_group_id
    edge = compiled.config.sparkplug_edge_node_id
    addresses = {c["address"] for c in doc["channels"].values()}
    assert f"spBv1.0/{group}/DBIRTH/{edge}/{compiled.devices[0].config.id}" in addresses
    assert "spBv1.0/STATE/scada-1" in addresses
    assert not (tmp_path / "state").exists(), "generating the document writes nothing"
