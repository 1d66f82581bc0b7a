"""docs/commissioning.md, step by step, against the simulator: scan -> read -> choose the
word order -> the doc's profile -> check -> poll -> run -> watch and the status page. The
profile and the cell config are taken from the doc itself (only ports are changed), so
the doc and this test cannot drift apart."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cellctl.cli.main import cli
from cellctl.localbroker import Mosquitto
from cellctl.testing import free_port, wait_until

pytestmark = pytest.mark.timeout(120)
DOC = Path(__file__).resolve().parents[1] / "docs" / "commissioning.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(kind: str) -> list[str]:
    return [text for k, text in BLOCK.findall(DOC.read_text(encoding="utf-8")) if k == kind]


def cellctl(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), terminal_width=200)
    return result.exit_code, result.stdout + result.stderr


def lines_until(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
        assert proc.poll() is None, "the process ended"
    raise AssertionError(f"no line starting {prefix!r} within {timeout} s")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def gateway() -> Iterator[str]:
    """The doc's `cellctl sim modbus` (the same default units), on a free port."""
    proc = subprocess.Popen([*[sys.executable, "-m", "cellctl.cli.main"], "sim", "modbus", "--tcp", "127.0.0.1:0",
                             "--tick", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield lines_until(proc, "tcp ", 20).split()[1]
    finally:
        stop(proc)


def test_the_walkthrough(gateway: str, broker: Mosquitto, tmp_path: Path) -> None:
    commands = "\n".join(blocks("sh"))
    assert "cellctl sim modbus --tcp 127.0.0.1:5020" in commands

    # 1. scan: units 1 and 2 answer, the meter has 24 input registers from 0
    code, out = cellctl("scan", "modbus", "--tcp", gateway, "--units", "1-10", "--json")
    assert code == 0, out
    scan = json.loads(out)
    assert [u["unit"] for u in scan["units"]] == [1, 2]
    tables = {t["table"]: t["ranges"] for t in scan["units"][0]["tables"]}
    assert tables["input"] == [{"first": 0, "last": 23, "count": 24}]
    assert "cellctl scan modbus --tcp 127.0.0.1:5020 --units 1-10" in commands

    # 2./3. read: float32 CDAB is a mains voltage; no other order looks like one
    code, out = cellctl("read", "modbus", "--tcp", gateway, "--unit", "1", "--table", "input",
                        "--address", "0", "--count", "4", "--json")  # fmt: skip
    assert code == 0, out
    f32 = json.loads(out)["decoded"][0]["types"]["float32"]
    assert 200 < f32["CDAB"]["value"] < 260
    assert f32["CDAB"]["suspect"] is None
    for order in ("ABCD", "BADC", "DCBA"):
        value = f32[order]["value"]
        assert not (isinstance(value, float) and 200 < value < 260), (order, value)
    code, out = cellctl("read", "modbus", "--tcp", gateway, "--unit", "1", "--table", "input",
                        "--address", "16", "--count", "2", "--json")  # fmt: skip
    assert 49 < json.loads(out)["decoded"][0]["types"]["float32"]["CDAB"]["value"] < 51

    # 4. the doc's profile, 5. the doc's config (ports changed) and check
    (profile_text,) = [b for b in blocks("yaml") if b.startswith("name: my-meter")]
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "my-meter.yaml").write_text(profile_text, encoding="utf-8")
    (config_text,) = [b for b in blocks("yaml") if b.startswith("identity:")]
    config: dict[str, Any] = yaml.safe_load(config_text)
    config["backbone"]["port"] = broker.port
    config["status_page"]["port"] = page_port = free_port()
    config["devices"][0]["connection"]["port"] = int(gateway.rsplit(":", 1)[1])
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out = cellctl("check", str(path))
    assert code == 0, out

    # 6. poll: every point good, no trap; the wrong unit id is flagged
    code, out = cellctl("poll", str(path), "--json")
    assert code == 0, out
    (meter,) = json.loads(out)["devices"]
    assert meter["traps"] == []
    assert {p["id"]: p["quality"] for p in meter["points"]} == {
        "voltage_l1": "good", "frequency": "good", "energy_import": "good",
    }  # fmt: skip
    config["devices"][0]["connection"]["unit"] = 2
    wrong = tmp_path / "wrong-unit.yaml"
    wrong.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out = cellctl("poll", str(wrong))
    assert code == 1
    assert "every point is bad" in out

    # 7. run, 8. watch from the backbone and the status page
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([sys.executable, "-m", "cellctl.cli.main", "run", str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    watch = subprocess.Popen([sys.executable, "-m", "cellctl.cli.main", "watch", "--config", str(path), "--json",
                              "--interval", "0.2", "--duration", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert watch.stdout is not None
        deadline = time.monotonic() + 30
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline and seen.get("voltage_l1", {}).get("q") != "good":
            if select.select([watch.stdout], [], [], 0.2)[0]:
                view = json.loads(watch.stdout.readline())
                seen = view["devices"].get("meter-1", {}).get("points", {})
        assert seen["voltage_l1"]["q"] == "good"

        def page_state() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{page_port}/api/state", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        state = wait_until(page_state, timeout=20, what="the status page")
        assert state["devices"][0]["id"] == "meter-1"
    finally:
        stop(watch)
        stop(run)
    assert run.returncode == 0
