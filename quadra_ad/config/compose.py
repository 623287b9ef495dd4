"""Compose a quadra_ad config without the CLI (tests, notebooks, scripts)."""

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.locations import config_dir
from quadra_ad.config.quadra_keys import translate_quadra_keys
from quadra_ad.config.resolvers import register_resolvers


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Return the config ``quadra-ad <overrides>`` would run, as a plain DictConfig."""
    register_experiment_sources()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    # A Quadra experiment file's keys become ours here, before anything reads them.
    return translate_quadra_keys(cfg)
