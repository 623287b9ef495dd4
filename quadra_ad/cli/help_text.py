"""The text of ``quadra-ad --help``: the template in ``configs/hydra/default.yaml`` (``help:``),
its config groups and the config the given overrides compose.

Not Hydra's own ``--help``: that asks its config repository once per group and per option and
copies the whole config store each time (1.7 s for our ~160 groups and options, most of it before
the first line), and it lists Quadra's names for our options as groups of their own.
"""

import string
from collections.abc import Sequence

from omegaconf import OmegaConf

from quadra_ad.checks.command_line import compose_checked, group_options, selectable_groups
from quadra_ad.config.locations import config_dir


def config_groups_text() -> str:
    """One ``group: option, option`` line per group a user picks from (what ``--list`` offers)."""
    return "".join(f"{group}: {', '.join(group_options(group))}\n" for group in sorted(selectable_groups()))


def help_text(overrides: Sequence[str]) -> str:
    # Under ``hydra`` as Hydra places it, so the template's ${hydra.help.header/footer} resolve.
    hydra_node = OmegaConf.create({"hydra": OmegaConf.load(config_dir() / "hydra" / "default.yaml")})
    template = string.Template(hydra_node.hydra.help.template)
    return template.safe_substitute(
        APP_CONFIG_GROUPS=config_groups_text(),
        CONFIG=OmegaConf.to_yaml(compose_checked(overrides)),
        FLAGS_HELP="",
        HYDRA_CONFIG_GROUPS="",
    )
