"""`CommandFailed`, the one error type of every cellctl command (cellctl/exits.py names
it): apart, because it is a click exception and the daemon's run path imports
cellctl.exits without click."""

from __future__ import annotations

from typing import IO, Any

import click

from cellctl.exits import ExitCode


class CommandFailed(click.ClickException):
    """A command cannot do what was asked: `message` (lowercase, quoting the user's
    value) and the exit code it ends with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(code)  # type: ignore[misc]  # click reads it per instance

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)
