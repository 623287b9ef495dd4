"""Quadra's anomaly-detection experiment files, run as they are.

A Quadra experiment composes here because our groups also answer to Quadra's option names
(``datamodule: base/anomaly``, ``model: anomalib/padim``, ``task: anomalib/padim``,
``transforms: default_resize``, ``trainer: lightning_gpu``, ``callbacks: default_anomalib``;
``optimizer``/``scheduler``/``loss`` exist only to be set to null). Its keys are then
translated here, on the composed config, before any check or instantiation:

- a key with the same meaning under another name moves there (``model.model.backbone`` →
  ``backbone.name``), and every interpolation that pointed at the old place follows it;
- a key that only configured what quadra_ad does by itself (Quadra's metric callbacks, its
  post-processing, ``task.module_function``) is dropped when it holds Quadra's value;
- anything else is a :class:`ConfigErrors` with one line per key naming ours, or saying there
  is none. README "Coming from Quadra" has the table.
"""

import functools
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from quadra_ad.errors import ConfigErrors

_MISSING = object()

#: Our inference task (Quadra's AnomalibEvaluation; the pre-run checks read the card for it).
INFERENCE_TASK = "quadra_ad.tasks.AnomalyInferenceTask"

#: Quadra's task classes and ours.
TASK_TARGETS = {
    "quadra.tasks.anomaly.AnomalibDetection": "quadra_ad.tasks.AnomalyTrainingTask",
    "quadra.tasks.AnomalibDetection": "quadra_ad.tasks.AnomalyTrainingTask",
    "quadra.tasks.anomaly.AnomalibEvaluation": INFERENCE_TASK,
    "quadra.tasks.AnomalibEvaluation": INFERENCE_TASK,
}

#: Callbacks of Quadra's ``default_anomalib`` that configure what quadra_ad always does itself.
BUILT_IN_CALLBACKS = {
    "score_normalization": "scores are normalised with the image threshold in every run",
    # Quadra before 2.0: the same normalisation under its anomalib name (0.5 = the threshold).
    "min_max_normalization": "scores are normalised with the image threshold in every run",
    "post_processing_configuration": "thresholds: task.threshold_rule",
    "metrics": "image and pixel metrics are always computed",
    "upload_ckpts_as_artifact": "the best checkpoint is always an artifact of the MLflow run",
    "progress_bar": "trainer.enable_progress_bar",
    "lightning_trainer_setup": "trainer.log_every_n_steps",
}

#: Quadra's names for the score normalisation every run here does.
NORMALISATION_CALLBACKS = ("score_normalization", "min_max_normalization")

#: Lightning 1.x Trainer arguments Quadra's files still carry, with the value that means
#: "not used" (dropped then); any other value has no Lightning 2 equivalent, or this one.
LIGHTNING_1_TRAINER_KEYS: dict[str, tuple[tuple, str]] = {
    "amp_backend": (("native", None), "trainer.precision (e.g. 16-mixed)"),
    "auto_lr_find": ((False, None), "none (no learning-rate finder here)"),
    "auto_scale_batch_size": ((False, None), "callbacks.batch_size_finder.enabled=true"),
    "auto_select_gpus": ((False, None), "trainer.devices"),
    "ipus": ((None, 0), "none (no IPU support)"),
    "tpu_cores": ((None, 0), "none (no TPU support)"),
    "move_metrics_to_cpu": ((False, None), "none (metrics are collected on the CPU)"),
    "multiple_trainloader_mode": (("max_size_cycle", None), "none"),
    "replace_sampler_ddp": ((True, None), "trainer.use_distributed_sampler"),
    "track_grad_norm": ((-1, None), "none (no gradient-norm logging)"),
    "resume_from_checkpoint": ((None,), "none (training starts from the model's weights)"),
}


def _get(cfg: DictConfig, key: str, default: Any = _MISSING) -> Any:
    """The raw value at ``key`` (interpolations left as written), or ``default``."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return default
        node = node._get_node(part)
    return node if isinstance(node, (DictConfig, ListConfig)) else node._value()


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    return value


class _Translation:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.mistakes: list[str] = []
        #: old key → new key, for the interpolations that point at a moved key.
        self.moved: dict[str, str] = {}
        #: old key → the literal its interpolations take (dropped keys someone still refers to).
        self.frozen: dict[str, Any] = {}

    # -- primitives --------------------------------------------------------------------------
    def move(self, old: str, new: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        value = _get(self.cfg, old)
        if value is _MISSING:
            return
        OmegaConf.update(self.cfg, new, _plain(convert(value)) if not isinstance(value, str) else convert(value),
                         force_add=True, merge=False)
        self.moved[old] = new
        self.drop(old)

    def drop(self, key: str) -> None:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(self.cfg, parent) if parent else self.cfg
        if isinstance(node, DictConfig) and leaf in node:
            value = _get(self.cfg, key)
            if not isinstance(value, (DictConfig, ListConfig)) and not (isinstance(value, str) and "${" in value):
                self.frozen.setdefault(key, value)
            with open_dict(node):
                del node[leaf]

    def refuse(self, key: str, ours: str) -> None:
        self.mistakes.append(f"{key} (Quadra): {ours}")

    # -- the translation ---------------------------------------------------------------------
    def run(self) -> None:
        self._model()
        self._task()
        self._datamodule()
        self._transforms()
        self._callbacks()
        self._trainer()
        self._other_groups()
        if _get(self.cfg, "logger.mlflow.experiment_name", "x") is None:
            OmegaConf.update(self.cfg, "logger.mlflow.experiment_name", "${core.name}", merge=False)
        self._rewrite_interpolations()

    def _model(self) -> None:
        quadra_model = _get(self.cfg, "model.model")
        if isinstance(quadra_model, DictConfig):
            backbone = _get(self.cfg, "backbone", None)
            if not isinstance(backbone, DictConfig) or "name" not in backbone:
                self._restore_backbone()
            for key in list(quadra_model.keys()):
                where = f"model.model.{key}"
                if key == "name":
                    self.drop(where)
                elif key == "input_size":
                    self.move(where, "transforms.input_size")
                elif key == "backbone":
                    self.move(where, "backbone.name")
                elif key == "pre_trained":
                    self.move(where, "backbone.pre_trained")
                elif key in self.cfg.model and key != "model":
                    self.move(where, f"model.{key}")
                else:
                    self.refuse(where, f"no such setting of {self._model_name()}; its settings are model.<key> "
                                       f"({', '.join(self._model_settings())})")
            self.drop("model.model")
        dataset = _get(self.cfg, "model.dataset")
        if isinstance(dataset, DictConfig):
            # Segmentation or classification follows from the data here: masks give pixel metrics.
            self.drop("model.dataset.task")
            self._tiling()
            for key in list(dataset.keys()):
                self.refuse(f"model.dataset.{key}", "no such setting here; remove it")
            self.drop("model.dataset")
        metrics = _get(self.cfg, "model.metrics")
        if isinstance(metrics, DictConfig):
            self.drop("model.metrics.image")  # every run computes AUROC, F1 (and pixel AUROC, AUPRO with masks)
            self.drop("model.metrics.pixel")
            self._threshold()
            for key in list(metrics.keys()):
                self.refuse(f"model.metrics.{key}", "no such setting here; remove it")
            self.drop("model.metrics")

    def _model_settings(self) -> list[str]:
        """What a user sets on this model (not the wiring our model configs share, not Quadra's blocks)."""
        wiring = {"pre_processor", "post_processor", "evaluator", "visualizer", "backbone", "pre_trained",
                  "model", "dataset", "metrics"}
        return [str(k) for k in self.cfg.model if not str(k).startswith("_") and k not in wiring]

    def _model_name(self) -> str:
        target = str(_get(self.cfg, "model._target_", "the model"))
        return target.rsplit(".", 1)[-1]

    def _restore_backbone(self) -> None:
        """Quadra's experiments set ``backbone: null`` and name it in ``model.model.backbone``; our
        model configs read ``backbone.*``, so the default backbone comes back to take that name."""
        from quadra_ad.config.locations import config_dir

        default = OmegaConf.load(config_dir() / "backbone" / "resnet18.yaml")
        given = _get(self.cfg, "backbone", None)  # what +backbone.<key>=... put there
        with open_dict(self.cfg):
            self.cfg.backbone = OmegaConf.merge(default, given) if isinstance(given, DictConfig) else default

    def _tiling(self) -> None:
        tiling = _get(self.cfg, "model.dataset.tiling")
        if not isinstance(tiling, DictConfig):
            return
        apply = bool(_get(self.cfg, "model.dataset.tiling.apply", False))
        if apply:
            if "tiling" not in self.cfg.model:
                self.refuse("model.dataset.tiling.apply", "tiling is not available for this model")
            else:
                self.move("model.dataset.tiling.apply", "model.tiling.enabled")
                self.move("model.dataset.tiling.tile_size", "model.tiling.tile_size")
                self.move("model.dataset.tiling.stride", "model.tiling.stride")
        unused = {"apply": (False,), "tile_size": (None,), "stride": (None,), "remove_border_count": (0,),
                  "use_random_tiling": (False,), "random_tile_count": None}
        for key in list(tiling.keys()):
            value = _get(self.cfg, f"model.dataset.tiling.{key}")
            if key in unused and (unused[key] is None or value in unused[key] or not apply):
                continue
            self.refuse(f"model.dataset.tiling.{key}", "no such tiling setting here (model.tiling.enabled, "
                                                       "model.tiling.tile_size, model.tiling.stride)")
        self.drop("model.dataset.tiling")

    def _threshold(self) -> None:
        threshold = _get(self.cfg, "model.metrics.threshold")
        if not isinstance(threshold, DictConfig):
            return
        method = _get(self.cfg, "model.metrics.threshold.method", "adaptive")
        if method == "manual":
            OmegaConf.update(self.cfg, "task.threshold_rule", "manual", force_add=True)
            OmegaConf.update(self.cfg, "task.manual_threshold_normalized", False, force_add=True)
        elif method != "adaptive":
            self.refuse("model.metrics.threshold.method", f"'{method}' is not a rule here; task.threshold_rule="
                                                          f"f1|manual|target_fpr|good_percentile")
        self.drop("model.metrics.threshold.method")
        self.move("model.metrics.threshold.manual_image", "task.manual_image_threshold")
        self.move("model.metrics.threshold.manual_pixel", "task.manual_pixel_threshold")
        for key in list(threshold.keys()):
            self.refuse(f"model.metrics.threshold.{key}", "no such setting here; see task.threshold_rule")
        self.drop("model.metrics.threshold")

    def _task(self) -> None:
        target = _get(self.cfg, "task._target_", None)
        if target in TASK_TARGETS:
            OmegaConf.update(self.cfg, "task._target_", TASK_TARGETS[target], merge=False)
        elif isinstance(target, str) and target.startswith("quadra."):
            self.refuse("task._target_", f"{target} has no counterpart here (anomaly detection only: "
                                         f"task=anomaly_training or task=anomaly_inference)")
        if _get(self.cfg, "task.run_test") is not _MISSING:
            self.move("task.run_test", "core.test_after_training")
        report = _get(self.cfg, "task.report")
        if report is not _MISSING:
            if report is False:
                self.refuse("task.report", "every run writes its report here (seconds); remove task.report")
            self.drop("task.report")
        self.drop("task.module_function")  # the model group names the model
        export = _get(self.cfg, "task.export_config")
        if isinstance(export, DictConfig):
            types = _get(self.cfg, "task.export_config.types")
            if types is not _MISSING and types is not None:
                unknown = [t for t in _plain(types) if t not in ("torchscript", "onnx", "openvino")]
                if unknown:
                    self.refuse("task.export_config.types", f"{', '.join(map(str, unknown))} is not an export type here; "
                                                            f"export.types=[torchscript, onnx, openvino]")
                self.move("task.export_config.types", "export.types")
            self.move("task.export_config.onnx.opset_version", "export.onnx_opset")
            for key, fine in (("input_shapes", (None,)), ("onnx.input_names", (None,)), ("onnx.output_names", (None,)),
                              ("onnx.dynamic_axes", (None,)), ("onnx.fixed_batch_size", (None,)),
                              ("onnx.export_params", (True,)), ("onnx.do_constant_folding", (True,)),
                              ("onnx.simplify", (True, False))):
                value = _get(self.cfg, f"task.export_config.{key}")
                if value is not _MISSING and _plain(value) not in fine:
                    self.refuse(f"task.export_config.{key}", "set by quadra_ad from the model (inputs, dynamic "
                                                             "batch, checked against the model); remove it")
                self.drop(f"task.export_config.{key}")
            onnx = _get(self.cfg, "task.export_config.onnx")
            for key in list(onnx.keys()) if isinstance(onnx, DictConfig) else []:
                self.refuse(f"task.export_config.onnx.{key}", "no such export setting here (export.onnx_opset)")
            self.drop("task.export_config.onnx")
            for key in list(export.keys()):
                self.refuse(f"task.export_config.{key}", "no such export setting here (export.types, export.onnx_opset)")
            self.drop("task.export_config")

    def _datamodule(self) -> None:
        if not isinstance(_get(self.cfg, "datamodule", None), DictConfig):
            return
        self.drop("datamodule.task")  # segmentation vs classification follows from the masks
        seed = _get(self.cfg, "datamodule.seed")
        if seed is not _MISSING:
            if seed != "${core.seed}":
                self.move("datamodule.seed", "datamodule.val_seed")
            self.drop("datamodule.seed")
        for key in ("train_transform", "val_transform", "test_transform"):
            value = _get(self.cfg, f"datamodule.{key}")
            if value is _MISSING:
                continue
            if not (isinstance(value, str) and value.startswith("${transforms.")) and value is not None:
                self.refuse(f"datamodule.{key}", "the deterministic part comes from transforms.input_size, "
                                                 "transforms.mean/std and datamodule.crop_area; random ones go in "
                                                 "transforms.train_augmentations")
            self.drop(f"datamodule.{key}")

    def _transforms(self) -> None:
        height, width = _get(self.cfg, "transforms.input_height"), _get(self.cfg, "transforms.input_width")
        if height is not _MISSING or width is not _MISSING:
            if height is _MISSING or width is _MISSING:
                self.refuse("transforms.input_height", "set both input_height and input_width, or transforms.input_size")
            else:
                OmegaConf.update(self.cfg, "transforms.input_size", [height, width], merge=False, force_add=True)
                self.moved["transforms.input_height"] = "transforms.input_size.0"
                self.moved["transforms.input_width"] = "transforms.input_size.1"
            self.drop("transforms.input_height")
            self.drop("transforms.input_width")
        self.drop("transforms.name")
        if _get(self.cfg, "task._target_", None) == INFERENCE_TASK:
            self._inference_preparation_from_the_model()
        for key in ("standard_transform", "train_transform", "val_transform", "test_transform", "normalize"):
            value = _get(self.cfg, f"transforms.{key}")
            if value is _MISSING:
                continue
            if key == "train_transform" and not (isinstance(value, str) and value.startswith("${transforms.")):
                self.refuse("transforms.train_transform", "random train-time transforms go in "
                                                          "transforms.train_augmentations (a list of albumentations)")
            self.drop(f"transforms.{key}")

    def _inference_preparation_from_the_model(self) -> None:
        """Quadra's inference files take ``transforms: default_resize`` for its defaults alone: the
        size and normalisation come from model.json here. Only a value the experiment sets itself
        (``input_height``/``input_width``, or one that differs from the defaults) may clash with it."""
        from quadra_ad.config.locations import config_dir

        defaults = OmegaConf.load(config_dir() / "transforms" / "default.yaml")
        for key in ("input_size", "mean", "std"):
            value = _get(self.cfg, f"transforms.{key}")
            if key == "input_size" and "transforms.input_height" in self.moved:
                continue
            if value is not _MISSING and _plain(value) == _plain(defaults.get(key)):
                OmegaConf.update(self.cfg, f"transforms.{key}", None, merge=False)

    def _callbacks(self) -> None:
        callbacks = _get(self.cfg, "callbacks", None)
        if not isinstance(callbacks, DictConfig):
            return
        for name in list(callbacks.keys()):
            entry = _get(self.cfg, f"callbacks.{name}")
            if not isinstance(entry, DictConfig):
                continue
            where = f"callbacks.{name}"
            if "disable" in entry:
                OmegaConf.update(self.cfg, f"{where}.enabled", not bool(_get(self.cfg, f"{where}.disable")),
                                 force_add=True)
                self.drop(f"{where}.disable")
            target = str(_get(self.cfg, f"{where}._target_", "") or "")
            if target.startswith("pytorch_lightning."):
                OmegaConf.update(self.cfg, f"{where}._target_", "lightning.pytorch." + target[len("pytorch_lightning."):])
            monitor = _get(self.cfg, f"{where}.monitor")
            if isinstance(monitor, str) and monitor.startswith("validation_"):
                OmegaConf.update(self.cfg, f"{where}.monitor", "val_" + monitor[len("validation_"):])
            if name in BUILT_IN_CALLBACKS:
                if name in NORMALISATION_CALLBACKS:
                    self._normalisation_threshold_type(where)
                self.drop(where)
            elif name == "visualizer":
                for key in ("inputs_are_normalized", "output_path", "threshold_type"):
                    self.drop(f"{where}.{key}")
                if target.startswith("quadra."):
                    OmegaConf.update(self.cfg, f"{where}._target_", "quadra_ad.callbacks.visualizer.HeatmapVisualizer")
            elif name == "model_checkpoint":
                self._merge_checkpoint(where)
            elif name == "batch_size_finder" and target.startswith("quadra."):
                OmegaConf.update(self.cfg, f"{where}._target_", "lightning.pytorch.callbacks.BatchSizeFinder")
            elif target.startswith("quadra.") or (not target and name not in self._our_callbacks()):
                if _get(self.cfg, f"{where}.enabled", True) is False:
                    self.drop(where)  # switched off: nothing to run
                else:
                    self.refuse(where, f"Quadra's {name} callback has no counterpart here; remove it or set "
                                       f"{where}.disable=true")

    def _normalisation_threshold_type(self, where: str) -> None:
        """Quadra's ``threshold_type`` says which threshold its normalised maps are cut at. Here
        both are always used as Quadra means them: image labels at the image threshold, masks at the
        pixel threshold when the training had masks (the image one otherwise), so either value is
        what runs; anything else is a typo."""
        threshold_type = _get(self.cfg, f"{where}.threshold_type", "image")
        if threshold_type not in ("image", "pixel"):
            self.refuse(f"{where}.threshold_type", f"'{threshold_type}' is neither image nor pixel")

    def _merge_checkpoint(self, where: str) -> None:
        """Quadra's ``model_checkpoint`` is our ``checkpoint`` (Lightning's ModelCheckpoint, best epoch kept)."""
        enabled = _get(self.cfg, f"{where}.enabled", True)
        for key in ("dirpath", "filename", "save_last", "verbose", "auto_insert_metric_name", "_target_"):
            self.drop(f"{where}.{key}")  # where and how it is written is ours: one best checkpoint in the run folder
        entry = _get(self.cfg, where)
        for key in list(entry.keys()):
            self.move(f"{where}.{key}", f"callbacks.checkpoint.{key}")
        OmegaConf.update(self.cfg, "callbacks.checkpoint.enabled", bool(enabled), force_add=True)
        self.drop(where)

    @staticmethod
    @functools.cache
    def _our_callbacks() -> set[str]:
        from quadra_ad.config.locations import config_dir

        return set(OmegaConf.load(config_dir() / "callbacks" / "default.yaml").keys())

    def _trainer(self) -> None:
        trainer = _get(self.cfg, "trainer", None)
        if not isinstance(trainer, DictConfig):
            return
        for key, (unused, ours) in LIGHTNING_1_TRAINER_KEYS.items():
            value = _get(self.cfg, f"trainer.{key}")
            if value is _MISSING:
                continue
            if value not in unused:
                self.refuse(f"trainer.{key}", f"a Lightning 1 argument; here: {ours}")
            self.drop(f"trainer.{key}")
        if _get(self.cfg, "trainer.strategy", "auto") is None:  # Lightning 1's "no strategy"
            OmegaConf.update(self.cfg, "trainer.strategy", "auto", merge=False)
        if _get(self.cfg, "trainer.gradient_clip_val", None) == 0:
            OmegaConf.update(self.cfg, "trainer.gradient_clip_val", None, merge=False)

    def _other_groups(self) -> None:
        for group, ours in (("optimizer", "the anomalib model's own optimizer"),
                            ("scheduler", "the anomalib model's own schedule"),
                            ("loss", "the anomalib model's own loss")):
            if _get(self.cfg, group, None) is not None:
                self.refuse(group, f"no {group} group here: {ours}; use override /{group}: null")

    def _rewrite_interpolations(self) -> None:
        """Interpolations that pointed at a moved key follow it; at a dropped one, take its value."""
        if not self.moved and not self.frozen:
            return
        pattern = re.compile(r"\$\{(" + "|".join(re.escape(k) for k in sorted({**self.moved, **self.frozen},
                                                                                  key=len, reverse=True)) + r")\}")

        def replace(text: str) -> Any:
            whole = pattern.fullmatch(text)
            if whole and whole.group(1) in self.frozen and whole.group(1) not in self.moved:
                return self.frozen[whole.group(1)]
            return pattern.sub(lambda m: "${" + self.moved[m.group(1)] + "}" if m.group(1) in self.moved
                               else str(self.frozen[m.group(1)]), text)

        def visit(node) -> None:
            keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
            for key in list(keys):
                child = node._get_node(key)
                if isinstance(child, (DictConfig, ListConfig)):
                    if not child._is_none() and not child._is_missing() and not child._is_interpolation():
                        visit(child)
                    continue
                value = child._value()
                if isinstance(value, str) and "${" in value and pattern.search(value):
                    with open_dict(node):
                        node[key] = replace(value)

        visit(self.cfg)


def looks_like_quadra(cfg: DictConfig) -> bool:
    """True when the config holds a key only Quadra's files set (nothing to translate otherwise)."""
    probes = ("model.model", "model.dataset", "model.metrics", "task.run_test", "task.report", "task.export_config",
              "task.module_function", "datamodule.task", "datamodule.seed", "datamodule.train_transform",
              "transforms.input_height", "transforms.name", "callbacks.score_normalization",
              "callbacks.min_max_normalization",
              "callbacks.model_checkpoint", "optimizer", "scheduler", "loss")
    if any(_get(cfg, key, None) is not None for key in probes):
        return True
    if str(_get(cfg, "task._target_", "")).startswith("quadra."):
        return True
    callbacks = _get(cfg, "callbacks", None)
    if isinstance(callbacks, DictConfig) and any(
            isinstance(_get(cfg, f"callbacks.{k}"), DictConfig) and "disable" in _get(cfg, f"callbacks.{k}")
            for k in callbacks):
        return True
    trainer = _get(cfg, "trainer", None)
    return isinstance(trainer, DictConfig) and any(k in trainer for k in LIGHTNING_1_TRAINER_KEYS)


def quadra_key_mistakes(cfg: DictConfig) -> list[str]:
    """Rewrite Quadra's keys in ``cfg`` (in place) to ours and return one line for each key that
    has no counterpart (empty: everything translated). A config without Quadra keys is left as it is."""
    if not looks_like_quadra(cfg):
        return []
    struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    translation = _Translation(cfg)
    try:
        translation.run()
    finally:
        OmegaConf.set_struct(cfg, struct)
    return translation.mistakes


def translate_quadra_keys(cfg: DictConfig) -> DictConfig:
    """:func:`quadra_key_mistakes`, raising :class:`ConfigErrors` with its lines when there are any."""
    if mistakes := quadra_key_mistakes(cfg):
        raise ConfigErrors(mistakes)
    return cfg
