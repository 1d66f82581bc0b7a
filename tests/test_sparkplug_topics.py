"""Sparkplug topic names and the state an edge node keeps across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.sparkplug.codec import DataType
from cellctl.sparkplug.state import AliasBook, BdSeqFile
from cellctl.sparkplug.topics import (
    MessageType,
    NodeTopics,
    ParsedStateTopic,
    ParsedTopic,
    TopicError,
    case_collisions,
    device_topic,
    node_topic,
    parse_topic,
    state_topic,
    validate_id,
)

pytestmark = pytest.mark.timeout(30)


def test_node_and_device_topics() -> None:
    t = NodeTopics("acmeberlinmachining", "cell-3")
    assert t.nbirth == "spBv1.0/acmeberlinmachining/NBIRTH/cell-3"
    assert t.ndeath == "spBv1.0/acmeberlinmachining/NDEATH/cell-3"
    assert t.ncmd == "spBv1.0/acmeberlinmachining/NCMD/cell-3"
    assert t.device(MessageType.DDATA, "mill-1") == "spBv1.0/acmeberlinmachining/DDATA/cell-3/mill-1"
    assert t.device(MessageType.DDATA, "mill-1") is t.device(MessageType.DDATA, "mill-1")
    assert t.dcmd_filter == "spBv1.0/acmeberlinmachining/DCMD/cell-3/+"
    assert state_topic("scada-1") == "spBv1.0/STATE/scada-1"


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#", "x\x00"])
def test_ids_with_topic_characters_are_refused(bad: str) -> None:
    with pytest.raises(TopicError, match="device id"):
        validate_id("device id", bad)
    with pytest.raises(TopicError):
        NodeTopics("g", "e").device(MessageType.DBIRTH, bad)


def test_message_type_must_fit_the_level() -> None:
    with pytest.raises(TopicError, match="needs a device id"):
        node_topic("g", MessageType.DDATA, "e")
    with pytest.raises(TopicError, match="takes no device id"):
        device_topic("g", MessageType.NDATA, "e", "d")


def test_unicode_and_spaces_are_valid_ids() -> None:
    assert validate_id("group id", "Sparkplug B Devices") == "Sparkplug B Devices"
    assert validate_id("device id", "Fräse-1") == "Fräse-1"


def test_parse_topic_round_trips_and_rejects_garbage() -> None:
    assert parse_topic("spBv1.0/g/DCMD/e/d") == ParsedTopic("g", MessageType.DCMD, "e", "d")
    assert parse_topic("spBv1.0/g/NCMD/e") == ParsedTopic("g", MessageType.NCMD, "e")
    assert parse_topic("spBv1.0/STATE/host") == ParsedStateTopic("host")
    for bad in ["uns/v1/x", "spBv1.0/g/NCMD/e/d", "spBv1.0/g/DCMD/e", "spBv1.0/g/XCMD/e", "spBv1.0/g/NCMD/",
                "spBv1.0/STATE/a/b"]:
        with pytest.raises(TopicError):
            parse_topic(bad)


def test_case_collisions() -> None:
    assert case_collisions(["Mill-1", "lathe", "mill-1"]) == [("Mill-1", "mill-1")]
    assert case_collisions(["a", "b"]) == []


def test_bdseq_persists_increments_and_wraps(tmp_path: Path) -> None:
    path = tmp_path / "bdseq"
    assert [BdSeqFile(path).next_session() for _ in range(3)] == [0, 1, 2]  # a new process each time
    path.write_text("255\n")
    assert BdSeqFile(path).next_session() == 0
    path.write_text("garbage")
    f = BdSeqFile(path)
    assert f.next_session() == 0
    assert f.recovered
    assert "invalid content" in f.recovered
    assert path.read_text() == "0\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_alias_book_keeps_aliases_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "aliases.json"
    book = AliasBook(path)
    t1 = book.table("mill-1", [("temp", DataType.Double), ("speed", DataType.Double)])
    book.table(AliasBook.NODE, [("Node Info/Version", DataType.String)])
    book.save()
    again = AliasBook(path)
    # a reordered profile and a new point: old aliases keep their meaning, new ones are fresh
    t2 = again.table("mill-1", [("speed", DataType.Double), ("new", DataType.Int64), ("temp", DataType.Double)])
    assert t2.by_name["temp"].alias == t1.by_name["temp"].alias
    assert t2.by_name["speed"].alias == t1.by_name["speed"].alias
    all_aliases = [d.alias for d in t2] + [again.alias(AliasBook.NODE, "Node Info/Version")]
    assert len(set(all_aliases)) == len(all_aliases)
    path.write_text("{not json")
    broken = AliasBook(path)
    assert broken.recovered
    assert broken.alias("x", "y") == 1
