"""Hostile commands (issue 16 item 9): nothing a client sends as NCMD/DCMD raises out of
the command path, and at daemon level every hostile command is refused and counted while
the machine stays untouched and the daemon runs on. UNS has no command path yet: garbage
on `<root>/<device>/cmd/...` style topics must simply change nothing.

The corpus (`hostile_corpus`, ~200 payloads, also sent by bench/chaos.py): random
bytes, truncated protobuf, wrong datatypes, NaN and infinities, huge and unknown aliases,
a 65 KiB payload, deeply nested properties, invalid UTF-8, values of exotic types."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cellctl_sim.modbus.server import SimModbusServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellctl.commands.sparkplug import SparkplugCommands
from cellctl.config.loader import load_cell
from cellctl.encode.sparkplug import DeviceModel, device_model
from cellctl.localbroker import Mosquitto
from cellctl.sparkplug import sparkplug_b_pb2 as pb
from cellctl.sparkplug.codec import (
    REBIRTH_METRIC,
    CommandError,
    DataType,
    MetricDef,
    MetricTable,
    decode_command,
)
from cellctl.sparkplug.state import AliasBook
from cellctl.testing import Collector, modbus_device, root_topic, running_daemon, write_config
from cellctl.testing.sparkplug import Capture, SpMessage

pytestmark = pytest.mark.timeout(90)
NODE_TABLE = MetricTable(
    [MetricDef(REBIRTH_METRIC, DataType.Boolean), MetricDef("Commands/Refused", DataType.UInt64, alias=1)]
)


def plc_model(tmp_path: Path) -> DeviceModel:
    config = write_config(tmp_path, 1883, [modbus_device("plc", "sim-machine-plc", 5020, 2)], cell="c")
    return device_model(load_cell(config).devices[0], AliasBook(None))


def valid_command(setpoint_alias: int, value: float = 250.0) -> bytes:
    p = pb.Payload()
    p.timestamp = int(time.time() * 1000)
    m = p.metrics.add()
    m.alias = setpoint_alias
    m.double_value = value
    return p.SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random edit of a valid payload: flip, drop, insert, duplicate or truncate."""
    b = bytearray(data)
    kind = rng.randrange(5)
    i = rng.randrange(len(b)) if b else 0
    if kind == 0 and b:
        b[i] ^= 1 << rng.randrange(8)
    elif kind == 1 and b:
        del b[i]
    elif kind == 2:
        b.insert(i, rng.randrange(256))
    elif kind == 3:
        b += b[i:]
    else:
        del b[i:]
    return bytes(b)


def metric_payload(alias: int | None, name: str | None, datatype: int | None, set_value: object) -> bytes:
    """One metric; `set_value(m)` fills the value."""
    p = pb.Payload()
    p.timestamp = int(time.time() * 1000)
    m = p.metrics.add()
    if alias is not None:
        m.alias = alias
    if name is not None:
        m.name = name
    if datatype is not None:
        m.datatype = datatype
    assert callable(set_value)
    set_value(m)
    return p.SerializeToString()


def deep_properties(alias: int, depth: int) -> bytes:
    p = pb.Payload()
    m = p.metrics.add()
    m.alias = alias
    m.double_value = 1.0
    ps = m.properties
    for _ in range(depth):
        ps.keys.append("k")
        v = ps.values.add()
        v.type = DataType.PropertySet
        ps = v.propertyset_value
    return p.SerializeToString()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def raw_metric(metric: bytes) -> bytes:
    """A payload of one metric given as raw protobuf bytes (what the library will not build)."""
    return b"\x12" + varint(len(metric)) + metric


def hostile_corpus(setpoint: int, temperature: int, seed: int = 16) -> list[tuple[str, bytes]]:
    """(target, payload): target "node" is an NCMD, anything else the DCMD's device. None
    of them may be executed; every one is refused by the router."""
    rng = random.Random(seed)
    valid = valid_command(setpoint)
    out: list[tuple[str, bytes]] = []
    out += [("plc", rng.randbytes(rng.randint(1, 400))) for _ in range(80)]
    out += [("node", rng.randbytes(rng.randint(1, 100))) for _ in range(20)]
    out += [("plc", valid[:k]) for k in range(len(valid) - 1)]  # truncated protobuf
    muts = {m for m in (mutate(valid, rng) for _ in range(400)) if m != valid}
    bad_mutants = []
    for m in sorted(muts):
        try:
            decode_command(m, MetricTable([MetricDef("setpoint", DataType.Double, alias=setpoint)]))
        except CommandError:
            bad_mutants.append(m)  # only what the codec refuses: a mutant may still be a valid write
    out += [("plc", m) for m in bad_mutants[:50]]

    def s(field: str, value: object) -> object:
        return lambda m: setattr(m, field, value)

    wrong_types = [
        (setpoint, None, DataType.String, s("string_value", "250")),
        (setpoint, None, DataType.Boolean, s("boolean_value", True)),
        (setpoint, None, None, s("string_value", "250")),
        (setpoint, None, None, s("bytes_value", b"\x00" * 8)),
        (setpoint, None, DataType.Int64, s("long_value", 2**63)),
        (setpoint, None, DataType.Template, lambda m: m.template_value.metrics.add()),
        (setpoint, None, DataType.DataSet, lambda m: setattr(m.dataset_value, "num_of_columns", 3)),
        (setpoint, None, None, s("is_null", True)),
        (setpoint, None, None, lambda m: None),  # no value at all
        (None, None, None, s("double_value", 1.0)),  # neither name nor alias
        (None, "no such point", DataType.Double, s("double_value", 1.0)),
        (2**64 - 1, None, None, s("double_value", 1.0)),  # huge alias
        (0, None, None, s("double_value", 1.0)),
        (temperature, None, None, s("double_value", 1.0)),  # read-only point
        (setpoint, None, None, s("double_value", 1e308)),  # out of range
        (setpoint, None, None, s("double_value", -1e-300)),
    ]
    out += [("plc", metric_payload(*w)) for w in wrong_types]
    for v in (math.nan, math.inf, -math.inf):
        out += [("plc", metric_payload(setpoint, None, None, s("double_value", v)))]
        out += [("plc", metric_payload(setpoint, None, DataType.Float, s("float_value", v)))]
    out += [("plc", metric_payload(setpoint, None, None, s("string_value", "x" * (65 * 1024))))]  # 65 KiB
    out += [("plc", deep_properties(setpoint, 200)), ("plc", deep_properties(setpoint, 60))]
    out += [("plc", b""), ("plc", pb.Payload(timestamp=1).SerializeToString())]  # no metrics
    out += [("plc", valid + b"\xff" * 7)]  # trailing garbage
    out += [("plc", raw_metric(b"\x0a\x02\xff\xfe" + b"\x69" + bytes(8)))]  # name not UTF-8
    out += [("plc", raw_metric(b"\x10" + varint(setpoint) + b"\x7a\x03\xc3\x28\xa0"))]  # string not UTF-8
    out += [
        ("node", metric_payload(None, REBIRTH_METRIC, None, s("string_value", "true"))),
        ("node", metric_payload(None, "Commands/Refused", None, s("long_value", 0))),
        ("node", metric_payload(None, REBIRTH_METRIC, DataType.Boolean, s("is_null", True))),
        ("node", b"\x0a\xff\xff\xff\xff\x0f"),  # a length past the end
        ("ghost", valid),  # a device never birthed
    ]
    return out


# -- the command path alone, with hypothesis -----------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_no_random_bytes_raise_out_of_the_command_path(data: bytes, tmp_path: Path) -> None:
    model = plc_model(tmp_path)
    router = SparkplugCommands(NODE_TABLE, {"plc": model}, device_writes="allow")
    with contextlib.suppress(CommandError):
        decode_command(data, model.table)
    assert isinstance(router.node_command(data), bool)
    assert isinstance(router.device_command("plc", data, birthed=True), list)
    assert isinstance(router.device_command("plc", data, birthed=False), list)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), edits=st.integers(1, 6), value=st.floats())
def test_no_mutated_command_raises_and_what_passes_is_in_range(
    seed: int, edits: int, value: float, tmp_path: Path
) -> None:
    model = plc_model(tmp_path)
    router = SparkplugCommands(NODE_TABLE, {"plc": model}, device_writes="allow")
    setpoint = model.table.by_name["setpoint"].alias
    assert setpoint is not None
    data = valid_command(setpoint, value)
    rng = random.Random(seed)
    for _ in range(edits):
        data = mutate(data, rng)
    assert isinstance(router.node_command(data), bool)
    writes = router.device_command("plc", data, birthed=True)
    low, high = model.writable["setpoint"]
    for w in writes:  # anything accepted is a writable point with a finite value in its limits
        assert w.point_id in model.writable
        if isinstance(w.value, float):
            assert math.isfinite(w.value)
            assert low is None or w.value >= low
            assert high is None or w.value <= high


def test_the_corpus_is_refused_whole_by_the_router(tmp_path: Path) -> None:
    model = plc_model(tmp_path)
    router = SparkplugCommands(NODE_TABLE, {"plc": model}, device_writes="allow")
    a = model.table.by_name
    sp, temp = a["setpoint"].alias, a["temperature"].alias
    assert sp is not None
    assert temp is not None
    corpus = hostile_corpus(sp, temp)
    assert len(corpus) >= 150
    for target, payload in corpus:
        if target == "node":
            assert router.node_command(payload) is False
        else:
            assert router.device_command(target, payload, birthed=target == "plc") == []
    assert router.refused_total == len(corpus)


# -- the daemon, over MQTT --------------------------------------------------------------------


@pytest.fixture
async def plc() -> AsyncIterator[tuple[SimModbusServer, int]]:
    async with SimModbusServer({2: "machine-plc"}, tick=0.1, seed=3) as sim:
        yield sim, await sim.serve_tcp()


def dbirth_aliases(msgs: list[SpMessage]) -> dict[str, int]:
    births = [m for m in msgs if m.kind == "DBIRTH" and m.device == "plc"]
    return {x.name: x.alias for x in births[-1].decode().metrics if x.HasField("alias")} if births else {}


async def test_a_hostile_corpus_over_mqtt_is_refused_counted_and_changes_nothing(
    broker: Mosquitto,
    plc: tuple[SimModbusServer, int],
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, port = plc
    group, edge = "test-lab-a1", f"l1-{unique}"
    config = write_config(
        tmp_path,
        broker.port,
        [modbus_device("plc", "sim-machine-plc", port, 2, poll_interval=0.05)],
        cell=unique,
        publish={"formats": ["uns", "sparkplug"]},
        sparkplug={"device_writes": "allow"},  # so only the checks stand between the corpus and the machine
    )
    root = root_topic(unique)
    before = sim.unit(2).snapshot()
    cap = Capture(broker.port, f"spBv1.0/{group}/#")
    uns = Collector(broker.port, f"{root}/plc/data")
    try:
        async with running_daemon(config) as daemon:
            node = daemon.node
            assert node is not None
            a = await cap.until(dbirth_aliases, what="DBIRTH")
            corpus = hostile_corpus(a["setpoint"], a["temperature"])
            for target, payload in corpus:
                topic = (
                    f"spBv1.0/{group}/NCMD/{edge}"
                    if target == "node"
                    else f"spBv1.0/{group}/DCMD/{edge}/{target}"
                )
                cap.publish(topic, payload)
            await cap.until(
                lambda _m: node.router.refused_total >= len(corpus), timeout=30, what="every command refused"
            )
            # UNS: no command path yet; garbage on command-like topics changes nothing
            refused = node.router.refused_total
            rng = random.Random(9)
            for i in range(60):
                sub = ("cmd", "cmd/setpoint", "cmd/write", "set/setpoint", "points/setpoint/set")[i % 5]
                cap.publish(f"{root}/plc/{sub}", rng.randbytes(rng.randint(0, 300)))
            cap.publish(f"{root}/plc/cmd/setpoint", b'{"v": 999.0}')
            cap.publish(f"{root}/cmd", b"\xff\xfe not json")
            # the daemon runs on: data still flows afterwards
            mark = len(uns.messages)
            await uns.until(lambda m: len(m) > mark + 5, what="data after the corpus")
            assert not daemon.stop.is_set()
            assert node.router.refused_total == refused == len(corpus)
            written = daemon.audit.outcomes["done"]
    finally:
        cap.close()
        uns.close()
    assert written == 0
    after = sim.unit(2).snapshot()
    assert after["setpoint"] == before["setpoint"], "nothing reached the machine"
    assert after["run_enable"] == before["run_enable"]
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
