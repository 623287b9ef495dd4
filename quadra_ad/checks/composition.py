"""Compose a quadra_ad config without the CLI (tests, notebooks, scripts)."""

import logging
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from quadra_ad.checks.values import value_mistakes
from quadra_ad.config.device_fallback import fall_back_to_cpu
from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.locations import config_dir
from quadra_ad.config.quadra_keys import quadra_key_mistakes
from quadra_ad.config.resolvers import register_resolvers
from quadra_ad.errors import ConfigErrors

log = logging.getLogger(__name__)


def finish_config(cfg: DictConfig) -> str | None:
    """What turns the config Hydra composed into the one that runs: a Quadra experiment file's keys
    become ours, and a GPU trainer on a machine without one moves to the CPU. Returns the warning
    line of that move (None when there was none), for the caller to show once. Keys of a Quadra
    file with no counterpart here raise :class:`ConfigErrors`, with every other value mistake."""
    untranslated = quadra_key_mistakes(cfg)
    warning = fall_back_to_cpu(cfg)
    if untranslated:
        # Everything still wrong at once, not one kind per run: the values too.
        raise ConfigErrors(untranslated + [line for line in value_mistakes(cfg) if line not in untranslated])
    return warning


def compose_config(overrides: Sequence[str] = (), warn: bool = True, with_hydra: bool = False) -> DictConfig:
    """Return the config ``quadra-ad <overrides>`` would run, as a plain DictConfig.

    ``warn=False`` leaves the CPU-fallback warning to the caller (the CLI logs it in the run);
    ``with_hydra=True`` keeps Hydra's own ``hydra`` section (``--cfg all``)."""
    register_experiment_sources()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)
    warning = finish_config(cfg)
    if warning and warn:
        log.warning(warning)
    return cfg
