"""What a reload changes: the devices added, removed and changed between the running
config and a new one (compiled, so profiles count too), and which other sections changed."""

from __future__ import annotations

from dataclasses import dataclass

from cellctl.config.loader import CompiledCell, CompiledDevice

# Sections a running daemon can take without a restart (devices are diffed one by one).
LIVE_SECTIONS = frozenset({"devices", "profile_dirs"})


@dataclass(frozen=True)
class CellDiff:
    added: list[CompiledDevice]
    removed: list[str]
    changed: list[CompiledDevice]  # the new version of each
    unchanged: list[str]
    other_sections: list[str]  # top-level config sections that changed besides the devices

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.other_sections)


def diff_cells(old: CompiledCell, new: CompiledCell) -> CellDiff:
    before = {d.config.id: d for d in old.devices}
    after = {d.config.id: d for d in new.devices}
    added = [d for i, d in after.items() if i not in before]
    removed = [i for i in before if i not in after]
    changed = [d for i, d in after.items() if i in before and before[i] != d]
    unchanged = [i for i, d in after.items() if i in before and before[i] == d]
    old_cfg, new_cfg = old.config.model_dump(), new.config.model_dump()
    other = sorted(
        k
        for k in new_cfg.keys() | old_cfg.keys()
        if k not in LIVE_SECTIONS and old_cfg.get(k) != new_cfg.get(k)
    )
    return CellDiff(added, removed, changed, unchanged, other)
