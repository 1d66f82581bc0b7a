"""NodeIds and browse paths as profiles write them: by namespace *URI*, never by index.

A server is free to renumber its namespaces on every start (the index is only the
position in its NamespaceArray), so a profile that said ``ns=3`` would silently read
the wrong node after an upgrade. Profiles therefore say ``nsu=<uri>;s=...``; the driver
turns that into an index at every connect. Pure parsing, no asyncua: the config is
checked without importing it.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Literal, cast

OPC_UA_NAMESPACE = "http://opcfoundation.org/UA/"

IdKind = Literal["i", "s", "g", "b"]

_NODE_RE = re.compile(r"^(?:nsu=(?P<nsu>[^;]+);|ns=(?P<ns>\d+);)?(?P<kind>[isgb])=(?P<ident>.*)$", re.DOTALL)
_MAX_NUMERIC = 2**32 - 1


class NodeIdSyntaxError(ValueError):
    """A NodeId or browse-path text that cannot be parsed; the message quotes it."""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A NodeId with its namespace as a URI (None = the OPC UA base namespace, index 0)."""

    namespace: str | None
    kind: IdKind
    identifier: int | str | bytes | uuid.UUID

    def __str__(self) -> str:
        prefix = f"nsu={self.namespace};" if self.namespace and self.namespace != OPC_UA_NAMESPACE else ""
        ident = self.identifier
        text = base64.b64encode(ident).decode("ascii") if isinstance(ident, bytes) else str(ident)
        return f"{prefix}{self.kind}={text}"


def parse_node_id(text: str) -> NodeRef:
    """Parse ``nsu=<uri>;s=Name``, ``nsu=<uri>;i=42``, ``i=2258`` or ``ns=0;i=2258``.

    ``ns=N`` with N > 0 is refused: an index is only valid for one server start.
    """
    m = _NODE_RE.match(text.strip())
    if m is None:
        raise NodeIdSyntaxError(
            f"{text!r} is not a NodeId: expected nsu=<namespace URI>;s=<name> (or ;i=<number>, ;g=<guid>, "
            ";b=<base64>), or i=<number> for the OPC UA base namespace"
        )
    ns, nsu, ident = m["ns"], m["nsu"], m["ident"]
    kind = cast(IdKind, m["kind"])
    if ns is not None and int(ns) != 0:
        raise NodeIdSyntaxError(
            f"{text!r} names namespace index {ns}; profiles must not hard-code a namespace index "
            "(servers renumber them): write nsu=<namespace URI>;... instead "
            "(`cellctl browse` prints every node that way)"
        )
    namespace = None if nsu is None or nsu == OPC_UA_NAMESPACE else nsu
    identifier: int | str | bytes | uuid.UUID
    if kind == "i":
        if not ident.isdigit() or int(ident) > _MAX_NUMERIC:
            raise NodeIdSyntaxError(f"{text!r}: i= needs a number from 0 to {_MAX_NUMERIC}, got {ident!r}")
        identifier = int(ident)
    elif kind == "s":
        if not ident:
            raise NodeIdSyntaxError(f"{text!r}: s= needs a non-empty string")
        identifier = ident
    elif kind == "g":
        try:
            identifier = uuid.UUID(ident)
        except ValueError:
            raise NodeIdSyntaxError(f"{text!r}: g= needs a GUID, got {ident!r}") from None
    else:
        try:
            identifier = base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            raise NodeIdSyntaxError(f"{text!r}: b= needs base64, got {ident!r}") from None
    return NodeRef(namespace, kind, identifier)


@dataclass(frozen=True, slots=True)
class PathElement:
    """One browse name of a browse path, with its namespace URI (None = base namespace)."""

    namespace: str | None
    name: str

    def __str__(self) -> str:
        return f"nsu={self.namespace};{self.name}" if self.namespace else self.name


def parse_path_element(text: str, default_namespace: str | None) -> PathElement:
    """``Name`` (in `default_namespace`) or ``nsu=<uri>;Name`` for a segment of another namespace."""
    raw = text.strip()
    if raw.startswith("nsu="):
        uri, sep, name = raw[4:].partition(";")
        if not sep or not uri or not name:
            raise NodeIdSyntaxError(f"browse path element {text!r}: expected nsu=<namespace URI>;<name>")
        return PathElement(None if uri == OPC_UA_NAMESPACE else uri, name)
    if not raw:
        raise NodeIdSyntaxError("browse path has an empty element")
    if re.match(r"^\d+:", raw):
        raise NodeIdSyntaxError(
            f"browse path element {text!r} looks like <index>:<name>; namespace indexes change between server "
            "starts: give the path's `namespace` URI, or write nsu=<namespace URI>;<name>"
        )
    ns = None if default_namespace in (None, OPC_UA_NAMESPACE) else default_namespace
    return PathElement(ns, raw)


def node_ref_text(namespace_uris: list[str], ns_index: int, kind: IdKind, identifier: object) -> str:
    """The profile form of a NodeId read from a server (index -> URI through its NamespaceArray)."""
    uri = namespace_uris[ns_index] if 0 <= ns_index < len(namespace_uris) else None
    if ns_index != 0 and uri is None:
        raise ValueError(f"namespace index {ns_index} is not in the server's NamespaceArray")
    return str(NodeRef(None if ns_index == 0 else uri, kind, identifier))  # type: ignore[arg-type]
