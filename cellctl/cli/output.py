"""Terminal output that stays readable when piped: a rich console at the terminal's width
on a terminal, and wide enough elsewhere that tables are not folded into 80 columns."""

from __future__ import annotations

import shutil
import sys
from typing import Any

PIPE_WIDTH = 200


def console(*, stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(PIPE_WIDTH, shutil.get_terminal_size().columns)
    return Console(file=stream, width=width, soft_wrap=False)
