"""`pip install .` of the core must ship every package of it: the list in pyproject.toml is
explicit (profiles/ installs as cellctl.profiles), so a new package must be added there
(an editable install hides the omission; the installer's venv does not)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_core_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cellctl").rglob("__init__.py")} | {
        "cellctl.profiles"
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed but missing"
