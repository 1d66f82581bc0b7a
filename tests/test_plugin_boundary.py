"""The plugin boundary: drivers and simulators touch the core only through
`cellctl.driver`, and their tests reach the shared kit as the installed `cellctl.testing`
plugin, never through `sys.path` tricks."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SDK = {"cellctl.driver"}
PACKAGES = ["cellctl_modbus", "cellctl_opcua", "cellctl_gcode", "cellctl_sim"]
TEST_DIRS = ["drivers/modbus/tests", "drivers/opcua/tests", "drivers/gcode/tests", "sim_devices/tests"]


def imported_modules(path: Path) -> set[str]:
    """Every absolute import target of a file (`from cellctl import logs` -> cellctl.logs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "cellctl":  # `from cellctl import x` imports cellctl.x
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def core_imports(path: Path) -> set[str]:
    """The cellctl core modules a file imports (`cellctl.driver.Reading` counts as cellctl.driver)."""
    out = set()
    for name in imported_modules(path):
        if name != "cellctl" and not name.startswith("cellctl."):
            continue
        parts = name.split(".")
        module = ".".join(parts[:2])
        if importlib.util.find_spec(module) is None:  # `from cellctl import __version__`
            module = "cellctl"
        out.add(module)
    return out


def package_files(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"{package} is not installed"
    assert spec.submodule_search_locations, f"{package} is not a package"
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(root.rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_drivers_import_only_the_sdk_from_the_core(package: str) -> None:
    files = package_files(package)
    assert len(files) > 3, files
    offending = {
        str(f.relative_to(f.parents[1])): sorted(core_imports(f) - SDK)
        for f in files
        if core_imports(f) - SDK
    }
    assert offending == {}


def test_the_walk_sees_what_a_driver_imports(tmp_path: Path) -> None:
    """The checker itself: each spelling of an import of a core module is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import cellctl.logs\nfrom cellctl import errors\nfrom cellctl.config.cell import Duration\n"
        "from cellctl.driver import Reading\nimport cellctl_modbus.codec\nfrom . import sibling\n"
        "def f():\n    from cellctl.daemon import Daemon\n",
        encoding="utf-8",
    )
    assert core_imports(probe) == {
        "cellctl.logs", "cellctl.errors", "cellctl.config", "cellctl.driver", "cellctl.daemon"
    }


def test_device_context_carries_the_poll_interval(tmp_path: Path) -> None:
    from cellctl.config.loader import load_cell
    from cellctl.testing import modbus_device, write_config

    path = write_config(
        tmp_path, 1883, [modbus_device("m1", "sim-energy-meter", 1502, 1, poll_interval="250ms")], cell="c1"
    )
    (device,) = load_cell(path).devices
    assert device.context.poll_interval == 0.25
    assert device.context.timeout == 0.5


def test_the_sdk_exports_every_capability() -> None:
    import cellctl.driver as sdk

    for name in ("Poller", "Subscriber", "Writer", "Browser", "JobControl", "Duration", "configure_logging"):
        assert name in sdk.__all__
        assert hasattr(sdk, name)


@pytest.mark.parametrize("folder", TEST_DIRS)
def test_driver_tests_use_the_installed_test_kit(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    for f in files:
        names = imported_modules(f)
        assert not {n for n in names if n == "tests" or n.startswith("tests.")}, f"{f} imports the core's tests"
        assert "sys.path" not in f.read_text(encoding="utf-8"), f"{f} edits sys.path"
