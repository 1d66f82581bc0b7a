"""structlog set-up: JSON lines when stdout is not a terminal (journald, CI), a readable
console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogLevel = Literal["debug", "info", "warning", "error"]


def configure(level: LogLevel = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    as_json = not out.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # Libraries (pymodbus, asyncua) log through stdlib logging: keep them quiet unless debugging.
    logging.basicConfig(level=logging.DEBUG if level == "debug" else logging.WARNING, stream=out, force=True)
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
