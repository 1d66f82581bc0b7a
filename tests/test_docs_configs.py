"""Every config a user may copy passes `cellctl check`: the drivers' sample configs and
every cell config shown in the README and the docs (a ```yaml block with `identity:`),
with the profiles the same document shows (a block with `name:` and `points:`) in
`profiles/` beside it. Check does no I/O, so the documentation addresses need not answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.plugins import available_drivers

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(ROOT.glob("drivers/*/sample-config.yaml"))
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("drivers/*/README.md")])
_YAML_BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.M | re.S)


def doc_configs() -> list[tuple[str, str]]:
    """(where, text) of every cell config block in the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in _YAML_BLOCK.finditer(text):
            if re.search(r"^identity:", m.group(1), re.M):
                line = text.count("\n", 0, m.start()) + 1
                found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return found


def doc_profiles(doc: Path) -> dict[str, str]:
    """name -> text of every profile block in `doc`."""
    found = {}
    for m in _YAML_BLOCK.finditer(doc.read_text(encoding="utf-8")):
        name = re.search(r"^name: (\S+)$", m.group(1), re.M)
        if name and re.search(r"^points:", m.group(1), re.M):
            found[name.group(1)] = m.group(1)
    return found


def _check(path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, f"{path}:\n{result.output}"
    assert "device(s)" in result.stdout


def test_every_driver_has_a_sample_config() -> None:
    assert {p.parent.name for p in SAMPLES} >= {"modbus", "opcua", "gcode"}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_sample_config_passes_check(sample: Path) -> None:
    _check(sample)


def test_docs_show_cell_configs() -> None:
    """Guards the extraction: the README's cell config must be found, or the next test
    would pass on nothing."""
    assert any(where.startswith("README.md:") for where, _ in doc_configs())


@pytest.mark.parametrize(("where", "text"), doc_configs(), ids=[w for w, _ in doc_configs()])
def test_doc_config_passes_check(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "cell.yaml"
    path.write_text(text, encoding="utf-8")
    profiles = doc_profiles(ROOT / where.rsplit(":", 1)[0])
    if profiles:
        (tmp_path / "profiles").mkdir()
        for name, profile in profiles.items():
            (tmp_path / "profiles" / f"{name}.yaml").write_text(profile, encoding="utf-8")
    _check(path)


def test_configuration_doc_names_every_installed_driver() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `driver` |"))
    assert available_drivers(), "no driver installed: the check would pass on nothing"
    assert [d for d in available_drivers() if f"`{d}`" not in row] == []
