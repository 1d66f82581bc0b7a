"""What installed distributions contribute to the CLI and the profile search path, through
entry points only: commands (`cellctl.commands`), simulators (`cellctl.sims`), profiles
(`cellctl.profiles`); and one help convention, `-h` and `--help`, on every command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cellctl.cli.entrypoints import COMMANDS, EntryPointGroup
from cellctl.cli.main import cli
from cellctl.config.profiles import (
    find_profile,
    installed_profile_dirs,
    list_profiles,
    search_dirs,
    search_path,
    shipped_profile_dir,
)

CLI_DIR = Path(__file__).resolve().parents[1] / "cellctl" / "cli"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command below `group`, contributed ones included (they are loaded here)."""
    ctx = click.Context(group, info_name="cellctl")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = (*prefix, name)
        yield path
        if isinstance(command, click.Group):
            yield from command_paths(command, path)


ALL_COMMANDS = sorted(command_paths(cli))


def test_the_walk_reaches_contributed_commands() -> None:
    paths = {" ".join(p) for p in ALL_COMMANDS}
    for expected in ("browse", "cert init", "ports", "gcode send", "sim grbl", "sim opcua", "profiles list"):
        assert expected in paths


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_answers_both_help_flags(path: tuple[str, ...], flag: str) -> None:
    result = CliRunner().invoke(cli, [*path, flag], prog_name="cellctl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cellctl {' '.join(path)} "), result.output[:200]


def test_the_core_names_no_driver_module() -> None:
    """Commands and simulators are found through entry points, not import paths."""
    for source in (CLI_DIR / "main.py", CLI_DIR / "entrypoints.py"):
        text = source.read_text(encoding="utf-8")
        for module in ("cellctl_opcua", "cellctl_gcode", "cellctl_sim", "cellctl_modbus"):
            assert module not in text, f"{source.name} names {module}"


def test_help_lists_driver_commands_without_importing_protocol_stacks() -> None:
    code = (
        "import sys\n"
        "from cellctl.cli.main import cli\n"
        "try:\n    cli.main(['--help'], prog_name='cellctl')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('asyncua', 'serial', 'pymodbus', 'cellctl_sim') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "browse" in out.stdout
    assert "ports" in out.stdout
    assert "HEAVY []" in out.stdout


def test_a_broken_contributed_command_names_itself() -> None:
    group = EntryPointGroup("x", entry_point_group=COMMANDS)
    ep = EntryPoint(name="frob", value="no_such_module_for_cellctl:frob", group=COMMANDS)
    with pytest.raises(click.ClickException, match=r"command 'frob' from \? \(no_such_module_for_cellctl:frob\)"):
        group._load("frob", ep)


def test_profile_dirs_come_from_entry_points_core_first() -> None:
    dirs = installed_profile_dirs()
    assert dirs[0].path == shipped_profile_dir()
    assert dirs[0].source == "cellctl"
    others = [d.source for d in dirs[1:]]
    assert others == sorted(others)
    assert {"cellctl-gcode", "cellctl-sim"} <= set(others)
    # each driver's device types ship with it; the core keeps only cross-driver ones
    assert not list(shipped_profile_dir().glob("*.yaml"))
    grbl = find_profile("grbl-cnc", search_path())
    assert grbl is not None
    assert grbl.parent == next(d.path for d in dirs if d.source == "cellctl-gcode")
    meter = find_profile("sim-opcua-machine", search_path())
    assert meter is not None
    assert meter.parent == next(d.path for d in dirs if d.source == "cellctl-sim")


def test_a_site_profile_shadows_a_shipped_one_and_list_says_so(tmp_path: Path) -> None:
    shipped = find_profile("sim-energy-meter", search_path())
    assert shipped is not None
    shutil.copy(shipped, tmp_path / "sim-energy-meter.yaml")
    found = {f.name: f for f in list_profiles(search_dirs([tmp_path]))}
    meter = found["sim-energy-meter"]
    assert meter.path == tmp_path / "sim-energy-meter.yaml"
    assert meter.source == "config"
    assert meter.shadowed == [shipped]
    assert found["grbl-cnc"].source == "cellctl-gcode"
    assert found["grbl-cnc"].shadowed == []
    listed = CliRunner().invoke(
        cli, ["profiles", "list", "--profile-dir", str(tmp_path)], env={"COLUMNS": "400"}
    )
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "sim-energy-meter" in line)
    assert "config" in row
    assert "cellctl-sim" in listed.output
    assert f"shadows {shipped}" in listed.output
