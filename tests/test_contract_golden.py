"""The versioned contract (issue 14 item 3, docs/contract.md): the payload schemas of the
current version are checked in (tests/contract/v<version>/*.json). Removing a field,
making it optional, changing its type or a vocabulary fails here unless the version
changes; an addition only asks for the golden files to be regenerated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from cellctl.contract.compat import breaking_changes, golden_dir
from cellctl.contract.registry import PAYLOADS
from cellctl.contract.schema import payload_schema
from cellctl.encode.uns import PAYLOAD_VERSION

GOLDEN = golden_dir(Path(__file__).parent / "contract", PAYLOAD_VERSION)
REGENERATE = "python -m cellctl.contract.compat tests/contract"


def golden(name: str) -> dict[str, Any]:
    path = GOLDEN / f"{name}.json"
    assert path.is_file(), f"payload {name!r} has no golden schema in {GOLDEN} (run `{REGENERATE}`)"
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.json")))
def test_no_payload_of_this_version_broke_its_contract(name: str) -> None:
    assert name in PAYLOADS, (
        f"payload {name!r} of uns/v{PAYLOAD_VERSION} was removed: that needs a new version"
    )
    problems = breaking_changes(golden(name), payload_schema(name))
    assert not problems, (
        f"payload {name!r} changed incompatibly within uns/v{PAYLOAD_VERSION}: {problems}; "
        "keep the field, or bump the version (docs/contract.md)"
    )


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_golden_schemas_are_current(name: str) -> None:
    """Compatible additions are allowed, but recorded, so a later removal is caught."""
    assert golden(name) == orjson.loads(orjson.dumps(payload_schema(name))), (
        f"the schema of {name!r} changed compatibly; record it: `{REGENERATE}`"
    )


# -- the checker itself: each kind of break is caught, additions are not -----------------


def data() -> dict[str, Any]:
    return payload_schema("data")


def props(schema: dict[str, Any], def_name: str | None = None) -> dict[str, Any]:
    node = schema["$defs"][def_name] if def_name else schema
    p: dict[str, Any] = node["properties"]
    return p


def test_a_removed_field_is_breaking() -> None:
    new = data()
    del props(new)["seq"]
    new["required"].remove("seq")
    assert breaking_changes(data(), new) == ["seq: removed"]


def test_a_changed_type_is_breaking() -> None:
    new = data()
    props(new)["ts"] = {"type": "string"}
    assert breaking_changes(data(), new) == ["ts: type changed from ['integer'] to ['string']"]


def test_a_field_that_became_optional_is_breaking() -> None:
    new = data()
    new["required"].remove("values")
    assert breaking_changes(data(), new) == ["values: no longer always present"]


def test_a_nested_change_is_found_through_refs() -> None:
    new = data()
    del props(new, "MachineJson")["execution"]
    props(new, "QualityJson")["reason"] = {"type": "integer"}
    assert breaking_changes(data(), new) == [
        "quality.*.reason: type changed from ['string'] to ['integer']",
        "machine.execution: removed",
    ]


def test_a_vocabulary_change_is_breaking() -> None:
    new = data()
    new["$defs"]["ItemState"]["enum"].append("exploded")
    assert breaking_changes(data(), new) == [
        "machine.item_state: vocabulary changed (added ['exploded'], removed [])"
    ]


def test_additions_are_compatible() -> None:
    new = copy.deepcopy(payload_schema("state"))
    props(new)["site_note"] = {"type": "string"}
    props(new, "PointStateJson")["src_quality"] = {"type": "integer"}
    assert breaking_changes(payload_schema("state"), new) == []
