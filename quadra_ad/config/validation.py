"""The values of the keys users set, checked before anything is built: types and ranges.

One table, :data:`RULES`, says what each key takes; :func:`validate_values` checks a composed
config against it and raises one ConfigError naming every key at fault with what it takes.
Keys a config does not have are skipped (an inference run has no trainer). Missing mandatory
values (``???``) are reported the way the instantiation reports them.
"""

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from quadra_ad.config.instantiation import missing_value_error
from quadra_ad.errors import ConfigError

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


#: ``trainer.strategy`` values a run supports. ``ddp`` is Lightning's DDP started from the command
#: line (one process per device; gloo on CPU); the spawn/fork variants cannot hand the collected
#: scores back to the run (see quadra_ad/tasks/anomaly_training.py).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def _strategy(value: Any) -> bool:
    return value in STRATEGIES


def _process_count(devices: Any) -> int | None:
    """How many processes ``trainer.devices`` asks for on one machine (None: Lightning decides)."""
    if _whole(devices):
        return devices
    if _sequence(devices):
        return len(devices)
    return None


def distributed_mistakes(cfg: DictConfig) -> list[str]:
    """What is wrong in how ``trainer.strategy``, ``trainer.devices`` and ``trainer.accelerator`` go together."""
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto", throw_on_missing=False)
    if not isinstance(strategy, str) or not _strategy(strategy):
        return []  # reported by the rule for the value itself
    devices = OmegaConf.select(cfg, "trainer.devices", default=1, throw_on_missing=False)
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto", throw_on_missing=False)
    num_nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1, throw_on_missing=False)
    processes = _process_count(devices)
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


@dataclass(frozen=True)
class Rule:
    """``key`` takes values for which ``accepts`` is true, described for the user by ``takes``."""

    key: str
    accepts: Callable[[Any], bool]
    takes: str
    nullable: bool = False


RULES = (
    Rule("core.seed", _whole, "a whole number"),
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
    Rule("task.threshold_rule", lambda v: v in ("f1", "manual", "target_fpr", "good_percentile"),
         "f1, manual, target_fpr or good_percentile"),
    Rule("task.training_threshold_type", lambda v: v in ("image", "pixel"), "image or pixel"),
    Rule("export.types", lambda v: _sequence(v) and all(isinstance(t, str) for t in v),
         "a list such as [torchscript, onnx] (or [] for none)", nullable=True),
)

#: Config groups whose mandatory values (``???``) must be set before a run starts.
NODES_WITH_MANDATORY_VALUES = ("datamodule", "task", "model", "trainer")


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def validate_values(cfg: DictConfig) -> None:
    """Raise one ConfigError naming every key whose value the run cannot use, and what it takes."""
    missing = [error for node in NODES_WITH_MANDATORY_VALUES if (error := missing_value_error(cfg, node))]
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
    if not wrong:
        wrong = distributed_mistakes(cfg)
    if wrong:
        also = f"; and {missing[0]}" if missing else ""
        raise ConfigError(f"{'; '.join(wrong)}: fix {'these values' if len(wrong) > 1 else 'the value'} on the "
                          f"command line or in the experiment file{also}")
    if missing:
        raise missing[0]
