"""The `cellctl` entry point, and the daemon's start: `cellctl run CONFIG`.

`cellctl run` is the one command a production cell starts, under systemd, at every
(re)start; the commissioning commands live in the click application
(cellctl/cli/app.py). A plain `cellctl [--log-level L] [--log-format F] run CONFIG`
starts the daemon without importing click, its option parsing or the entry-point
groups of the other commands (about 1.5 MB of RSS and 10-25 ms of start-up, issue 15);
any other command line, or anything the fast path is not sure of (help, completion,
a bad option value, a CONFIG click would refuse), goes to click unchanged, so usage
errors and help read exactly as before.

This module imports no more than the standard library at import time, and forwards the
click application's names (`cli`, ...) for `from cellctl.cli.main import cli`.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any, Final

EXIT_CONFIG: Final = 2  # cellctl.exits.ExitCode.BAD_INPUT, without importing click
EXIT_INTERRUPTED: Final = 130  # cellctl.exits.ExitCode.INTERRUPTED
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_LOG_FORMATS: Final = ("auto", "json", "console")
_COMPLETE_VAR: Final = "_CELLCTL_COMPLETE"  # click's shell completion for prog_name "cellctl"


def import_structlog_without_rich() -> None:
    """structlog imports rich, when installed, only to draw tracebacks in console logs:
    about 50 ms of start-up and 5 MB of RSS for the daemon, whose logs are JSON lines under
    systemd. Hide rich while structlog loads (it then draws plain tracebacks), and un-hide
    it at once, so whatever imports rich later (a driver's CLI) gets it."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def limit_malloc_arenas() -> None:
    """glibc gives every thread that mallocs an arena of its own and keeps what it
    touched: measured in per_point mode at 97,000 values/s, one arena instead of one per
    thread took 3-5 MB off the daemon's RSS (to under the 64 MB of issue 15), with no
    CPU change at steady (36-38 % of a core either way). Python's own allocator serves
    the small objects, so the shared arena is rarely contended. Left alone when
    MALLOC_ARENA_MAX is set, and where the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = -8 (malloc.h)


def _is_click_exception(exc: BaseException) -> bool:
    """Whether `exc` is click's (a contributed piece of the run path may raise one);
    never imports click to find out."""
    click = sys.modules.get("click")
    return click is not None and isinstance(exc, click.ClickException)


def run_daemon(config: Path, *, log_level: str | None, log_json: bool | None) -> None:
    """Load CONFIG and run the daemon until SIGINT/SIGTERM: what `cellctl run` does, with
    or without click. A bad config raises ConfigError (the caller prints it, exit code 2);
    a bug ends with one `cellctl_crashed` log line and exit code 1, for systemd to restart."""
    limit_malloc_arenas()  # before any thread starts
    import_structlog_without_rich()
    from cellctl import lifecycle, logs
    from cellctl.errors import ConfigError

    try:
        from cellctl.config.loader import load_cell

        compiled = load_cell(config)
        logs.configure(log_level or compiled.config.log_level, json=log_json)  # type: ignore[arg-type]
        from cellctl.daemon import Daemon, state_dir

        lifecycle.report_start(state_dir(compiled))

        async def main() -> None:
            await Daemon(compiled).run()

        from cellctl import eventloop

        eventloop.run(main())
    except ConfigError:
        raise
    except Exception as exc:  # a bug: one JSON line with the traceback, then exit 1 (systemd restarts)
        if _is_click_exception(exc):
            raise
        # the crash may come before the config's log settings were applied
        logs.configure(log_level or "info", json=log_json)  # type: ignore[arg-type]
        lifecycle.report_crash(exc)
        sys.exit(1)


def plain_run(args: list[str]) -> tuple[Path, str | None, bool | None] | None:
    """(CONFIG, log level, JSON logs) when `args` is `[--log-level L] [--log-format F] run
    CONFIG` exactly as click would accept it, else None (click then handles the line)."""
    if os.environ.get(_COMPLETE_VAR):
        return None
    level: str | None = None
    fmt = "auto"
    i = 0
    while i < len(args) and args[i] != "run":
        name, eq, value = args[i].partition("=")
        if name not in ("--log-level", "--log-format"):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            i += 1
            value = args[i]
        if value not in (_LOG_LEVELS if name == "--log-level" else _LOG_FORMATS):
            return None
        if name == "--log-level":
            level = value
        else:
            fmt = value
        i += 1
    rest = args[i + 1 :]
    if i >= len(args) or len(rest) != 1 or not rest[0] or rest[0].startswith("-"):
        return None
    config = rest[0]
    try:
        st = os.stat(config)
    except OSError:
        pass  # click's Path(exists=False) lets a missing file through; load_cell reports it
    else:
        if stat.S_ISDIR(st.st_mode) or not os.access(config, os.R_OK):
            return None  # click's "is a directory" / "is not readable" usage errors
    return Path(config), level, None if fmt == "auto" else fmt == "json"


def _run_fast(config: Path, log_level: str | None, log_json: bool | None) -> None:
    """`cellctl run` without click, ending exactly as the click command does: the same
    error lines and exit codes (cellctl/cli/app.py's ConfigProblems, RootGroup)."""
    from cellctl.errors import ConfigError

    try:
        run_daemon(config, log_level=log_level, log_json=log_json)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was started.", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if not _is_click_exception(exc):
            raise
        exc.show()  # type: ignore[attr-defined]  # click.ClickException, as click's main does
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]


def main() -> None:
    plain = plain_run(sys.argv[1:])
    if plain is not None:
        _run_fast(*plain)
        return
    from cellctl.cli.app import cli

    cli(prog_name="cellctl")


def __getattr__(name: str) -> Any:
    """The click application's names (`cli`, `ConfigProblems`, ...), imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from cellctl.cli import app

    try:
        return getattr(app, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
