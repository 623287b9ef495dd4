"""Our presets for Hydra's launchers, under the plugins' own names (``hydra/launcher=joblib``,
``submitit_local``, ``submitit_slurm``).

They are the plugins' own config classes with our defaults, stored in Hydra's ConfigStore over
the plugins' entries: typed and checked by the plugins' schemas, and no YAML file of the same name
(which Hydra would match against the schema with a deprecation warning in every job process).
Each plugin's config module is imported first, so its own registration cannot come after ours.
A plugin that is not installed is skipped (``check_plugins`` says what to install when asked for).
"""

from hydra.core.config_store import ConfigStore

GROUP = "hydra/launcher"


def launcher_presets() -> dict[str, object]:
    """``{name: config node}`` for every installed launcher plugin we ship a preset for."""
    presets: dict[str, object] = {}
    try:
        from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    except ImportError:
        pass
    else:
        # Two jobs at a time: each training already uses several threads; more jobs than that
        # mostly share the same cores (scripts/sweep_benchmark.py).
        presets["joblib"] = JobLibLauncherConf(n_jobs=2)
    try:
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:
        pass
    else:
        presets["submitit_local"] = LocalQueueConf(timeout_min=60, gpus_per_node=0, name="${core.name}")
        # One GPU node slice per job, named after the experiment; array_parallelism bounds a big sweep.
        presets["submitit_slurm"] = SlurmQueueConf(timeout_min=240, cpus_per_task=8, gpus_per_node=1, mem_gb=32,
                                                   name="${core.name}", array_parallelism=16)
    return presets


def register_launcher_presets() -> None:
    """Store our presets over the plugins' entries; safe to call more than once."""
    store = ConfigStore.instance()
    for name, node in launcher_presets().items():
        store.store(group=GROUP, name=name, node=node, provider="quadra_ad")
