"""A Hydra config source that serves a folder of experiment files as the ``experiment`` group.

Hydra maps a group name to a folder of the same name under each search-path root. Our
experiments live in a folder called ``experiments/`` (ours, and one in the user's working
directory), so this source exposes ``<folder>/a/b.yaml`` as ``experiment/a/b``.

Why a plugin and not stock Hydra (``hydra.searchpath`` plus an ``experiment/`` group folder),
checked with hydra-core 1.3.8:

- a stock group is a folder named after the group, so the README's ``./experiments/<name>.yaml``
  (plural, in the working directory) could not be ``experiment=<name>``;
- ``hydra.searchpath`` roots come after the primary config folder, so a shipped experiment wins
  over the user's file of the same name, where the README promises the opposite;
- Hydra lists a group's options one folder level at a time, so tab completion of
  ``experiment=`` offers nothing for nested names (``base/anomaly/padim``). :meth:`list` here
  gives every experiment, at any depth, as one option of the group.

``--list experiment`` and the did-you-mean line come from :mod:`quadra_ad.checks.command_line`.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from quadra_ad.config.locations import experiment_dirs

GROUP = "experiment"
SCHEME = "experiments"


class ExperimentFolderSource(ConfigSource):
    """Serves ``<folder>/**.yaml`` under the ``experiment`` group and nothing else."""

    def __init__(self, provider: str, path: str) -> None:
        if "://" not in path:
            path = f"{self.scheme()}://{path}"
        super().__init__(provider=provider, path=path)

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _folder_path(self, config_path: str) -> Path | None:
        """Translate ``experiment/x`` into ``<folder>/x``; None for anything outside the group."""
        parts = [p for p in config_path.split("/") if p]
        if not parts or parts[0] != GROUP:
            return None
        return Path(self.path).joinpath(*parts[1:])

    def load_config(self, config_path: str) -> ConfigResult:
        folder_path = self._folder_path(self._normalize_file_name(config_path))
        if folder_path is None or not folder_path.is_file():
            raise ConfigLoadError(f"Config not found : {config_path}")
        text = folder_path.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(OmegaConf.load(folder_path)),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=ConfigSource._get_header_dict(text[:512]),
        )

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return self.available()
        folder_path = self._folder_path(config_path)
        return folder_path is not None and folder_path.is_dir()

    def is_config(self, config_path: str) -> bool:
        folder_path = self._folder_path(self._normalize_file_name(config_path))
        return folder_path is not None and folder_path.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path.strip("/") == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) and self.available() else []
        folder_path = self._folder_path(config_path)
        if folder_path is None or not folder_path.is_dir():
            return []
        if config_path.strip("/") == GROUP:
            # The whole group as one flat list of options, sub-folders included: what completion,
            # --help and glob() sweeps offer for experiment=.
            if results_filter == ObjectType.GROUP:
                return []
            return sorted(p.relative_to(folder_path).with_suffix("").as_posix() for p in folder_path.rglob("*.yaml"))
        files: list[str] = []
        for entry in folder_path.iterdir():
            self._list_add_result(
                files=files,
                file_path=f"{config_path.rstrip('/')}/{entry.name}",
                file_name=entry.name,
                results_filter=results_filter,
            )
        return sorted(set(files))


class ExperimentSearchPath(SearchPathPlugin):
    """Adds every experiment folder (user folders first) to Hydra's search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in experiment_dirs():
            search_path.append(provider="quadra_ad-experiments", path=f"{SCHEME}://{folder}")


def register_experiment_sources() -> None:
    """Make Hydra aware of the experiment folders; safe to call more than once."""
    plugins = Plugins.instance()
    plugins.register(ExperimentFolderSource)
    plugins.register(ExperimentSearchPath)
