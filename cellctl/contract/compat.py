"""Is a payload schema a compatible successor of another within one contract version?
docs/contract.md: within `uns/v1` fields may be added; a field may not be removed, stop
being always present, change its JSON type, or a closed vocabulary (enum) gain or lose
values. `breaking_changes(old, new)` lists every such change, by field path.

`python -m cellctl.contract.compat DIR` writes the golden schemas of the current version
(DIR/v<version>/<payload>.json), refusing when that would hide a breaking change."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

Schema = dict[str, Any]
_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _resolve(node: Schema, root: Schema) -> Schema:
    for _ in range(32):  # bounded: refs of refs
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _branches(node: Schema, root: Schema) -> list[Schema]:
    node = _resolve(node, root)
    alts = node.get("anyOf") or node.get("oneOf")
    if alts:
        return [b for alt in alts for b in _branches(alt, root)]
    return [node]


def _types(node: Schema, root: Schema) -> set[str]:
    out: set[str] = set()
    for b in _branches(node, root):
        if "const" in b:
            out.add(_JSON_TYPE.get(type(b["const"]), "object"))
        elif "enum" in b and "type" not in b:
            out |= {_JSON_TYPE.get(type(v), "object") for v in b["enum"]}
        elif isinstance(b.get("type"), list):
            out |= set(b["type"])
        elif "type" in b:
            out.add(b["type"])
        else:
            out.add("any")
    return out


def _vocabulary(node: Schema, root: Schema) -> set[Any] | None:
    """The allowed values when the field is a closed vocabulary (enum or const), else None."""
    values: set[Any] = set()
    for b in _branches(node, root):
        if "const" in b:
            values.add(b["const"])
        elif "enum" in b:
            values |= set(b["enum"])
        elif b.get("type") != "null":
            return None
    return values


def _one(kind: str, node: Schema, root: Schema) -> Schema | None:
    """The single branch of `kind` (object or array) of a field, if there is exactly one."""
    found = [b for b in _branches(node, root) if b.get("type") == kind]
    return found[0] if len(found) == 1 else None


def _compare(  # noqa: PLR0917  (two schemas, each with its root, walked together)
    old: Schema, old_root: Schema, new: Schema, new_root: Schema, path: str, out: list[str]
) -> None:
    old_types, new_types = _types(old, old_root), _types(new, new_root)
    if old_types != new_types:
        out.append(f"{path}: type changed from {sorted(old_types)} to {sorted(new_types)}")
        return
    old_vocab, new_vocab = _vocabulary(old, old_root), _vocabulary(new, new_root)
    if old_vocab is not None and new_vocab is not None and old_vocab != new_vocab:
        gained, lost = sorted(map(str, new_vocab - old_vocab)), sorted(map(str, old_vocab - new_vocab))
        out.append(f"{path}: vocabulary changed (added {gained}, removed {lost})")
    o, n = _one("object", old, old_root), _one("object", new, new_root)
    if o is not None and n is not None:
        old_props, new_props = o.get("properties", {}), n.get("properties", {})
        new_required = set(n.get("required", []))
        for name, sub in old_props.items():
            where = f"{path}.{name}" if path else name
            if name not in new_props:
                out.append(f"{where}: removed")
                continue
            if name in o.get("required", []) and name not in new_required:
                out.append(f"{where}: no longer always present")
            _compare(sub, old_root, new_props[name], new_root, where, out)
        oa, na = o.get("additionalProperties"), n.get("additionalProperties")
        if isinstance(oa, dict) and isinstance(na, dict):
            _compare(oa, old_root, na, new_root, f"{path}.*" if path else "*", out)
    a, b = _one("array", old, old_root), _one("array", new, new_root)
    if (
        a is not None
        and b is not None
        and isinstance(a.get("items"), dict)
        and isinstance(b.get("items"), dict)
    ):
        _compare(a["items"], old_root, b["items"], new_root, f"{path}[]", out)


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Every change from `old` to `new` a consumer of `old` could trip on (empty: compatible)."""
    out: list[str] = []
    _compare(old, old, new, new, "", out)
    return out


def golden_dir(base: Path, version: int) -> Path:
    return base / f"v{version}"


def write_golden(base: Path) -> list[str]:
    """Write the current schemas as the golden files of the current version; return the
    breaking changes instead (writing nothing) if there are any."""
    from cellctl.contract.registry import PAYLOADS
    from cellctl.contract.schema import payload_schema
    from cellctl.encode.uns import PAYLOAD_VERSION

    folder = golden_dir(base, PAYLOAD_VERSION)
    problems: list[str] = []
    current = {name: payload_schema(name) for name in PAYLOADS}
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        if name not in current:
            problems.append(f"{name}: payload removed")
            continue
        problems += [f"{name}: {p}" for p in breaking_changes(orjson.loads(path.read_bytes()), current[name])]
    if problems:
        return problems
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in current.items():
        text = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        (folder / f"{name}.json").write_bytes(text)
    return []


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cellctl.contract.compat GOLDEN_DIR", file=sys.stderr)
        return 2
    problems = write_golden(Path(argv[0]))
    for p in problems:
        print(f"breaking: {p}", file=sys.stderr)
    if problems:
        print(
            "nothing written: these changes need a new contract version (docs/contract.md)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
