"""A small G-code word reader shared by the simulators (their own, not the driver's).

It does what a firmware's parser does first: drop comments and spaces, upper-case, and
split a block into (letter, number) words, rejecting what no firmware would accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PAREN = re.compile(r"\([^)]*\)")
_WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")


class WordError(ValueError):
    """A block that cannot be split into words; `code` is GRBL's error number."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def strip_block(line: str) -> str:
    """The block as GRBL buffers it: comments and whitespace removed, upper case."""
    line = line.split(";", 1)[0]
    line = _PAREN.sub("", line)
    return "".join(line.split()).upper()


@dataclass(slots=True)
class Block:
    words: list[tuple[str, float]]

    def get(self, letter: str) -> float | None:
        for k, v in self.words:
            if k == letter:
                return v
        return None

    def all(self, letter: str) -> list[float]:
        return [v for k, v in self.words if k == letter]

    def has(self, letter: str) -> bool:
        return any(k == letter for k, _ in self.words)


def parse_words(block: str) -> Block:
    """Split a stripped block into words. Raises WordError (1: a letter without a
    number or a stray character; 2: a bad number)."""
    pos = 0
    words: list[tuple[str, float]] = []
    n = len(block)
    while pos < n:
        m = _WORD.match(block, pos)
        if m is None:
            if block[pos].isalpha():
                raise WordError(2, f"bad number after {block[pos]!r}")
            raise WordError(1, f"expected a command letter at {block[pos:]!r}")
        words.append((m.group(1), float(m.group(2))))
        pos = m.end()
    return Block(words)
