"""The error families cellctl reports to users."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad config or profile: start-up stops with exit code 2 and these lines, no traceback."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
