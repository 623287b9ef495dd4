"""The run folder a command will make: Hydra makes it before anything of ours runs, and a folder it
cannot make ends in its traceback. Checked here first, in one line, before the run starts."""

import os
from pathlib import Path

from quadra_ad.config.locations import config_dir
from quadra_ad.errors import ConfigError


def run_folder_setting(args: list[str]) -> tuple[str, str]:
    """The key that places this command's run folder and its value as given (interpolations unresolved)."""
    key = "hydra.sweep.dir" if any(arg in ("-m", "--multirun") for arg in args) else "hydra.run.dir"
    for arg in args:
        if arg.startswith(f"{key}="):
            return key, arg.split("=", 1)[1]
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(config_dir() / "hydra" / "default.yaml"), resolve=False)
    return key, str(defaults[key.split(".")[1]]["dir"])


def check_run_folder_can_be_made(args: list[str]) -> None:
    """:class:`ConfigError` when the folder the run folders go into is a file or is not writable."""
    key, value = run_folder_setting(args)
    fixed = Path(value.split("${", 1)[0] or ".")  # the part that does not depend on the time or the config
    if not value.split("${", 1)[0].endswith("/") and "${" in value:
        fixed = fixed.parent
    folder = fixed if fixed.is_absolute() else Path.cwd() / fixed
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = f"or put the run folders elsewhere with {key}=<folder>"
    if not existing.is_dir():
        raise ConfigError(f"cannot make the run folder in '{folder}': '{existing}' is a file, not a folder; move it "
                          f"away {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot make the run folder in '{folder}': '{existing}' is not writable; give write "
                          f"permission on it {fix}")
