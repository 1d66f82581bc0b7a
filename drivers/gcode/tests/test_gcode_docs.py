"""The README's tables come from the code: fields and options may not drift."""

from __future__ import annotations

import re
from pathlib import Path

from cellctl_gcode.config import GcodeOptions, GrblOptions, MarlinOptions
from cellctl_gcode.fields import fields_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_field_table_is_generated_from_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- fields:begin[^>]*-->\n(.*?)\n<!-- fields:end -->", text, re.S)
    assert m, "README lost its field table markers"
    assert m.group(1) == fields_markdown(), "regenerate: python -m cellctl_gcode.fields"


def test_every_option_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    names = [n for n in GcodeOptions.model_fields if n not in ("grbl", "marlin")]
    names += [f"grbl.{n}" for n in GrblOptions.model_fields]
    names += [f"marlin.{n}" for n in MarlinOptions.model_fields]
    missing = [n for n in names if f"| `{n}` |" not in text]
    assert missing == []


def test_sample_config_is_a_valid_cell(tmp_path: Path) -> None:
    import yaml

    from cellctl.config.loader import load_cell

    sample = yaml.safe_load((README.parent / "sample-config.yaml").read_text(encoding="utf-8"))
    cell = {"identity": {"enterprise": "e", "site": "s", "area": "a", "line": "l", "cell": "c"}, **sample}
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(cell), encoding="utf-8")
    compiled = load_cell(path)
    assert [d.config.id for d in compiled.devices] == ["router-1", "printer-1"]
    assert [d.profile.name for d in compiled.devices] == ["grbl-cnc", "marlin-printer"]
