"""Browsing a server for commissioning: what is there, under which NodeId (namespace
URI form), of which data type, with which value; and a profile skeleton from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.ua_utils import get_node_supertype
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from cellctl_opcua.nodeid import OPC_UA_NAMESPACE, node_ref_text
from cellctl_opcua.uahelp import as_node_id, status
from cellctl_opcua.uahelp import node_id as make_node_id
from cellctl_opcua.values import POINT_TYPE_OF, Builtin, text_of

_CLASSES: Final = {1: "Object", 2: "Variable", 4: "Method"}
_SERVER_OBJECT: Final = 2253  # i=2253: the Server object, standard diagnostics (huge)
_CURRENT_WRITE: Final = 0x02
_KIND: Final = {
    ua.NodeIdType.TwoByte: "i",
    ua.NodeIdType.FourByte: "i",
    ua.NodeIdType.Numeric: "i",
    ua.NodeIdType.String: "s",
    ua.NodeIdType.Guid: "g",
    ua.NodeIdType.ByteString: "b",
}


def node_text(namespaces: list[str], node_id: Any) -> str:
    """A NodeId as profiles write it (nsu=<uri>;...)."""
    return node_ref_text(namespaces, node_id.NamespaceIndex, _KIND[node_id.NodeIdType], node_id.Identifier)  # type: ignore[arg-type]


async def builtin_of(client: Client, data_type: ua.NodeId, cache: dict[str, Builtin | None]) -> Builtin | None:
    """The built-in type a data type derives from (UtcTime -> DateTime, enums -> Int32),
    or None for structures and other types cellctl cannot map."""
    key = data_type.to_string()
    if key in cache:
        return cache[key]
    current: ua.NodeId | None = data_type
    found: Builtin | None = None
    for _ in range(16):
        if current is None:
            break
        if current.NamespaceIndex == 0 and isinstance(current.Identifier, int):
            if 1 <= current.Identifier <= 21:  # scalar built-ins (not structures, variants)
                found = Builtin(current.Identifier)
                break
            if current.Identifier == ObjectIds.Enumeration:
                found = Builtin.Int32
                break
            if current.Identifier in (ObjectIds.BaseDataType, ObjectIds.Structure, 22, 23, 24, 25):
                break
        parent = await get_node_supertype(client.get_node(current))
        current = parent.nodeid if parent is not None else None
    cache[key] = found
    return found


@dataclass
class BrowsedNode:
    node: str
    browse_name: str
    display_name: str
    node_class: str
    path: list[str]
    depth: int
    data_type: str | None = None
    point_type: str | None = None
    value: Any = None
    writable: bool = False
    array: bool = False
    status: str | None = None
    children: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "browse_name": self.browse_name,
            "display_name": self.display_name,
            "class": self.node_class,
            "path": self.path,
            "depth": self.depth,
        }
        if self.node_class == "Variable":
            out.update(
                data_type=self.data_type,
                point_type=self.point_type,
                value=self.value,
                writable=self.writable,
                array=self.array,
            )
            if self.status:
                out["status"] = self.status
        return out


def _qualified(namespaces: list[str], name: ua.QualifiedName) -> str:
    uri = namespaces[name.NamespaceIndex] if 0 <= name.NamespaceIndex < len(namespaces) else None
    if name.NamespaceIndex == 0 or uri in (None, OPC_UA_NAMESPACE):
        return str(name.Name)
    return f"nsu={uri};{name.Name}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_jsonable(v) for v in value[:20]]
    return text_of(value)


async def _browse_children(client: Client, node_ids: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    params = ua.BrowseParameters(
        NodesToBrowse=[
            ua.BrowseDescription(
                NodeId=n,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=make_node_id(ObjectIds.HierarchicalReferences),
                IncludeSubtypes=True,
                NodeClassMask=1 | 2 | 4,
                ResultMask=ua.BrowseResultMask.All,
            )
            for n in node_ids
        ]
    )
    results = await client.uaclient.browse(params)
    out: list[list[ua.ReferenceDescription]] = []
    for result in results:
        refs = list(result.References or [])
        point = result.ContinuationPoint
        for _ in range(1000):
            if not point:
                break
            more = await client.uaclient.browse_next(
                ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=[point])
            )
            refs += more[0].References or []
            point = more[0].ContinuationPoint
        out.append(refs)
    return out


async def browse_tree(
    client: Client,
    namespaces: list[str],
    *,
    depth: int = 3,
    root: ua.NodeId | None = None,
    include_server: bool = False,
    batch: int = 200,
) -> list[dict[str, Any]]:
    """Breadth first from `root` (the Objects folder), `depth` levels; variables come
    with data type, value and writability, read in batches."""
    return [n.as_dict() for n in await browse_nodes(client, namespaces, depth=depth, root=root,
                                                     include_server=include_server, batch=batch)]


async def browse_nodes(
    client: Client,
    namespaces: list[str],
    *,
    depth: int = 3,
    root: ua.NodeId | None = None,
    include_server: bool = False,
    batch: int = 200,
) -> list[BrowsedNode]:
    start = root or make_node_id(ObjectIds.ObjectsFolder)
    found: list[BrowsedNode] = []
    seen: set[str] = {start.to_string()}
    level: list[tuple[ua.NodeId, list[str]]] = [(start, [])]
    variables: list[tuple[BrowsedNode, ua.NodeId]] = []
    for d in range(1, depth + 1):
        nxt: list[tuple[ua.NodeId, list[str]]] = []
        for chunk_start in range(0, len(level), batch):
            chunk = level[chunk_start : chunk_start + batch]
            children = await _browse_children(client, [n for n, _ in chunk])
            for (_, path), refs in zip(chunk, children, strict=True):
                for ref in refs:
                    node_id = as_node_id(ref.NodeId)
                    key = node_id.to_string()
                    if key in seen:
                        continue
                    seen.add(key)
                    if not include_server and node_id == make_node_id(_SERVER_OBJECT):
                        continue
                    name = _qualified(namespaces, ref.BrowseName)
                    entry = BrowsedNode(
                        node=node_text(namespaces, node_id),
                        browse_name=name,
                        display_name=ref.DisplayName.Text or "",
                        node_class=_CLASSES.get(int(ref.NodeClass), str(ref.NodeClass)),
                        path=[*path, name],
                        depth=d,
                    )
                    found.append(entry)
                    if entry.node_class == "Variable":
                        variables.append((entry, node_id))
                    if entry.node_class in ("Object", "Variable"):
                        nxt.append((node_id, entry.path))
        level = nxt
        if not level:
            break
    cache: dict[str, Builtin | None] = {}
    attrs = (AttributeIds.DataType, AttributeIds.Value, AttributeIds.AccessLevel, AttributeIds.ValueRank)
    for chunk_start in range(0, len(variables), batch):
        vchunk = variables[chunk_start : chunk_start + batch]
        read = [ua.ReadValueId(NodeId=n, AttributeId=a) for _, n in vchunk for a in attrs]
        dvs = await client.uaclient.read(ua.ReadParameters(NodesToRead=read))
        for j, (entry, _) in enumerate(vchunk):
            dtype, value, access, rank = dvs[4 * j : 4 * j + 4]
            if dtype.Value is not None and isinstance(dtype.Value.Value, ua.NodeId):
                builtin = await builtin_of(client, dtype.Value.Value, cache)
                entry.data_type = builtin.name if builtin is not None else dtype.Value.Value.to_string()
                entry.point_type = POINT_TYPE_OF.get(builtin) if builtin is not None else None
            code = value.StatusCode.value if value.StatusCode is not None else 0
            if code & 0x8000_0000:
                entry.status = status(code).name
            else:
                entry.value = _jsonable(value.Value.Value if value.Value is not None else None)
            if access.Value is not None and isinstance(access.Value.Value, int):
                entry.writable = bool(access.Value.Value & _CURRENT_WRITE)
            if rank.Value is not None and isinstance(rank.Value.Value, int):
                entry.array = rank.Value.Value > 0
            if entry.array:
                entry.point_type = None
    return found


def _snake(text: str) -> str:
    text = re.sub(r"^nsu=[^;]*;", "", text)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_skeleton(nodes: list[BrowsedNode], *, name: str, endpoint: str) -> str:
    """A starting profile (YAML text with comments) with one point per scalar variable of
    a vendor namespace whose data type maps to a point type. Review it: ids, units,
    limits, state map."""
    lines = [
        f"# Profile skeleton from `cellctl browse {endpoint} --profile-skeleton`.",
        "# Review every point: keep what you need, add units, deadbands, limits and a state map.",
        f"name: {name}",
        "driver: opcua",
        f"description: Generated from {endpoint}; edit me",
        "points:",
    ]
    used: set[str] = set()
    count = 0
    for node in nodes:
        if node.node_class != "Variable" or node.point_type is None or not node.node.startswith("nsu="):
            continue  # only the vendor's namespaces: the base namespace is the server's own
        base = _snake("_".join(p.rpartition(";")[2] for p in node.path[-2:])) or "point"
        base = base[:60] if base[0].isalnum() else f"p_{base}"[:60]
        pid, n = base, 2
        while pid in used:
            pid, n = f"{base[:57]}_{n}", n + 1
        used.add(pid)
        count += 1
        lines.append(f"  - id: {pid}")
        lines.append(f"    type: {node.point_type}")
        lines.append(f"    description: {_yaml_str(node.display_name or node.browse_name)}")
        if node.writable:
            lines.append(f"    # writable on the server ({node.data_type}): to allow writes set access: rw"
                         + (" and min/max" if node.point_type in ("int", "float") else ""))
        lines.append(f"    address: {{node: {_yaml_str(node.node)}}}")
        lines.append(f"    # {node.data_type}, value when browsed: {node.value!r}")
    if count == 0:
        lines.append("  []  # no scalar variables found: browse deeper (--depth) or from another --root")
    return "\n".join(lines) + "\n"
