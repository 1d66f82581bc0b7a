"""What a Sparkplug edge node must remember across restarts, in its state directory.

- `BdSeqFile`: the bdSeq of the last MQTT CONNECT. A node that restarts at 0 makes
  hosts match its new NBIRTH against an old NDEATH (and fails the conformance kit).
- `AliasBook`: metric aliases that never change meaning. DATA waiting in the outbox
  across a restart refers to metrics by alias; if the next process numbered its
  metrics differently, replayed history would land on the wrong tags.

Both write atomically (temporary file, fsync, rename, fsync of the directory), so a
power cut leaves either the old or the new content, never a torn file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import orjson

from cellctl.sparkplug.codec import SEQ_MODULUS, DataType, MetricDef, MetricTable, next_seq
from cellctl.statefile import atomic_write

_MAX_FILE_BYTES: Final = 16 * 1024 * 1024


class BdSeqFile:
    """The birth/death sequence number, persisted before each CONNECT uses it.

    `next_session()` is called once per new MQTT CONNECT (not on a rebirth): it returns
    the bdSeq for this session's Will and NBIRTH and stores it first, so a crash right
    after connecting can never reuse it. The first session ever uses 0."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.recovered: str | None = None  # why the stored value was unusable, if it was
        self.current: int | None = None

    def _read(self) -> int | None:
        try:
            text = self.path.read_bytes()[:64].decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.recovered = f"unreadable ({exc}); starting over at 0"
            return None
        if not text.isdigit() or int(text) >= SEQ_MODULUS:
            self.recovered = f"invalid content {text[:16]!r}; starting over at 0"
            return None
        return int(text)

    def next_session(self) -> int:
        last = self._read()
        bd = 0 if last is None else next_seq(last)
        atomic_write(self.path, f"{bd}\n".encode("ascii"))
        self.current = bd
        return bd


class AliasBook:
    """Node-unique metric aliases that keep their meaning for the life of the state dir.

    Aliases are handed out from one counter for the node and its devices, in the order
    metrics are first seen, and never reused for another (device, metric) pair. Call
    `save()` before the births that use new aliases are published."""

    VERSION: Final = 1
    NODE: Final = ""  # scope key of the edge node's own metrics

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.recovered: str | None = None
        self._aliases: dict[str, dict[str, int]] = {}
        self._next = 1
        self._dirty = False
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.recovered = f"unreadable ({exc.strerror}); aliases start afresh"
            return
        try:
            doc = orjson.loads(raw[:_MAX_FILE_BYTES])
            if doc.get("version") != self.VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            aliases = doc["aliases"]
            seen: set[int] = set()
            for scope, names in aliases.items():
                for name, alias in names.items():
                    if not isinstance(alias, int) or alias < 1 or alias in seen:
                        raise ValueError(f"bad alias {alias!r} for {scope!r}/{name!r}")
                    seen.add(alias)
            self._aliases = {
                str(s): {str(n): int(a) for n, a in names.items()} for s, names in aliases.items()
            }
            self._next = max(int(doc.get("next", 1)), max(seen, default=0) + 1)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.recovered = f"invalid content ({exc}); aliases start afresh"
            self._aliases, self._next = {}, 1

    def alias(self, scope: str, name: str) -> int:
        names = self._aliases.setdefault(scope, {})
        a = names.get(name)
        if a is None:
            a = names[name] = self._next
            self._next += 1
            self._dirty = True
        return a

    def table(self, scope: str, metrics: Iterable[tuple[str, DataType]]) -> MetricTable:
        """The MetricTable of one BIRTH: each (name, datatype) with its lasting alias."""
        return MetricTable(MetricDef(name, dt, self.alias(scope, name)) for name, dt in metrics)

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        doc = {"version": self.VERSION, "next": self._next, "aliases": self._aliases}
        atomic_write(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        self._dirty = False
