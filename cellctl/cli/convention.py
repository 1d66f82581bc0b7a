"""The root command group applies the CLI convention to every command under it, built-in
or contributed: Ctrl-C ends with exit code 130 (click's default is 1), and a command run
with ``--json`` reports an error as JSON on stdout, so a script reading stdout always
gets JSON. The exit codes themselves are in cellctl/exits.py."""

from __future__ import annotations

from typing import IO, Any

import click

from cellctl.cli.entrypoints import EntryPointGroup
from cellctl.exits import ExitCode, json_text


class JsonError(click.ClickException):
    """An error of a command run with --json: one JSON object on stdout."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(json_text({"error": self.format_message(), "exit_code": self.exit_code}), file=file)


def _wants_json(ctx: click.Context) -> bool:
    return "--json" in [*ctx._protected_args, *ctx.args]


class RootGroup(EntryPointGroup):
    def invoke(self, ctx: click.Context) -> Any:
        wants_json = _wants_json(ctx)  # click empties the args while invoking
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort):
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
        except click.ClickException as exc:
            if isinstance(exc, JsonError) or not wants_json:
                raise
            raise JsonError(exc.format_message(), exc.exit_code) from None
