"""Typed constructors for the few asyncua types whose annotations use int subclasses
(ua.Int32, ua.Boolean, ...) that plain ints and bools do not satisfy under mypy."""

from __future__ import annotations

from typing import Any

from asyncua import ua


def node_id(identifier: Any, namespace: int = 0, kind: ua.NodeIdType | None = None) -> ua.NodeId:
    """A NodeId (numeric ids of ns=0 give the compact encodings, as asyncua picks them)."""
    return ua.NodeId(identifier, namespace, kind)  # type: ignore[arg-type]


def as_node_id(expanded: Any) -> ua.NodeId:
    """An ExpandedNodeId (from browse results) as a plain NodeId for requests."""
    return ua.NodeId(expanded.Identifier, expanded.NamespaceIndex, expanded.NodeIdType)


def status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)  # type: ignore[arg-type]


def forward_hierarchical(name: ua.QualifiedName) -> ua.RelativePathElement:
    from asyncua.ua.object_ids import ObjectIds

    return ua.RelativePathElement(
        ReferenceTypeId=node_id(ObjectIds.HierarchicalReferences),
        IsInverse=False,  # type: ignore[arg-type]
        IncludeSubtypes=True,  # type: ignore[arg-type]
        TargetName=name,
    )
