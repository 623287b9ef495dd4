"""Locations of the shipped config tree and of the experiment folders Hydra searches.

In a source checkout the configs sit at the repository root (``configs/``, ``experiments/``);
in an installed wheel they are packaged as ``quadra_ad/configs`` and ``quadra_ad/experiments``.
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: Environment variable naming one more folder of user experiment files.
EXPERIMENTS_DIR_ENV = "QUADRA_AD_EXPERIMENTS_DIR"


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def config_dir() -> Path:
    """Root of the shipped Hydra config tree (holds ``config.yaml``)."""
    return _first_existing(PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs")


def package_experiments_dir() -> Path:
    """Folder of the experiments that ship with quadra_ad."""
    return _first_existing(PACKAGE_DIR / "experiments", PACKAGE_DIR.parent / "experiments")


def experiment_dirs() -> list[Path]:
    """Experiment folders in lookup order: the user's first, so they can shadow ours.

    1. ``./experiments`` of the directory quadra-ad runs from,
    2. the folder named by ``$QUADRA_AD_EXPERIMENTS_DIR``,
    3. the experiments shipped with the package.
    """
    dirs: list[Path] = []
    local = Path.cwd() / "experiments"
    if local.is_dir():
        dirs.append(local.resolve())
    extra = os.environ.get(EXPERIMENTS_DIR_ENV)
    if extra:
        dirs.append(Path(extra).expanduser().resolve())
    shipped = package_experiments_dir().resolve()
    if shipped not in dirs:
        dirs.append(shipped)
    return dirs
