"""JSON Schemas of the registered payloads, generated from their types with pydantic's
TypeAdapter (draft 2020-12). Nothing here runs on the data path."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from cellctl.contract.registry import PAYLOADS, Payload

Schema = dict[str, Any]


def _payload(name: str) -> Payload:
    try:
        return PAYLOADS[name]
    except KeyError:
        known = ", ".join(sorted(PAYLOADS))
        raise KeyError(f"no payload named {name!r} (known: {known})") from None


@cache
def _schema(name: str) -> Schema:
    pl = _payload(name)
    head: Schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:cellctl:uns:v1:{name}",
    }
    return head | TypeAdapter(pl.type).json_schema(mode="serialization")


def payload_schema(name: str, *, strict: bool = False) -> Schema:
    """The JSON Schema of payload `name`. `strict` also refuses fields the schema does not
    name (`additionalProperties: false` on every object with properties): what the tests
    use, so a field the code adds without the contract fails. The published schema stays
    open, since new fields may join within a version (docs/contract.md)."""
    schema = copy.deepcopy(_schema(name))
    if strict:
        _close(schema)
    return schema


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for item in node:
            _close(item)


def topic_schema(names: list[str], *, strict: bool = False) -> Schema:
    """One schema for a topic that carries several payloads (the events): any of them."""
    if len(names) == 1:
        return payload_schema(names[0], strict=strict)
    return {"anyOf": [payload_schema(n, strict=strict) for n in names]}
