"""The values of the keys users set, checked before anything is built: types and ranges.

One table, :data:`RULES`, says what each key takes; :func:`validate_values` checks a composed
config against it and raises one ConfigError naming every key at fault with what it takes.
Keys a config does not have are skipped (an inference run has no trainer). Missing mandatory
values (``???``) are reported the way the instantiation reports them.
"""

import difflib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from quadra_ad.config.device_fallback import STRATEGIES, process_count
from quadra_ad.config.instantiation import missing_value_error
from quadra_ad.config.locations import config_dir
from quadra_ad.errors import ConfigError
from quadra_ad.evaluation.thresholds import (
    GOOD_IMAGE_RULES,
    IMAGE_RULES,
    TRAINING_THRESHOLD_TYPES,
    threshold_key_mistakes,
)
from quadra_ad.models.backbone_layers import BACKBONE_FEATURES, unknown_layer_message

#: The deepest feature map of the supported backbones is 1/32 of the input.
MIN_INPUT_SIDE = 32


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, ListConfig))


def _crop_box(value: Any) -> bool:
    if not (_sequence(value) and len(value) == 4 and all(_whole(v) for v in value)):
        return False
    x1, y1, x2, y2 = value
    return 0 <= x1 < x2 and 0 <= y1 < y2


def _devices(value: Any) -> bool:
    return (_whole(value) and value >= 1) or value == "auto" or (_sequence(value) and all(_whole(v) for v in value))


def _strategy(value: Any) -> bool:
    return value in STRATEGIES


def distributed_mistakes(cfg: DictConfig) -> list[str]:
    """What is wrong in how ``trainer.strategy``, ``trainer.devices`` and ``trainer.accelerator`` go together."""
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto", throw_on_missing=False)
    if not isinstance(strategy, str) or not _strategy(strategy):
        return []  # reported by the rule for the value itself
    devices = OmegaConf.select(cfg, "trainer.devices", default=1, throw_on_missing=False)
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto", throw_on_missing=False)
    num_nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1, throw_on_missing=False)
    processes = process_count(devices)
    if accelerator == "cpu" and _sequence(devices):
        return [f"trainer.devices={_shown(devices)} (on CPU it takes the number of processes, e.g. 2)"]
    if strategy == "auto" and processes is not None and processes > 1:
        return [f"trainer.devices={_shown(devices)} needs trainer.strategy=ddp (one process per device; on CPU "
                f"they talk through gloo), e.g. trainer=ddp_cpu or trainer=ddp for GPUs"]
    if strategy != "auto" and processes == 1 and num_nodes in (None, 1):
        return [f"trainer.strategy={strategy} with trainer.devices=1 starts a single process: set trainer.devices "
                f"to the number of processes (e.g. 2), or trainer.strategy=auto"]
    if strategy != "auto" and OmegaConf.select(cfg, "callbacks.batch_size_finder.enabled", default=False):
        return [f"callbacks.batch_size_finder.enabled=true (Lightning's batch size finder does not run under "
                f"trainer.strategy={strategy}; set datamodule.train_batch_size yourself)"]
    return []


def _strategy_hint(value: Any) -> str:
    close = difflib.get_close_matches(str(value), STRATEGIES, n=1) if isinstance(value, str) else []
    return f"; did you mean {close[0]}?" if close else ""


#: Lightning accelerators a run can ask for (``gpu`` and ``cuda`` need a GPU on the machine).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
#: Kept in step with quadra_ad/export/writers.py (which imports torch; a test compares them).
EXPORT_TYPES = ("torchscript", "onnx", "openvino")
MIN_ONNX_OPSET = 7
#: Kept in step with quadra_ad/models/patchcore.py (a test compares them).
CORESET_SAMPLERS = ("fast", "anomalib")
#: URI schemes MLflow's tracking store takes (its registry refuses others after the training).
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def _run_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and not any(c in value for c in "/\\")


def _layer_list(value: Any) -> bool:
    # Names for CNN backbones (layer2), block indices for the ViT ones (general_ad, rad, l2bt).
    return (_sequence(value) and len(value) > 0
            and all((isinstance(v, str) and v != "") or _whole(v) for v in value))


def _tracking_uri(value: Any) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    scheme, separator, _ = value.partition("://")
    scheme = scheme.split("+", 1)[0]  # postgresql+psycopg2://
    return not separator or scheme in TRACKING_SCHEMES or len(scheme) == 1  # C://… on Windows


def _one_of(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class Rule:
    """``key`` takes values for which ``accepts`` is true, described for the user by ``takes``."""

    key: str
    accepts: Callable[[Any], bool]
    takes: str
    nullable: bool = False


RULES = (
    Rule("core.seed", _whole, "a whole number"),
    Rule("core.name", _run_name, "a non-empty name without / or \\ (it names the run folder and the MLflow experiment)"),
    Rule("trainer.accelerator", lambda v: v in ACCELERATORS, f"one of {', '.join(ACCELERATORS)}"),
    Rule("trainer.deterministic", lambda v: isinstance(v, bool) or v == "warn", "true, false or warn"),
    Rule("trainer.max_epochs", lambda v: _whole(v) and v >= 1, "a whole number >= 1", nullable=True),
    Rule("trainer.check_val_every_n_epoch", lambda v: _whole(v) and v >= 1, "a whole number >= 1", nullable=True),
    Rule("trainer.num_sanity_val_steps", lambda v: _whole(v) and v >= -1, "a whole number >= -1", nullable=True),
    Rule("trainer.gradient_clip_val", lambda v: _number(v) and v >= 0, "a number >= 0", nullable=True),
    Rule("trainer.log_every_n_steps", lambda v: _whole(v) and v >= 1, "a whole number >= 1", nullable=True),
    Rule("trainer.devices", _devices, "a whole number >= 1, a list of device indices or auto"),
    Rule("trainer.strategy", _strategy, "auto (one process) or ddp (trainer.devices processes; ddp_spawn and "
         "ddp_fork are not supported)"),
    Rule("datamodule.train_batch_size", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    Rule("datamodule.test_batch_size", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    Rule("datamodule.num_workers", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    Rule("datamodule.limit_data", lambda v: _whole(v) and v >= 1, "a whole number >= 1", nullable=True),
    Rule("datamodule.val_split", lambda v: v in ("auto", "same_as_test", "from_test", "folder"),
         "auto, same_as_test, from_test or folder"),
    Rule("datamodule.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    Rule("datamodule.good_number", lambda v: _whole(v) and 0 <= v <= 9, "a digit from 0 to 9"),
    Rule("datamodule.crop_area", _crop_box, "[x1, y1, x2, y2] whole numbers with 0 <= x1 < x2 and 0 <= y1 < y2",
         nullable=True),
    Rule("transforms.input_size",
         lambda v: _sequence(v) and len(v) == 2 and all(_whole(s) and s >= MIN_INPUT_SIDE for s in v),
         f"[height, width], whole numbers >= {MIN_INPUT_SIDE} (the backbones' deepest features are 1/32 of it)",
         nullable=True),
    Rule("transforms.mean", lambda v: _sequence(v) and len(v) == 3 and all(_number(m) for m in v),
         "three numbers, one per RGB channel", nullable=True),
    Rule("transforms.std", lambda v: _sequence(v) and len(v) == 3 and all(_number(s) and s > 0 for s in v),
         "three numbers > 0, one per RGB channel", nullable=True),
    Rule("model.coreset_sampling_ratio", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    Rule("model.coreset_seed", _whole, "a whole number, or null for the run's seed", nullable=True),
    Rule("model.num_neighbors", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    Rule("model.n_features", lambda v: _whole(v) and v >= 1, "a whole number >= 1", nullable=True),
    Rule("task.manual_image_threshold", _number, "a number (a raw score, or normalised)", nullable=True),
    Rule("task.manual_pixel_threshold", _number, "a number (a raw anomaly-map value)", nullable=True),
    Rule("task.manual_threshold_normalized", lambda v: isinstance(v, bool), "true or false"),
    Rule("task.custom_normalized_threshold", _number, "a number (0.5 = the training threshold)", nullable=True),
    Rule("task.target_fpr", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("task.good_percentile", lambda v: _number(v) and 0 < v <= 100, "a number in (0, 100]"),
    Rule("task.threshold_rule", lambda v: v in IMAGE_RULES, _one_of(IMAGE_RULES)),
    Rule("task.training_threshold_type", lambda v: v in TRAINING_THRESHOLD_TYPES, _one_of(TRAINING_THRESHOLD_TYPES)),
    Rule("export.types", lambda v: _sequence(v) and all(t in EXPORT_TYPES for t in v),
         f"a list of {', '.join(EXPORT_TYPES)} such as [torchscript, onnx] (or [] for none)", nullable=True),
    Rule("export.onnx_opset", lambda v: _whole(v) and v >= MIN_ONNX_OPSET,
         f"a whole number >= {MIN_ONNX_OPSET}, or null for the exporter's default", nullable=True),
    Rule("model.layers", _layer_list, "a non-empty list of layer names, e.g. [layer2, layer3]", nullable=True),
    Rule("model.coreset_sampler", lambda v: v in CORESET_SAMPLERS, " or ".join(CORESET_SAMPLERS)),
    Rule("logger.mlflow.tracking_uri", _tracking_uri,
         f"an MLflow URI: {', '.join(s + '://' for s in TRACKING_SCHEMES)}… or a folder path", nullable=True),
)

#: Config groups whose mandatory values (``???``) must be set before a run starts.
NODES_WITH_MANDATORY_VALUES = ("datamodule", "task", "model", "trainer")


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def layer_mistakes(cfg: DictConfig) -> list[str]:
    """``model.layers`` / ``model.layer`` names the backbone does not have; ``model.n_features``
    above what PaDiM's layers give."""
    backbone = _select(cfg, "model.backbone")
    features = BACKBONE_FEATURES.get(backbone) if isinstance(backbone, str) else None
    if features is None:
        return []
    mistakes = []
    for key in ("model.layers", "model.layer"):
        if message := unknown_layer_message(key, _select(cfg, key), backbone, list(features)):
            mistakes.append(message)
    layers = _select(cfg, "model.layers")
    n_features = _select(cfg, "model.n_features")
    if (not mistakes and str(_select(cfg, "model._target_", "")).endswith(".Padim") and _whole(n_features)
            and _layer_list(layers) and n_features > (most := sum(features[name] for name in layers))):
        mistakes.append(f"model.n_features={n_features}: layers {_shown(layers)} of {backbone} give {most} features; "
                        f"take at most {most}, or null for PaDiM's default")
    return mistakes


@functools.cache
def _training_task_defaults() -> DictConfig:
    return OmegaConf.load(config_dir() / "task" / "anomaly_training.yaml")


def threshold_mistakes(cfg: DictConfig) -> list[str]:
    """Threshold keys that contradict ``task.threshold_rule`` or that it would ignore, as
    :func:`~quadra_ad.evaluation.thresholds.threshold_key_mistakes` words them for the training
    task too, checked before torch is imported."""
    rule = _select(cfg, "task.threshold_rule")
    if rule is None:
        return []
    defaults = _training_task_defaults()
    changed = {key: value for key in GOOD_IMAGE_RULES
               if (value := _select(cfg, f"task.{key}")) is not None and value != defaults.get(key)}
    return threshold_key_mistakes(rule, _select(cfg, "task.manual_image_threshold"),
                                  _select(cfg, "task.manual_threshold_normalized"), changed)[:1]


@functools.cache
def top_level_sections() -> tuple[str, ...]:
    """The sections a composed config may have at its top: the groups of the root config.yaml's
    defaults list and its own keys."""
    root = OmegaConf.load(config_dir() / "config.yaml")
    names = {str(key) for key in root if key != "defaults"}
    for entry in root.get("defaults", []):
        group = (next(iter(entry)) if isinstance(entry, DictConfig) else str(entry)).split()[-1].split("@")[0]
        if group not in ("_self_", "experiment") and not _fills_another_package(group):
            names.add(group)
    return tuple(sorted(names))


def _fills_another_package(group: str) -> bool:
    """A group whose files say ``# @package <other>`` (augmentation fills transforms)."""
    for path in sorted((config_dir() / group).glob("*.yaml"))[:1]:
        header = path.read_text(encoding="utf-8").split("\n", 1)[0]
        return header.startswith("# @package") and header.split()[-1] != group
    return False


def unknown_section_mistakes(cfg: DictConfig) -> list[str]:
    """A top-level key no group fills (``modle:`` in an experiment file): Hydra merges it silently
    and nothing ever reads it."""
    known = top_level_sections()
    mistakes = []
    for key in cfg:
        if str(key) in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        mistakes.append(f"'{key}' is not a section of the config (an experiment file or a +{key} override adds it): "
                        f"{hint}the sections are {', '.join(known)}")
    return mistakes[:1]


#: Checks of keys that must agree with each other, after each key's own value passed its rule.
CONSISTENCY_CHECKS = (layer_mistakes, threshold_mistakes,
                      unknown_section_mistakes)


def _wrong_values(cfg: DictConfig) -> list[str]:
    """Each key whose own value breaks its rule (or, when none does, how the trainer's keys clash)."""
    wrong = []
    for rule in RULES:
        if OmegaConf.select(cfg, rule.key, default="<absent>", throw_on_missing=False) == "<absent>":
            continue
        value = OmegaConf.select(cfg, rule.key, throw_on_missing=False)
        if value is None and rule.nullable:
            continue
        if not rule.accepts(value):
            hint = _strategy_hint(value) if rule.key == "trainer.strategy" else ""
            wrong.append(f"{rule.key}={_shown(value)} (takes {rule.takes}{hint})")
    return wrong or distributed_mistakes(cfg)


def _missing_values(cfg: DictConfig) -> list[ConfigError]:
    """The first mandatory value (``???``) left unset in each node that has them."""
    return [error for node in NODES_WITH_MANDATORY_VALUES if (error := missing_value_error(cfg, node))]


def value_mistakes(cfg: DictConfig) -> list[str]:
    """Every mistake :func:`validate_values` finds, one line each, where it raises the first kind
    only: for reporting them together with others (a Quadra file's keys without a counterpart)."""
    lines = [f"{line}: fix the value on the command line or in the experiment file" for line in _wrong_values(cfg)]
    if not lines:
        lines = [mistakes[0] for check in CONSISTENCY_CHECKS if (mistakes := check(cfg))]
    return lines + [str(error) for error in _missing_values(cfg)]


def validate_values(cfg: DictConfig) -> None:
    """Raise one ConfigError naming every key whose value the run cannot use, and what it takes."""
    missing = _missing_values(cfg)
    wrong = _wrong_values(cfg)
    if wrong:
        also = f"; and {missing[0]}" if missing else ""
        raise ConfigError(f"{'; '.join(wrong)}: fix {'these values' if len(wrong) > 1 else 'the value'} on the "
                          f"command line or in the experiment file{also}")
    for check in CONSISTENCY_CHECKS:
        if mistakes := check(cfg):
            raise ConfigError(mistakes[0])
    if missing:
        raise missing[0]
