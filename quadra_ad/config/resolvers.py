"""OmegaConf resolvers used by the shipped configs.

``${cwd:}`` is the directory quadra-ad was started from. Unlike ``${hydra:runtime.cwd}`` it also
resolves outside a Hydra run (compose API, tests), so the same configs work everywhere.
"""

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register our resolvers once; later calls are no-ops."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", lambda: os.getcwd())
