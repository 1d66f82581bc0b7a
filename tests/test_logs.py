"""In JSON mode every log line is one JSON object: our events, library records (pymodbus,
asyncio, asyncua) and their tracebacks alike, so journald and log shippers never see a
plain or multi-line record."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cellctl import logs
from cellctl.localbroker import Mosquitto, free_port
from cellctl.testing import Collector, modbus_device, root_topic, write_config

pytestmark = pytest.mark.timeout(90)
CELLCTL = [sys.executable, "-m", "cellctl.cli.main"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    logging.captureWarnings(False)
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("pymodbus").setLevel(logging.NOTSET)


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line as JSON; fails naming the first line that is not."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {n} is not JSON: {line!r}\n--- whole log ---\n{text[-3000:]}")
    return out


def test_library_records_and_tracebacks_are_json_lines(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("debug", json=True, stream=stream)
    logging.getLogger("pymodbus.logging").debug("send: 0x%s", "00 01")
    loop = asyncio.new_event_loop()
    try:
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError as exc:
            # asyncio's own default handler: logs to "asyncio" with exc_info
            loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": exc})
    finally:
        loop.close()
    # the OPC UA driver quiets asyncua when it is imported (an earlier test may have done
    # that); this test is about routing, so it asks for the record explicitly
    asyncua = logging.getLogger("asyncua")
    level, asyncua.level = asyncua.level, logging.NOTSET
    try:
        logging.getLogger("asyncua.client.ua_client").warning("publish request failed")
    finally:
        asyncua.setLevel(level)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
    log = structlog.get_logger()
    log.info("device_online", device="m1")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("write_failed", device="m1")

    lines = parse_lines(stream.getvalue())

    def one(**fields: str) -> dict[str, Any]:
        found = [line for line in lines if fields.items() <= line.items()]
        assert len(found) == 1, (fields, lines)
        return found[0]

    one(event="send: 0x00 01", level="debug", logger="pymodbus.logging")
    task = one(event="Task exception was never retrieved", level="error", logger="asyncio")
    assert task["exception"].startswith("Traceback")
    assert "ConnectionResetError: peer went away" in task["exception"]
    one(event="publish request failed", level="warning", logger="asyncua.client.ua_client")
    assert "a deprecated thing" in one(logger="py.warnings")["event"]
    one(event="device_online", device="m1", level="info")
    assert "ZeroDivisionError" in one(event="write_failed", level="error")["exception"]
    assert all("timestamp" in line for line in lines)


def test_library_records_at_info_level_stay_quiet(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("info", json=True, stream=stream)
    logging.getLogger("pymodbus.logging").error("an answer we already handle")
    logging.getLogger("asyncua").info("chatter")
    logging.getLogger("asyncio").warning("slow callback")
    lines = parse_lines(stream.getvalue())
    assert [(line["logger"], line["event"]) for line in lines] == [("asyncio", "slow callback")]


@pytest.fixture
def sim_port() -> Iterator[int]:
    """The Modbus simulator as its own process, stopped by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl_sim.modbus", "--tcp", f"127.0.0.1:{port}", "--tick", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("tcp "), line
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_run_at_debug_writes_only_json_lines(
    sim_port: int, broker: Mosquitto, unique: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, broker.port, [modbus_device("meter", "sim-energy-meter", sim_port, 1)], cell=unique
    )
    collector = Collector(broker.port, f"{root_topic(unique)}/#")
    proc = subprocess.Popen(
        [*CELLCTL, "--log-level", "debug", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # a few polls' worth of pymodbus debug output
        collector.wait_for(
            lambda _m: len(collector.on("/meter/data")) >= 5, timeout=30, what="five data messages"
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        collector.close()
    assert proc.returncode == 0, err[-2000:]
    lines = parse_lines(out) + parse_lines(err)
    loggers = {line.get("logger") for line in lines}
    assert any(str(name).startswith("pymodbus") for name in loggers), "pymodbus debug lines expected"
    assert {"cellctl_starting", "cellctl_stopped"} <= {line["event"] for line in lines}
