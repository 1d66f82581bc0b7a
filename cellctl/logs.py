"""structlog set-up: JSON lines when the log stream is not a terminal (journald, CI), a
readable console on a terminal.

Libraries (pymodbus, asyncua, asyncio, paho) log through stdlib logging. Their records go
through the same renderer via a `ProcessorFormatter` on the root handler, so in JSON mode
every line is one JSON object, tracebacks included (as the `exception` field), and a log
shipper never has to guess where a record ends.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Literal, TextIO

import structlog

LogLevel = Literal["debug", "info", "warning", "error"]


def _renderer(as_json: bool) -> structlog.typing.Processor:
    return structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=True)


def _library_handler(out: TextIO, as_json: bool) -> logging.Handler:
    """The root handler: stdlib records rendered like our own events, with the logger's
    name as `logger` and any exception as one field."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,  # the device a library logged for
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            _renderer(as_json),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.cellctl_handler = True  # type: ignore[attr-defined]  # the test kit takes it off after a test
    return handler


def configure(
    level: LogLevel = "info", *, json: bool | None = None, stream: TextIO | None = None, cache: bool = True
) -> None:
    out = stream or sys.stderr
    as_json = not out.isatty() if json is None else json
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            _renderer(as_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # one write per line (message and newline together), so a library record written
        # from another thread can never land inside one of ours
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(_library_handler(out, as_json))
    # Libraries stay quiet unless debugging; pymodbus reports every failure we already
    # handle and log as a device event.
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
    # warnings.warn() lines too; off first, so the hook is installed again even when an
    # earlier set-up's hook was replaced behind logging's back (pytest does that per test)
    logging.captureWarnings(False)
    logging.captureWarnings(True)


@contextlib.contextmanager
def scoped(level: LogLevel, *, json: bool | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """`configure` for one command that may run inside another process (the demo, a
    test's CliRunner): no logger is cached meanwhile, and the previous set-up (structlog's
    and the stdlib root's) is back afterwards, so nothing outlives the command."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    pymodbus = logging.getLogger("pymodbus")
    pymodbus_level = pymodbus.level
    capturing = getattr(logging, "_warnings_showwarning", None) is not None  # captureWarnings' own flag
    configure(level, json=json, stream=stream, cache=False)
    try:
        yield
    finally:
        structlog.configure(**saved)
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(root_level)
        pymodbus.setLevel(pymodbus_level)
        logging.captureWarnings(capturing)
