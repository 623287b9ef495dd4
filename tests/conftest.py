"""Shared fixtures: tiny generated datasets and a fast training config; a session home in a
temporary folder, and a check that the suite left nothing in the user's ``~/.quadra_ad``."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: The user's home, before this session replaces it (the guard at the end looks there).
REAL_HOME = Path(os.path.expanduser("~"))
#: Where quadra-ad keeps what it generates or fetches for a user (the digits and MNIST datasets …).
USERS_QUADRA_AD = REAL_HOME / ".quadra_ad"


def _users_pip_config() -> Path | None:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or REAL_HOME / ".config")
    return next((path for path in (config_home / "pip" / "pip.conf", REAL_HOME / ".pip" / "pip.conf")
                 if path.is_file()), None)


def _keep_tests_out_of_the_home() -> list[str]:
    """Everything a test writes under ``~`` lands in a temporary folder of this session
    (subprocesses inherit it): a config default such as ``~/.quadra_ad/datasets/digits``, the
    store template and the models:/ cache (XDG_CACHE_HOME), MLflow's and matplotlib's files.
    Returns the folders made, to remove at the end."""
    pip_config = _users_pip_config()
    if pip_config is not None:  # the wheel and venv tests install with the user's index settings
        os.environ.setdefault("PIP_CONFIG_FILE", str(pip_config))
    os.environ["HOME"] = tempfile.mkdtemp(prefix="quadra_ad_test_home_")
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="quadra_ad_test_cache_")
    os.environ["QUADRA_AD_MODEL_CACHE"] = os.path.join(os.environ["XDG_CACHE_HOME"], "models")
    return [os.environ["HOME"], os.environ["XDG_CACHE_HOME"]]


def _users_quadra_ad_paths(folder: Path = USERS_QUADRA_AD, depth: int = 3) -> set[Path]:
    """``folder`` and the paths under it down to ``depth`` (a dataset's own files need not be listed)."""
    if not folder.is_dir():
        return {folder} if folder.exists() else set()
    found = {folder}
    if depth > 0:
        for entry in folder.iterdir():
            found |= _users_quadra_ad_paths(entry, depth - 1) if not entry.is_symlink() else {entry}
    return found


# Before the imports below: no module may read the home before it is replaced.
_SESSION_FOLDERS = _keep_tests_out_of_the_home()
_USERS_QUADRA_AD_BEFORE = _users_quadra_ad_paths()
# Keep every test offline: the hub must never be asked for weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quadra_ad.checks.composition import compose_config  # noqa: E402 - after the offline settings above
from quadra_ad.testing.synthetic import write_synthetic_dataset  # noqa: E402 - after the offline settings above

#: Session-wide training runs, registered once here so that every folder shares them.
pytest_plugins = ["tests.trained_runs"]

IMAGE_SIZE = 32

_CREATED_IN_USERS_HOME: list[Path] = []


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run when a test wrote into the user's ``~/.quadra_ad`` despite the session home
    (a path that does not go through ``~``, e.g. one built from the password database); remove
    the session's home and cache."""
    _CREATED_IN_USERS_HOME[:] = sorted(_users_quadra_ad_paths() - _USERS_QUADRA_AD_BEFORE)
    if _CREATED_IN_USERS_HOME:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for folder in _SESSION_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter) -> None:
    if _CREATED_IN_USERS_HOME:
        terminalreporter.write_sep("=", "tests wrote into the user's home: write only under tmp_path", red=True)
        for path in _CREATED_IN_USERS_HOME[:5]:
            terminalreporter.write_line(f"created {path}", red=True)


@pytest.fixture(scope="session")
def segmentation_dataset(tmp_path_factory) -> Path:
    """Train/test folders with masks and a few unknown images."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("segmentation"), n_train=12, n_test_good=6, n_test_defect=6,
        size=IMAGE_SIZE, defect_contrast=0.3, n_unknown=3,
    )


@pytest.fixture(scope="session")
def classification_dataset(tmp_path_factory) -> Path:
    """Train/test folders without ground_truth masks."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("classification"), n_train=12, n_test_good=6, n_test_defect=6,
        size=IMAGE_SIZE, with_masks=False, defect_contrast=0.3,
    )


def fast_overrides(data_path: Path, tracking_dir: Path | None, *extra: str) -> list[str]:
    """Overrides that keep a training run to a few seconds on two CPU cores."""
    overrides = [
        f"datamodule.data_path={data_path}",
        "backbone.pre_trained=false",
        f"transforms.input_size=[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "datamodule.num_workers=0",
        "datamodule.train_batch_size=8",
        "datamodule.test_batch_size=8",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
    ]
    if tracking_dir is None:
        overrides.append("~logger")
    else:
        overrides.append(f"logger.mlflow.tracking_uri=sqlite:///{tracking_dir}/mlflow.db")
    return overrides + list(extra)


def training_config(experiment: str, data_path: Path, tracking_dir: Path | None, *extra: str):
    """Compose ``experiment`` with the fast overrides."""
    return compose_config([f"experiment={experiment}", *fast_overrides(data_path, tracking_dir, *extra)])
