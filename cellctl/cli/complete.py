"""Dynamic shell completion (click's, for bash, zsh and fish): profile names from the
search path, device ids from the config named earlier on the command line. Completion
must never fail loudly: any problem completes nothing."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem


def profile_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    try:
        from cellctl.config.profiles import list_profiles, search_dirs

        dirs = [Path(d) for d in ctx.params.get("dirs") or ()]
        return [
            CompletionItem(found.name, help=found.source)
            for found in list_profiles(search_dirs(dirs))
            if found.name.startswith(incomplete)
        ]
    except Exception:
        return []


def device_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Ids of the devices in the config argument (read as YAML only: no profile or driver
    is loaded while the user presses Tab)."""
    try:
        from cellctl.config.yamlfile import read_yaml

        config: Any = ctx.params.get("config") or _config_from_words()
        if config is None:
            return []
        data = read_yaml(Path(config))
        devices = data.get("devices") or [] if isinstance(data, dict) else []
        ids = [str(d["id"]) for d in devices if isinstance(d, dict) and "id" in d]
        return [CompletionItem(i) for i in ids if i.startswith(incomplete)]
    except Exception:
        return []


def _config_from_words() -> Path | None:
    """The config named on the line being completed. Click's resilient parse loses the
    arguments when the word being completed is an option's value (`--device <Tab>`);
    every click completion script (bash, zsh, fish) passes the line in COMP_WORDS."""
    try:
        words = shlex.split(os.environ.get("COMP_WORDS", ""))
    except ValueError:
        return None
    for word in words[1:]:
        if word.endswith((".yaml", ".yml")) and Path(word).is_file():
            return Path(word)
    return None
