"""Click groups whose commands installed distributions contribute through entry points
(``cellctl.commands`` for top-level commands, ``cellctl.sims`` for simulators,
``cellctl.read`` and ``cellctl.scan`` for `cellctl read DRIVER` and `cellctl scan DRIVER`).

The core names no driver module: a distribution registers ``name = "module:command"``
and the command appears as `cellctl name`. A command is imported only when it runs or
its help is shown, so `cellctl run` never pays for a driver's CLI (or asyncua, or
pyserial). Listing a group's help imports the targets only when the group allows it
(driver CLI modules are light); otherwise it shows which distribution ships each one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

COMMANDS = "cellctl.commands"
SIMS = "cellctl.sims"
READERS = "cellctl.read"  # `cellctl read DRIVER`
SCANNERS = "cellctl.scan"  # `cellctl scan DRIVER`
HELP_OPTION_NAMES = ["-h", "--help"]


def contributed(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` by name; for a name two distributions register, the
    first distribution by name wins."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: (_dist(e), e.name)):
        found.setdefault(ep.name, ep)
    return found


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


class EntryPointGroup(click.Group):
    """A group with built-in commands plus those installed distributions contribute.
    A built-in command wins over a contributed one of the same name. `lazy_commands`
    (name -> "module:attribute") are built-ins imported only when they run or their help
    is shown, so `cellctl run` does not import the modules of other commands."""

    def __init__(
        self,
        *args: Any,
        entry_point_group: str,
        load_for_listing: bool = True,
        lazy_commands: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.entry_point_group = entry_point_group
        self.load_for_listing = load_for_listing
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            {*super().list_commands(ctx), *self.lazy_commands, *contributed(self.entry_point_group)}
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        if builtin is not None:
            return builtin
        target = self.lazy_commands.get(cmd_name)
        if target is not None:
            module, _, attribute = target.partition(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)  # imported once; from now on a plain built-in
            return command
        ep = contributed(self.entry_point_group).get(cmd_name)
        return None if ep is None else self._load(cmd_name, ep)

    def _load(self, name: str, ep: EntryPoint) -> click.Command:
        try:
            command = ep.load()
        except Exception as exc:  # a broken distribution: say which, do not crash
            raise click.ClickException(
                f"command {name!r} from {_dist(ep)} ({ep.value}) could not be loaded: {exc}"
            ) from None
        if not isinstance(command, click.Command):
            raise click.ClickException(
                f"command {name!r} from {_dist(ep)}: {ep.value!r} is not a click command"
            )
        _adopt_help_convention(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.load_for_listing:
            super().format_commands(ctx, formatter)
            return
        eps = contributed(self.entry_point_group)
        rows: list[tuple[str, str]] = []
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        for name in self.list_commands(ctx):
            builtin = super().get_command(ctx, name)
            if builtin is not None:
                if not builtin.hidden:
                    rows.append((name, builtin.get_short_help_str(limit)))
            else:
                rows.append((name, f"from {_dist(eps[name])} (`{ctx.command_path} {name} -h` for more)"))
        _write_rows(formatter, rows)


def _adopt_help_convention(command: click.Command) -> None:
    """`-h` and `--help` on a contributed command and all its subcommands, also when it runs
    on its own (a driver's `python -m` entry). Click caches a command's help option
    the first time it is used, so a cache built with other names is dropped."""
    command.context_settings.setdefault("help_option_names", HELP_OPTION_NAMES)
    cached = command._help_option
    if cached is not None and sorted(cached.opts) != sorted(command.context_settings["help_option_names"]):
        command._help_option = None
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _adopt_help_convention(sub)


def _write_rows(formatter: click.HelpFormatter, rows: Sequence[tuple[str, str]]) -> None:
    if rows:
        with formatter.section("Commands"):
            formatter.write_dl(rows)
