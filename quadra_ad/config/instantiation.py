"""``hydra.utils.instantiate`` with errors a user can act on.

Every object in a run is built from a config node (``datamodule``, ``model``, ``trainer`` …).
When that fails because of the config, the error names the key at fault, in one line.
"""

import logging
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from quadra_ad.errors import ConfigError, QuadraADError

log = logging.getLogger(__name__)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def missing_value_error(cfg: DictConfig, key: str) -> ConfigError | None:
    """The error for the first mandatory value (``???``) left unset under ``cfg.<key>``, if any."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if not missing:
        return None
    # missing_keys() gives full paths when the node sits inside a bigger config.
    first = missing[0] if missing[0].startswith(f"{key}.") else f"{key}.{missing[0]}"
    return ConfigError(f"{first} is not set: add {first}=<value> to the command line or the experiment file")


def instantiate_node(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg.<key>``; raise ConfigError naming ``key`` when the config is at fault."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        raise ConfigError(f"'{key}' is not in the config: add a '{key}' section or pick a config group for it")
    error = missing_value_error(cfg, key)
    if error is not None:
        raise error
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target:
        log.info("Instantiating %s <%s>", key, target)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = _root_cause(error)
        if isinstance(cause, QuadraADError):
            raise cause from None
        if "Error locating target" in str(error) or isinstance(cause, ImportError):
            raise ConfigError(
                f"{key}._target_: cannot import '{target}'; check the spelling of the class path"
            ) from error
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(f"{key}: {cause} (check the keys under '{key}')") from error
        raise
