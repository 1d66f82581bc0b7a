"""`cellctl run` without click (issue 15, cellctl/cli/main.py): a plain command line
starts the daemon without importing click, and ends exactly as the click command does;
every other line goes to click unchanged. Real processes (`python -m cellctl.cli.main`,
as systemd runs `cellctl`), compared with click's own handling of the same line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellctl.cli.app import cli
from cellctl.cli.main import plain_run

pytestmark = pytest.mark.timeout(90)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]

# Runs `cellctl ARGS...` in this process, then says whether click was imported.
_PROBE = """
import sys
from cellctl.cli.main import main
sys.argv = ["cellctl", *sys.argv[1:]]
try:
    main()
finally:
    print("click imported" if "click" in sys.modules else "click not imported", file=sys.stderr)
"""


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    bad = tmp_path / "cell.yaml"
    bad.write_text("identity: {enterprise: acme}\nbogus: 1\n", encoding="utf-8")
    return bad


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "c.yaml"], (Path("c.yaml"), None, None)),
        (["--log-level", "debug", "run", "c.yaml"], (Path("c.yaml"), "debug", None)),
        (["--log-level=error", "--log-format", "json", "run", "c.yaml"], (Path("c.yaml"), "error", True)),
        (["--log-format=console", "run", "c.yaml"], (Path("c.yaml"), None, False)),
        (["--log-format", "auto", "--log-level", "info", "--log-level", "warning", "run", "c.yaml"],
         (Path("c.yaml"), "warning", None)),  # the last one wins, as in click
        (["run"], None),  # click's "missing argument"
        (["run", "a.yaml", "b.yaml"], None),
        (["run", "--help"], None),
        (["--help"], None),
        (["-h", "run", "c.yaml"], None),
        (["--version"], None),
        (["--log-level", "loud", "run", "c.yaml"], None),  # click's "invalid choice"
        (["--log-level"], None),
        (["--log-format", "xml", "run", "c.yaml"], None),
        (["run", "--", "c.yaml"], None),
        (["run", "-x"], None),
        (["run", ""], None),
        (["check", "c.yaml"], None),
        (["run", "c.yaml", "--json"], None),
        ([], None),
    ],
)  # fmt: skip
def test_which_lines_take_the_fast_path(args: list[str], expected: object) -> None:
    assert plain_run(args) == expected


def test_a_directory_or_completion_goes_to_click(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plain_run(["run", str(tmp_path)]) is None  # click: "is a directory"
    config = tmp_path / "cell.yaml"
    config.write_text("x: 1\n", encoding="utf-8")
    assert plain_run(["run", str(config)]) == (config, None, None)
    monkeypatch.setenv("_CELLCTL_COMPLETE", "bash_complete")
    assert plain_run(["run", str(config)]) is None


def test_bad_config_ends_as_the_click_command_does_without_click(bad_config: Path) -> None:
    fast = _probe("run", str(bad_config))
    clicked = CliRunner().invoke(cli, ["run", str(bad_config)])
    assert fast.returncode == clicked.exit_code == 2
    lines = fast.stderr.splitlines()
    assert lines[-1] == "click not imported"
    assert lines[:-1] == clicked.stderr.splitlines()
    assert lines[0].startswith("error: ")
    assert "identity.site: required field is missing" in fast.stderr
    assert lines[-2].endswith(" problem(s); nothing was started.")


def test_a_missing_config_ends_as_the_click_command_does(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    fast = _probe("--log-format", "json", "run", str(missing))
    clicked = CliRunner().invoke(cli, ["--log-format", "json", "run", str(missing)])
    assert fast.returncode == clicked.exit_code == 2
    assert fast.stderr.splitlines()[:-1] == clicked.stderr.splitlines()
    assert "cannot read" in fast.stderr


def test_what_the_fast_path_refuses_click_reports(tmp_path: Path) -> None:
    for args in (["run", str(tmp_path)], ["--log-level", "loud", "run", "c.yaml"], ["run"]):
        proc = subprocess.run([*CELLCTL, *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("Usage: "), (args, proc.stderr)


def test_help_is_click_s(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CELLCTL, "--help"], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    clicked = CliRunner().invoke(cli, ["--help"], prog_name="cellctl", terminal_width=78)  # click: min(columns, 80) - 2
    assert proc.returncode == clicked.exit_code == 0
    assert "Run the daemon for the cell described by CONFIG" in proc.stdout
    assert proc.stdout == clicked.stdout
