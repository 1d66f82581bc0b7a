"""One CLI convention for every cellctl command, built-in or contributed by a driver:
the documented exit codes, one error type that carries its code, JSON output, and the
plausibility check commissioning commands use to spot a wrong word order.

Exit codes: 0 ok, 1 runtime failure (device unreachable, refused request), 2 bad input
(options, config, profile, file), 130 interrupted (Ctrl-C). With ``--json`` an error is
printed on stdout as ``{"error": "...", "exit_code": N}`` (see cellctl/cli/convention.py).

The daemon's run path uses this module (`implausible`, `finite`) without click: click is
imported by the functions that print, and `CommandFailed` (a click exception) is loaded
from cellctl/cli/failure.py when first named.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from cellctl.cli.failure import CommandFailed as CommandFailed  # noqa: PLC0414  # re-export (__getattr__)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


def json_text(data: Any) -> str:
    """`data` as indented JSON; non-finite floats become the strings "nan", "inf", "-inf"
    (JSON has no such numbers, and a commissioning tool must show them, not hide them)."""
    import orjson

    return orjson.dumps(finite(data), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def print_json(data: Any) -> None:
    import click

    click.echo(json_text(data))


def __getattr__(name: str) -> Any:
    """`CommandFailed`, imported (with click) when first named."""
    if name == "CommandFailed":
        from cellctl.cli.failure import CommandFailed

        return CommandFailed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def finite(data: Any) -> Any:
    """`data` with non-finite floats as strings (JSON has no NaN or infinity)."""
    if isinstance(data, float) and not math.isfinite(data):
        return "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


# A float outside these looks like a wrong word order (or a wrong type), not a reading.
IMPLAUSIBLY_LARGE: Final = 1e12
IMPLAUSIBLY_SMALL: Final = 1e-12


def implausible(value: Any) -> str | None:
    """Why a float value looks like the wrong word order or type (NaN, infinity, a
    denormal, an absurd magnitude), or None. Integers and other types are never flagged:
    a swapped small integer is still a plausible integer."""
    if not isinstance(value, float):
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "infinite"
    magnitude = abs(value)
    if magnitude == 0.0:
        return None
    if magnitude < 1.1754943508222875e-38:  # below float32's smallest normal
        return "denormal"
    if magnitude > IMPLAUSIBLY_LARGE:
        return f"absurd magnitude ({value:.3g})"
    if magnitude < IMPLAUSIBLY_SMALL:
        return f"absurdly small ({value:.3g})"
    return None
