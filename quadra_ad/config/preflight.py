"""Check config-group choices on the command line before Hydra sees them.

Hydra's own message for an unknown choice is a multi-line dump; ours is one line naming the
group, the value and the closest existing names.
"""

import difflib
from collections.abc import Sequence
from pathlib import Path

from quadra_ad.config.locations import config_dir, experiment_dirs
from quadra_ad.errors import ConfigError

_SWEEP_MARKERS = ("(", ")", "[", "]", "{", "}", "$", "*")


def group_options(group: str) -> list[str]:
    """Every selectable name of a config group (``experiment`` included)."""
    roots = experiment_dirs() if group == "experiment" else [config_dir() / group]
    names: set[str] = set()
    for root in roots:
        if root.is_dir():
            names.update(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
    return sorted(names)


def _known_groups() -> set[str]:
    """Config groups a user picks from; ``_``-folders hold parts other configs include (``_parts``)."""
    groups = {p.name for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra" and not p.name.startswith("_")}
    groups.add("experiment")
    return groups


def check_group_choices(overrides: Sequence[str]) -> None:
    """Raise ConfigError for ``group=name`` where the group has no such option."""
    groups = _known_groups()
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or not value or value == "null" or any(m in value for m in _SWEEP_MARKERS):
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice in options:
                continue
            close = difflib.get_close_matches(choice, options, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            where = ", ".join(str(d) for d in experiment_dirs()) if key == "experiment" else str(config_dir() / key)
            raise ConfigError(
                f"Unknown {key} '{choice}': no {Path(choice).as_posix()}.yaml in {where}.{hint} "
                f"List them with: quadra-ad --list {key}"
            )
