"""``hydra.utils.instantiate`` with errors a user can act on.

Every object in a run is built from a config node (``datamodule``, ``model``, ``trainer`` …).
When that fails because of the config, the error names the key at fault, in one line.
"""

import logging
import re
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
        # For the run's log file: quadra_ad.runtime.quiet_terminal keeps these lines off the terminal unless core.verbose.
        log.info("Instantiating %s <%s>", key, target)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = _root_cause(error)
        if isinstance(cause, QuadraADError):
            raise cause from None
        at_fault = _key_at_fault(error, key)
        if "Error locating target" in str(error) or isinstance(cause, ImportError):
            located = re.search(r"Error locating target '([^']+)'", str(error))
            raise ConfigError(
                f"{at_fault}._target_: cannot import '{located.group(1) if located else target}'; check the "
                f"spelling of the class path"
            ) from error
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(f"{at_fault}: {cause} (check the keys under '{at_fault}')") from error
        if isinstance(cause, ValueError) or type(cause).__name__ == "MisconfigurationException":
            # The constructor refused a value of the config: its own words, on one line.
            from quadra_ad.deploy.runners import first_line

            raise ConfigError(f"{at_fault}: {first_line(cause)} (check the values under '{at_fault}')") from error
        raise


def _key_at_fault(error: InstantiationException, key: str) -> str:
    """The config path of the node that failed (hydra's ``full_key``: a nested node, such as a
    callback's, rather than the whole ``key``); ``key`` when it names none."""
    found = re.search(r"full_key: (\S+)", str(error))
    return found.group(1) if found else key
