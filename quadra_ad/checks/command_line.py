"""Check the command line before Hydra sees it: group choices, override syntax, the config it
composes to.

Hydra's own messages for these are multi-line dumps (an unknown choice, an override it cannot
lex, a key that does not exist, a YAML syntax error in a user's experiment file); ours are one
line naming the key or the file, what is wrong and the closest existing names.
"""

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from quadra_ad.config.locations import config_dir, experiment_dirs
from quadra_ad.errors import ConfigError, first_line

_SWEEP_MARKERS = ("(", ")", "[", "]", "{", "}", "$", "*")


#: The first line of an option that is Quadra's name for one of ours (accepted, not listed).
QUADRA_ALIAS_MARK = "# Quadra's name for this option"


def group_options(group: str, with_aliases: bool = False) -> list[str]:
    """Every selectable name of a config group (``experiment`` included); Quadra's names for our
    options only ``with_aliases`` (they compose, but listings and completion offer ours)."""
    roots = experiment_dirs() if group == "experiment" else [config_dir() / group]
    names: set[str] = set()
    for root in roots:
        if root.is_dir():
            names.update(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")
                         if with_aliases or not _is_quadra_alias(p))
    return sorted(names)


def _is_quadra_alias(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        return handle.readline().startswith(QUADRA_ALIAS_MARK)


def selectable_groups() -> set[str]:
    """Config groups a user picks from; ``_``-folders hold parts other configs include (``_parts``)."""
    groups = {p.name for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra" and not p.name.startswith("_")}
    groups.add("experiment")
    return groups


def check_group_choices(overrides: Sequence[str]) -> None:
    """Raise ConfigError for ``group=name`` where the group has no such option."""
    groups = selectable_groups()
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or not value or value == "null" or any(m in value for m in _SWEEP_MARKERS):
            continue
        options = group_options(key, with_aliases=True)
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


def _parse_error(override: str, error: Exception) -> ConfigError:
    key, _, value = override.partition("=")
    odd = sorted({c for c in value if ord(c) > 127})
    if odd:
        return ConfigError(
            f"cannot read the override '{override}': Hydra takes characters such as {', '.join(odd)} only inside quotes; "
            f"write it as {key}=\"{value}\" (in a shell: '{key}=\"{value}\"')"
        )
    return ConfigError(f"cannot read the override '{override}' ({first_line(error)}): quote values that hold spaces, brackets, "
                       f"commas or '=' as {key}=\"...\"")


def check_override_syntax(overrides: Sequence[str]) -> None:
    """One line naming the first override Hydra's grammar cannot read, and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as error:
            raise _parse_error(override, error) from None


def _yaml_error(error) -> ConfigError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or first_line(error)
    where = f"'{mark.name}' line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an experiment file"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        context = f"{context} started at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return ConfigError(f"YAML syntax error in {where}: {problem}{f' ({context})' if context else ''}")


def _unknown_key_error(key: str, overrides: Sequence[str]) -> ConfigError:
    """``key`` is not in the composed config: name the keys it could have meant."""
    from quadra_ad.checks.composition import compose_config

    parent, _, leaf = key.rpartition(".")
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node = compose_config(others, warn=False)
        node = OmegaConf.select(node, parent) if parent else node
        known = [str(k) for k in node] if isinstance(node, DictConfig) else []
    except Exception:  # noqa: BLE001 - the hint is optional, the message is not
        known = []
    if leaf in known:
        # Hydra refused the key although the config that runs has it: the experiment left its
        # section empty (a Quadra file's ``override /backbone: null``) and only the translation of
        # its keys fills it in, after the command line was applied.
        return ConfigError(f"{key}: the experiment file leaves '{parent}' empty (override /{parent.split('.')[0]}: "
                           f"null) and fills it later: write +{key}=<value>")
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(f'{parent}.{c}' if parent else c for c in close)}?" if close else ""
    where = f"under '{parent}'" if parent else "at the top of the config"
    return ConfigError(f"{key}: no such key {where}.{hint} To add a new key write +{key}=<value>")


def compose_checked(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The config ``quadra-ad <overrides>`` runs, with Hydra's composition errors as one line each
    (``with_hydra``: Hydra's own section too)."""
    import yaml
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from quadra_ad.checks.composition import compose_config

    check_override_syntax(overrides)
    try:
        return compose_config(overrides, warn=False, with_hydra=with_hydra)  # the run logs the CPU fallback, once
    except yaml.YAMLError as error:
        raise _yaml_error(error) from None
    except OverrideParseException as error:
        raise ConfigError(first_line(error)) from None
    except ConfigCompositionException as error:
        match = re.match(r"Could not override '([^']+)'", str(error))
        cause = error.__cause__
        if match and cause is not None and "not in struct" in str(cause):
            raise _unknown_key_error(match.group(1), overrides) from None
        if isinstance(cause, yaml.YAMLError):
            raise _yaml_error(cause) from None
        raise ConfigError(" ".join(str(error).strip().splitlines()[:2])) from None


CATEGORY_KEY = "datamodule.category"


def expand_category_patterns(args: list[str]) -> list[str]:
    """``datamodule.category='*'`` (or ``'b*'``, any shell-style pattern) → the matching category
    folders under ``datamodule.data_path``, as a sweep Hydra can run: ``datamodule.category=a,b,c``."""
    import fnmatch

    from quadra_ad.datamodules.layout import list_categories

    expanded = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key != CATEGORY_KEY or not any(char in value for char in "*?["):
            expanded.append(arg)
            continue
        roots = [a.partition("=")[2] for a in args if a.partition("=")[0] == "datamodule.data_path"]
        if not roots:
            raise ConfigError(f"{CATEGORY_KEY}={value} needs datamodule.data_path=<folder of categories> on the command line")
        found = [name for name in list_categories(roots[-1]) if fnmatch.fnmatchcase(name, value)]
        if not found:
            raise ConfigError(f"{CATEGORY_KEY}={value}: no category folder (holding train/good) under '{roots[-1]}' matches")
        if not any(a in ("-m", "--multirun") for a in args) and len(found) > 1:
            raise ConfigError(f"{CATEGORY_KEY}={value} matches {len(found)} categories ({', '.join(found)}): add -m to run them all")
        expanded.append(f"{CATEGORY_KEY}={','.join(found)}")
    return expanded


#: Hydra plugins behind the launcher and sweeper choices we ship or document: choice → (module, package).
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "hydra/launcher=ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
}


#: Every choice of Hydra's launcher and sweeper groups: Hydra's own, then the plugins' (PLUGINS
#: says which package each needs).
HYDRA_CHOICES = {
    "hydra/launcher": ("basic", "joblib", "submitit_local", "submitit_slurm", "ray", "ray_aws"),
    "hydra/sweeper": ("basic", "optuna"),
}
PLUGINS["hydra/launcher=ray_aws"] = PLUGINS["hydra/launcher=ray"]


def check_plugins(args: list[str]) -> None:
    """A launcher or sweeper that does not exist, or whose plugin is not installed, and launcher
    settings it does not take: one line, before Hydra's traceback (also for ``-m`` runs, which
    Hydra composes itself)."""
    import importlib.util

    for arg in args:
        _check_hydra_choice(arg)
        plugin = PLUGINS.get(arg.lstrip("+").replace(" ", ""))
        if plugin is not None and importlib.util.find_spec(plugin[0]) is None:
            raise ConfigError(f"{arg.lstrip('+')} needs {plugin[1]}, which is not installed: pip install 'quadra_ad[scale]'")
    check_launcher_settings(args)


def _check_hydra_choice(arg: str) -> None:
    key, _, value = arg.lstrip("+~").partition("=")
    options = HYDRA_CHOICES.get(key.strip())
    if options is None or any(m in value for m in _SWEEP_MARKERS):
        return
    for choice in value.split(","):
        if choice.strip() not in options:
            close = difflib.get_close_matches(choice.strip(), options, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{key}={choice}: no such {key.split('/')[1]}; {hint}the {key.split('/')[1]}s are "
                              f"{', '.join(options)}")


#: Launcher settings whose values the plugin accepts but cannot run with: key → (check, what it takes).
#: joblib's n_jobs=0 fails inside the sweep; -1 (joblib: one job per CPU core) is the plugin's default.
LAUNCHER_VALUES = {
    "n_jobs": (lambda v: isinstance(v, int) and (v >= 1 or v == -1), "a whole number >= 1, or -1 for one job per CPU core"),
    "timeout_min": (lambda v: isinstance(v, int) and v >= 1, "a whole number of minutes >= 1"),
    "array_parallelism": (lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
}


def _chosen_launcher(args: list[str]) -> str | None:
    chosen = [a.lstrip("+~").partition("=")[2] for a in args if a.lstrip("+~").partition("=")[0] == "hydra/launcher"]
    return chosen[-1] if chosen else None


def check_launcher_settings(args: list[str]) -> None:
    """``hydra.launcher.<key>=<value>``: a key the chosen launcher does not have, or a value it cannot run."""
    import dataclasses

    from quadra_ad.config.launchers import launcher_presets

    settings = [a.lstrip("+~") for a in args if a.lstrip("+~").startswith("hydra.launcher.") and "=" in a]
    if not settings:
        return
    launcher = _chosen_launcher(args)
    preset = launcher_presets().get(launcher) if launcher else None
    known = [f.name for f in dataclasses.fields(preset) if not f.name.startswith("_")] if preset is not None else None
    for setting in settings:
        key, _, text = setting.partition("=")
        name = key.removeprefix("hydra.launcher.")
        if known is not None and name.split(".")[0] not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean hydra.launcher.{close[0]}? " if close else ""
            raise ConfigError(f"{key}: hydra/launcher={launcher} has no setting '{name}'; {hint}it takes {', '.join(known)}")
        rule = LAUNCHER_VALUES.get(name)
        if rule is not None and not any(m in text for m in _SWEEP_MARKERS):
            value = _override_value(text)
            if not rule[0](value) or isinstance(value, bool):
                raise ConfigError(f"{key}={text} (takes {rule[1]}): fix it on the command line")


def _override_value(text: str):
    """An override's value as Hydra reads it (``2`` a number, ``abc`` a string)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"x={text}").value()
    except Exception:  # noqa: BLE001 - check_override_syntax reports what Hydra cannot read
        return text
