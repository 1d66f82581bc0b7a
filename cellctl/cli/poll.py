"""`cellctl poll CONFIG`: open each device of a cell once, read it through the engine's
code and print every point, the machine state and the commissioning traps."""

from __future__ import annotations

import asyncio
from typing import Any

from cellctl.config.loader import CompiledCell
from cellctl.engine.once import PolledDevice, poll_once
from cellctl.exits import CommandFailed, ExitCode


def select_devices(compiled: CompiledCell, wanted: tuple[str, ...]) -> list[Any]:
    devices = compiled.devices
    if not wanted:
        return list(devices)
    known = {d.config.id: d for d in devices}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise CommandFailed(
            f"{compiled.path}: no enabled device {missing[0]!r} (devices: {', '.join(known) or 'none'})",
            ExitCode.BAD_INPUT,
        )
    return [known[w] for w in wanted]


async def poll_all(devices: list[Any], wait: float) -> list[PolledDevice]:
    """Every device at once (each is its own error boundary)."""
    return list(await asyncio.gather(*(poll_once(d, wait=wait) for d in devices)))


def print_polled(results: list[PolledDevice]) -> None:
    from rich.table import Table
    from rich.text import Text

    from cellctl.cli.output import console

    out = console()
    for r in results:
        title = f"[bold]{r.id}[/bold] ({r.driver}, profile {r.profile})"
        table = Table("point", "value", "unit", "quality", "reason", title=title, title_justify="left")
        for column in table.columns:
            column.overflow = "fold"
        for p in r.points:
            style = {"good": "green", "uncertain": "yellow"}.get(p.quality.value, "red")
            value = "" if p.value is None else (f"{p.value:.6g}" if isinstance(p.value, float) else str(p.value))
            table.add_row(p.id, value, p.unit or "", Text(p.quality.value, style=style), p.reason or "")
        out.print(table)
        if r.machine is not None:
            m = r.machine
            line = f"machine: {m.item_state.value} / {m.operation_mode.value} / {m.execution.value} (raw {m.raw_state})"
            if m.reason:
                line += f" - {m.reason}"
            out.print(line, markup=False)
            if m.alarms:
                out.print("alarms: " + ", ".join(f"{a.code} {a.text}" for a in m.alarms), markup=False)
        for trap in r.traps:
            out.print(Text(f"! {trap}", style="bold yellow"))
        if not r.traps:
            out.print(Text("ok: every point readable, nothing suspicious", style="green"))
        out.print()
