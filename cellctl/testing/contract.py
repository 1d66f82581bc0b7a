"""Check messages captured from a real broker against the published contract: every
message under a cell's root must travel on a registered topic and validate against the
(strict) JSON Schema of one of the payloads registered for that topic. Uses the
`jsonschema` package (a test dependency), imported when first needed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from cellctl.contract.registry import payloads_for
from cellctl.contract.schema import payload_schema
from cellctl.testing.mqtt import Message

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

CLEARED = ":cleared"  # suffix of a payload name counted for an empty (clearing) message


@dataclass
class ContractReport:
    """What a capture held: messages by payload name, and every problem found."""

    seen: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def assert_valid(self) -> None:
        assert not self.problems, f"{len(self.problems)} message(s) break the contract:\n" + "\n".join(
            self.problems[:20]
        )


@cache
def _validator(name: str) -> Validator:
    from jsonschema import Draft202012Validator

    schema = payload_schema(name, strict=True)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _first_error(name: str, body: Any) -> str | None:
    error = next(iter(_validator(name).iter_errors(body)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top)"
    return f"{where}: {error.message}"


def check_messages(messages: Iterable[Message], root: str) -> ContractReport:
    """Validate every message under `root` (topics elsewhere are ignored)."""
    report = ContractReport()
    for m in messages:
        if not m.topic.startswith(root + "/"):
            continue
        candidates = payloads_for(root, m.topic)
        if not candidates:
            report.problems.append(f"{m.topic!r}: no payload is registered for this topic")
            continue
        if m.payload == b"":
            clearable = [pl.name for pl in candidates if pl.clearable]
            if clearable:
                report.seen[clearable[0] + CLEARED] += 1
            else:
                report.problems.append(f"{m.topic!r}: empty payload on a topic that is never cleared")
            continue
        try:
            body = orjson.loads(m.payload)
        except orjson.JSONDecodeError as exc:
            report.problems.append(f"{m.topic!r}: not JSON ({exc}): {m.payload[:120]!r}")
            continue
        errors = []
        for pl in candidates:
            error = _first_error(pl.name, body)
            if error is None:
                report.seen[pl.name] += 1
                break
            errors.append(f"as {pl.name!r}: {error}")
        else:
            report.problems.append(f"{m.topic!r}: {'; '.join(errors)}; payload {m.payload[:200]!r}")
    return report
