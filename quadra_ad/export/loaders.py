"""Load an exported model (TorchScript or ONNX) with its ``model.json``, checked against each other.

The format comes from the file ending; every problem with the file is one line naming
``task.model_path``.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from quadra_ad.errors import ConfigError
from quadra_ad.export.model_json import MODEL_JSON, ModelCard

log = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit")
ONNX_SUFFIXES = (".onnx",)


class ExportedModel:
    """A loaded graph: ``model(images) -> (raw scores (B,), raw maps (B, 1, H, W))`` as CPU tensors.

    ``card`` may be None only for :meth:`run_graph` (the exporter's own check of a fresh file).
    """

    format: str = ""

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        self.path = path
        self.card = card
        self.device = device

    def run_graph(self, images: torch.Tensor):
        """Whatever the graph returns, unchecked."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fixed = self.card.fixed_batch_size.get(self.format)
        chunks = images.split(fixed) if fixed else (images,)
        outputs = [self.run_graph(chunk) for chunk in chunks]
        # as_tensor/float/cpu are no-ops on float32 CPU outputs (ONNX's numpy arrays are shared, not copied).
        scores = [torch.as_tensor(s).float().cpu().reshape(-1) for s, _ in outputs]
        maps = [torch.as_tensor(m).float().cpu() for _, m in outputs]
        if len(outputs) == 1:
            return scores[0], maps[0]
        return torch.cat(scores), torch.cat(maps)


class TorchScriptModel(ExportedModel):
    format = "torchscript"

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        super().__init__(path, card, device)
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as error:  # noqa: BLE001 - any load failure means a bad file
            raise ConfigError(f"task.model_path '{path}' cannot be loaded as TorchScript ({_first_line(error)}); is the file complete?") from None

    def run_graph(self, images: torch.Tensor):
        with torch.inference_mode():
            return self.module(images.to(self.device))

    def optimize_for_cpu(self) -> bool:
        """Freeze the graph and fold it for CPU inference (conv+BN folding, oneDNN layouts).

        About 1.1-1.2x more images/s at 128 px in scripts/benchmark.py, up to 1.6x on small inputs.
        Kept only when the optimised graph gives the same outputs as the plain one; otherwise the
        plain one stays.
        """
        height, width = self.card.input_size
        example = torch.rand(self.card.fixed_batch_size.get(self.format) or 2, self.card.input_channels, height, width)
        try:
            optimized = torch.jit.optimize_for_inference(torch.jit.freeze(self.module))
            with torch.inference_mode():
                expected, got = self.module(example), optimized(example)
                same = all(_close(a, b) for a, b in zip(expected, got, strict=True))
        except Exception as error:  # noqa: BLE001 - the plain graph still works
            log.debug("TorchScript optimisation skipped for %s: %s", self.path, _first_line(error))
            return False
        if not same:
            log.debug("TorchScript optimisation changed the outputs of %s: plain graph kept", self.path)
            return False
        self.module = optimized
        return True


class OnnxModel(ExportedModel):
    format = "onnx"

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        super().__init__(path, card, device)
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=onnx_session_options(), providers=providers)
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"task.model_path '{path}' cannot be loaded as ONNX ({_first_line(error)}); is the file complete?") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"task.model_path '{path}' has {len(inputs)} inputs; a quadra_ad export has one image input")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape

    def run_graph(self, images: torch.Tensor):
        return tuple(self.session.run(None, {self.input_name: images.numpy().astype(np.float32, copy=False)}))


def onnx_session_options():
    """ONNX Runtime settings for this machine: all graph optimisations, one thread per usable core,
    no spinning.

    ORT sizes its thread pool from the host's cores; in a container or under ``taskset`` that
    oversubscribes the cores we may use, so the pool follows the CPU affinity instead.
    """
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # ORT's threads spin after each run by default; the torch work that follows (collecting maps,
    # the next batch) then fights them for the cores: 30 % fewer images/s on 2 cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _close(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """Same values up to float32 reordering, relative to the output's own scale."""
    expected, got = torch.as_tensor(expected).float(), torch.as_tensor(got).float()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return expected.shape == got.shape and torch.allclose(expected, got, rtol=1e-4, atol=1e-4 * max(scale, 1e-6))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _check_against_card(model: ExportedModel) -> None:
    """Run one blank image of the size model.json gives and check the outputs' shapes."""
    card = model.card
    height, width = card.input_size
    if isinstance(model, OnnxModel):
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
        outputs = model.run_graph(torch.zeros(1, card.input_channels, height, width))
    except Exception as error:  # noqa: BLE001
        raise ConfigError(
            f"model.json beside '{model.path}' does not match the graph: a {card.input_channels}x{height}x{width} "
            f"input fails ({_first_line(error)})"
        ) from None
    if not isinstance(outputs, tuple | list) or len(outputs) != 2:
        raise ConfigError(f"task.model_path '{model.path}' returns {type(outputs).__name__}; expected (pred_score, anomaly_map)")
    scores, maps = (torch.as_tensor(o) for o in outputs)
    if tuple(scores.shape) != (1,) or maps.dim() != 4 or tuple(maps.shape[-2:]) != (height, width):
        raise ConfigError(
            f"task.model_path '{model.path}' outputs shapes {tuple(scores.shape)} and {tuple(maps.shape)}; "
            f"model.json expects (1,) and (1, 1, {height}, {width})"
        )


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda[:n]``; CUDA must exist when asked for."""
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"task.device={device} but no CUDA device is available here: use task.device=cpu")
        return device
    raise ConfigError(f"task.device must be 'cpu' or 'cuda[:N]', got '{device}'")


def load_exported_model(model_path: str | Path, device: str = "cpu") -> ExportedModel:
    """Load ``model_path`` (TorchScript or ONNX, by ending) and the ``model.json`` beside it."""
    if model_path is None or str(model_path).strip() == "":
        raise ConfigError("task.model_path is not set: give task.model_path=<run folder>/deployment_model/model.pt (or .onnx)")
    path = Path(model_path).expanduser()
    if not path.is_file():
        hint = " (it is a folder: name model.pt or model.onnx inside it)" if path.is_dir() else ""
        raise ConfigError(f"task.model_path '{path}' does not exist{hint}")
    suffix = path.suffix.lower()
    if suffix not in TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES:
        raise ConfigError(
            f"task.model_path '{path}': unknown model format '{suffix}'; give a TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}) "
            f"or ONNX (.onnx) file from a training run's deployment_model folder"
        )
    card_path = path.parent / MODEL_JSON
    if not card_path.is_file():
        raise ConfigError(f"no {MODEL_JSON} beside task.model_path '{path}': keep the exported model in its deployment_model folder")
    try:
        card = ModelCard.read(card_path)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"'{card_path}' is not a quadra_ad model.json ({_first_line(error)})") from None
    device = resolve_device(device)
    model_class = OnnxModel if suffix in ONNX_SUFFIXES else TorchScriptModel
    model = model_class(path, card, device)
    _check_against_card(model)
    if isinstance(model, TorchScriptModel) and device == "cpu":
        model.optimize_for_cpu()
    log.info("Loaded %s model %s (%s, input %s)", model.format, path, card.model_class, card.input_size)
    return model
