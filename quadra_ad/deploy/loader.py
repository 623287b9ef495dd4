"""Load an exported model (TorchScript, ONNX or OpenVINO) with its ``model.json``, checked against each other.

Imports torch only for a TorchScript file.

The format comes from the file ending; every problem with the file is one line naming
``task.model_path``. The card and the files it names are verified (content hashes, regular files
inside the folder) by :func:`~quadra_ad.deploy.model_card.locate_exported_model` before any runner
opens a graph: loading TorchScript runs its code.
"""

import logging
from pathlib import Path

import numpy as np

from quadra_ad.deploy.model_card import ONNX_SUFFIXES, OPENVINO_SUFFIXES, locate_exported_model
from quadra_ad.deploy.runners import ExportedModel, OnnxModel, OpenVinoModel, TorchScriptModel, first_line
from quadra_ad.errors import ConfigError

log = logging.getLogger(__name__)

def _check_against_card(model: ExportedModel) -> None:
    """Run one blank image of the size model.json gives and check the outputs' shapes."""
    card = model.card
    height, width = card.input_size
    if isinstance(model, OnnxModel | OpenVinoModel):
        static = [d if isinstance(d, int) else None for d in model.input_shape]
        if len(static) == 4 and static[1] is not None and static[1] != card.input_channels:
            raise ConfigError(
                f"model.json beside '{model.path}' says {card.input_channels}-channel input but the graph takes {static[1]} channels"
            )
        if len(static) == 4 and None not in static[2:] and static[2:] != [height, width]:
            raise ConfigError(
                f"model.json beside '{model.path}' says input_size {card.input_size} but the graph takes {static[2:]}: "
                f"use the model.json written with this graph"
            )
    try:
        outputs = model.run_graph(np.zeros((1, card.input_channels, height, width), dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - any runtime's failure on a probe input means the card does not fit
        raise ConfigError(
            f"model.json beside '{model.path}' does not match the graph: a {card.input_channels}x{height}x{width} "
            f"input fails ({first_line(error)})"
        ) from None
    if not isinstance(outputs, tuple | list) or len(outputs) != 2:
        raise ConfigError(f"task.model_path '{model.path}' returns {type(outputs).__name__}; expected (pred_score, anomaly_map)")
    scores, maps = (np.asarray(o) for o in outputs)
    if tuple(scores.shape) != (1,) or maps.ndim != 4 or tuple(maps.shape[-2:]) != (height, width):
        raise ConfigError(
            f"task.model_path '{model.path}' outputs shapes {tuple(scores.shape)} and {tuple(maps.shape)}; "
            f"model.json expects (1,) and (1, 1, {height}, {width})"
        )


def resolve_device(device: str, graph_format: str) -> str:
    """``cpu`` or ``cuda[:n]``; CUDA must exist, for the runtime that runs ``graph_format``, when asked for."""
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if graph_format == "openvino":
            raise ConfigError(f"task.device={device}: quadra_ad runs OpenVINO models on the CPU; use task.device=cpu")
        if graph_format == "onnx":
            import onnxruntime as ort

            available = "CUDAExecutionProvider" in ort.get_available_providers()
        else:
            import torch

            available = torch.cuda.is_available()
        if not available:
            raise ConfigError(f"task.device={device} but no CUDA device is available here: use task.device=cpu")
        return device
    raise ConfigError(f"task.device must be 'cpu' or 'cuda[:N]', got '{device}'")


def load_exported_model(model_path: str | Path, device: str = "cpu", torchscript_cache: bool = True) -> ExportedModel:
    """Load ``model_path`` (TorchScript or ONNX, by ending) and the ``model.json`` beside it.

    A TorchScript graph on the CPU is optimised for inference; ``torchscript_cache`` keeps the
    checked result beside it for the next load (:mod:`quadra_ad.deploy.torchscript_cache`).
    """
    path, card = locate_exported_model(model_path)  # verified before anything is loaded
    suffix = path.suffix.lower()
    model_class = OnnxModel if suffix in ONNX_SUFFIXES else OpenVinoModel if suffix in OPENVINO_SUFFIXES else TorchScriptModel
    device = resolve_device(device, model_class.format)
    model = model_class(path, card, device)  # a file that cannot be loaded fails here, with its own line
    if isinstance(model, TorchScriptModel) and device == "cpu":
        # Before the card check, so that check runs the graph inference will run; a graph the
        # card does not fit is not optimised.
        model.optimize_for_cpu(cache=torchscript_cache)
    _check_against_card(model)
    log.info("Loaded %s model %s (%s, input %s)", model.format, path, card.model_class, card.input_size)
    return model
