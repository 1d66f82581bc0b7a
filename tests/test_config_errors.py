"""Golden files for config errors: each case is config.yaml (plus any profiles/ it
names) and expected.err, the exact text `cellctl check` prints. Regenerate after a
deliberate wording change with UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.config.profiles import SYSTEM_PROFILE_DIR, installed_profile_dirs

CASES = Path(__file__).parent / "config_cases"


def normalise(text: str) -> str:
    # the profile directories installed distributions contribute depend on the environment
    installed = ", ".join(str(d.path) for d in installed_profile_dirs())
    text = text.replace(installed, "<installed>").replace(str(SYSTEM_PROFILE_DIR), "<system>")
    # which drivers are installed depends on the environment, not on the message
    return re.sub(r"\(installed drivers: [^)]*\)", "(installed drivers: <installed>)", text)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_config_error_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / case)
    result = CliRunner().invoke(cli, ["check", "config.yaml"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    got = normalise(result.stderr)
    expected_path = CASES / case / "expected.err"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(got, encoding="utf-8")
    assert got == expected_path.read_text(encoding="utf-8")
