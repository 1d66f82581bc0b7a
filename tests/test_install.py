"""install.sh into a temporary root: the layout a fresh machine gets, an upgrade that
keeps config and state, a rollback, and an uninstall that keeps config and state unless
asked. Nothing outside the temporary root is touched (--root creates no users)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

# both build cellctl from this checkout (in-tree build/ and *.egg-info): one at a time
pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("install")]
ROOT = Path(__file__).resolve().parents[1]


def install(root: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "opt/cellctl/releases").iterdir())


def test_install_upgrade_rollback_uninstall(tmp_path: Path) -> None:
    # a staging root this long makes pip write /bin/sh trampolines instead of shebangs
    # (interpreter path over 127 bytes): they too must name the interpreter's final place
    root = tmp_path / ("root-" + "r" * 100)
    out = install(root)
    assert "installed. Next:" in out
    # the layout
    current = root / "opt/cellctl/current"
    assert os.readlink(root / "usr/bin/cellctl") == "/opt/cellctl/current/bin/cellctl"
    first = os.readlink(current)
    assert first.startswith("releases/")
    script = (current / "bin/cellctl").read_text().splitlines()[0]
    assert script == f"#!/opt/cellctl/{first}/bin/python"  # where it will be, not the staging root
    unit = (root / "etc/systemd/system/cellctl.service").read_text()
    assert "ExecStart=/usr/bin/cellctl " in unit
    assert "ExecStartPre=/usr/bin/cellctl check /etc/cellctl/cell.yaml" in unit
    sysusers = (root / "usr/lib/sysusers.d/cellctl.conf").read_text()
    assert "u cellctl - " in sysusers
    assert "m cellctl dialout" in sysusers
    config = root / "etc/cellctl/cell.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/cellctl/credentials").stat().st_mode) == 0o700
    assert (root / "var/lib/cellctl").is_dir()
    # the installed cellctl (not this checkout: cwd elsewhere) accepts the starter config
    check = subprocess.run(
        [str(current / "bin/python"), "-m", "cellctl.cli.main", "check", str(config)],
        capture_output=True, text=True, timeout=60, check=False, cwd=root,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    if shutil.which("systemd-sysusers"):  # the sysusers.d file is valid: it would create the user
        dry = subprocess.run(
            ["systemd-sysusers", f"--root={root}", "--dry-run"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "Creating user 'cellctl'" in dry.stdout + dry.stderr, dry.stdout + dry.stderr

    # an upgrade keeps config and state, adds a release and switches to it
    config.write_text(config.read_text() + "# edited on site\n")
    (root / "var/lib/cellctl/outbox.sqlite").write_bytes(b"state")
    out = install(root)
    assert "upgraded; config in /etc/cellctl and state in /var/lib/cellctl kept" in out
    second = os.readlink(current)
    assert second != first
    assert releases(root) == sorted([first.split("/")[1], second.split("/")[1]])
    assert config.read_text().endswith("# edited on site\n")
    assert (root / "var/lib/cellctl/outbox.sqlite").read_bytes() == b"state"

    # rollback switches back to the previous release
    install(root, "--rollback")
    assert os.readlink(current) == first

    # uninstall keeps config and state; --purge removes them
    out = install(root, "--uninstall")
    assert not (root / "usr/bin/cellctl").is_symlink()
    assert not (root / "opt/cellctl").exists()
    assert not (root / "etc/systemd/system/cellctl.service").exists()
    assert config.read_text().endswith("# edited on site\n")
    assert (root / "var/lib/cellctl/outbox.sqlite").exists()
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/cellctl").exists()
    assert not (root / "var/lib/cellctl").exists()


def test_unknown_option_is_refused_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--root", str(tmp_path), "--frobnicate"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "unknown option '--frobnicate'" in proc.stderr
