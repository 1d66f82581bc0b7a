"""One CLI convention: --json on every command that prints data (errors as JSON too),
the documented exit codes (0, 1, 2, 130), and shell completion of profile names and
device ids (click's, as the bash/zsh/fish scripts call it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.testing import free_port, modbus_device, write_config

pytestmark = pytest.mark.timeout(60)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]

# Commands that print no data a script would parse, and why.
NO_JSON = {
    "run": "the daemon: its output is its log (JSON lines off a terminal)",
    "demo": "a live show on a terminal",
    "schema": "prints JSON Schema, always JSON",
    "cert init": "creates files; its lines are a receipt",
    "cert trust": "moves a file; one line",
    "gcode console": "interactive",
}


def leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group, info_name="cellctl")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from leaves(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_that_prints_data_takes_json() -> None:
    missing = []
    for path, command in leaves(cli):
        name = " ".join(path)
        if name in NO_JSON or path[0] == "sim":  # simulators print their listener line
            continue
        if not any("--json" in getattr(p, "opts", []) for p in command.params):
            missing.append(name)
    assert missing == []


def test_bad_input_is_2_and_json_errors_are_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["poll", str(tmp_path / "missing.yaml"), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2
    assert "missing.yaml" in error["error"]
    # a usage error click itself finds (an unknown option) is JSON too when --json is given
    result = CliRunner().invoke(cli, ["profiles", "list", "--json", "--bogus"])
    assert result.exit_code == 2
    assert "--bogus" in json.loads(result.stdout)["error"]


def test_ctrl_c_ends_with_130() -> None:
    port = free_port()  # nobody there: watch keeps trying until interrupted
    proc = subprocess.Popen(
        [*CELLCTL, "watch", "--root", "uns/v1/x", "--port", str(port), "--json", "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first view is printed once it runs
        assert json.loads(first)["connected"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        assert proc.stderr is not None
        assert "interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def complete(words: str, cword: int) -> list[str]:
    env = {**os.environ, "_CELLCTL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    proc = subprocess.run([sys.executable, "-c", "from cellctl.cli.main import main; main()"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line]


def test_completion_of_profile_names_and_device_ids(tmp_path: Path) -> None:
    assert complete("cellctl profiles show sim-e", 3) == ["sim-energy-meter"]
    config = write_config(
        tmp_path, 1883,
        [modbus_device("meter-1", "sim-energy-meter", 5020, 1), modbus_device("mill-1", "sim-machine-plc", 5020, 2)],
        cell="c1",
    )  # fmt: skip
    assert complete(f"cellctl poll {config} --device ", 4) == ["meter-1", "mill-1"]
    assert complete(f"cellctl poll {config} --device mi", 4) == ["mill-1"]


def test_completion_scripts_exist_for_the_three_shells() -> None:
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_CELLCTL_COMPLETE": f"{shell}_source"}
        proc = subprocess.run([sys.executable, "-c", "from cellctl.cli.main import main; main()"],
                              env=env, capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert proc.returncode == 0
        assert "_CELLCTL_COMPLETE" in proc.stdout
