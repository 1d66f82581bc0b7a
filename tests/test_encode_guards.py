"""Issue 16 item 1, the encoder side: a value JSON or Sparkplug cannot carry (an integer
wider than 64 bits from a serial machine) marks that point bad in that message and ends
nothing; an encoder that raises loses one message, not the device task."""

from __future__ import annotations

import orjson
import pytest

from cellctl.config.cell import Publish
from cellctl.encode.fanout import FanOut
from cellctl.encode.uns import UnsEncoder
from cellctl.model import DeviceSnapshot, DeviceUpdate, MachineState, PointState, Quality, QualityChange
from cellctl.outbox import Record


class Collect:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def put(self, record: Record) -> bool:
        self.records.append(record)
        return True


def test_an_integer_beyond_64_bits_goes_out_as_null_and_bad_beside_the_good_values() -> None:
    out = Collect()
    enc = UnsEncoder(out, "uns/v1/e/s/a/l/c", Publish(), 1)
    huge = 99999999999999999999999
    enc.device_update(
        DeviceUpdate("mill", 1, {"rx_free": huge, "feed": 12.5}, {"feed": QualityChange(Quality.GOOD)})
    )
    body = orjson.loads(out.records[-1].payload)
    assert body["values"] == {"rx_free": None, "feed": 12.5}
    assert body["quality"]["rx_free"]["q"] == "bad"
    assert "cannot encode" in body["quality"]["rx_free"]["reason"]
    assert body["quality"]["feed"] == {"q": "good"}
    assert enc.unencodable == 1


def test_the_retained_state_with_such_a_value_is_still_published() -> None:
    out = Collect()
    enc = UnsEncoder(out, "uns/v1/e/s/a/l/c", Publish(), 1)
    points = (
        PointState("rx_free", 2**70, Quality.GOOD, None, None, None),
        PointState("feed", 3.0, Quality.GOOD, None, "mm/min", None),
    )
    enc.device_state(DeviceSnapshot("mill", 1, "grbl-cnc", "gcode", True, None, True, MachineState(), points))
    body = orjson.loads(out.records[-1].payload)
    assert body["points"]["rx_free"]["v"] is None
    assert body["points"]["rx_free"]["q"] == "bad"
    assert body["points"]["feed"] == {"v": 3.0, "q": "good", "unit": "mm/min"}


class Broken:
    def device_update(self, update: DeviceUpdate) -> None:
        raise RuntimeError("encoder bug")

    def device_state(self, snapshot: DeviceSnapshot) -> None:
        raise RuntimeError("encoder bug")

    def device_available(self, snapshot: DeviceSnapshot) -> None:
        raise RuntimeError("encoder bug")


def test_a_failing_encoder_loses_its_message_only_and_the_next_sink_still_gets_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = Collect()
    fan = FanOut([Broken(), UnsEncoder(out, "r", Publish(), 1)])
    for ts in (1, 2):
        fan.device_update(DeviceUpdate("d", ts, {"p": ts}, {}))
    assert [orjson.loads(r.payload)["values"] for r in out.records] == [{"p": 1}, {"p": 2}]
    assert fan.failures == 2
    assert capsys.readouterr().out.count("encoder_failed") == 1  # logged once per sink and device
