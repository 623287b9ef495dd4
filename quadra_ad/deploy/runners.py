"""Runners for exported graphs: TorchScript (torch), ONNX (ONNX Runtime), OpenVINO; NumPy in and out.

``model(images) -> (raw scores (B,), raw maps (B, 1, H, W))``, float32 arrays. Only the
TorchScript runner imports torch (when it opens a file): ONNX runs on a line PC without it.
A runner opens one graph file; the
:class:`~quadra_ad.deploy.model_card.ModelCard` beside it says how to feed it (fixed batch sizes,
input size). The exporter uses the same runners, without a card, to check each file it writes.
"""

import logging
import warnings
from pathlib import Path

import numpy as np

from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.errors import ConfigError, first_line

log = logging.getLogger(__name__)


class ExportedModel:
    """A loaded graph: ``model(images) -> (raw scores (B,), raw maps (B, 1, H, W))`` as float32 arrays.

    ``card`` may be None only for :meth:`run_graph` (the exporter's own check of a fresh file).
    """

    format: str = ""

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        self.path = path
        self.card = card
        self.device = device

    def run_graph(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Whatever the graph returns on float32 (B, C, H, W) images, as arrays, unchecked."""
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, dtype=np.float32)
        fixed = self.card.fixed_batch_size.get(self.format)
        chunks = [images[i:i + fixed] for i in range(0, len(images), fixed)] if fixed else [images]
        outputs = [self.run_graph(chunk) for chunk in chunks]
        # astype(copy=False) is a no-op on float32 outputs (ONNX's arrays are used as they are).
        scores = [np.asarray(s).astype(np.float32, copy=False).reshape(-1) for s, _ in outputs]
        maps = [np.asarray(m).astype(np.float32, copy=False) for _, m in outputs]
        if len(outputs) == 1:
            return scores[0], maps[0]
        return np.concatenate(scores), np.concatenate(maps)


class TorchScriptModel(ExportedModel):
    format = "torchscript"
    #: True when :meth:`optimize_for_cpu` started from the frozen graph kept beside the model.
    optimized_from_cache: bool = False

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        super().__init__(path, card, device)
        import torch

        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as error:  # noqa: BLE001 - any load failure means a bad file
            raise ConfigError(f"task.model_path '{path}' cannot be loaded as TorchScript ({first_line(error)}); "
                              "is the file complete?") from None

    def run_graph(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            outputs = self.module(torch.as_tensor(np.asarray(images, dtype=np.float32)).to(self.device))
        return tuple(o.float().cpu().numpy() for o in outputs)

    def optimize_for_cpu(self, cache: bool = True) -> bool:
        """Freeze the graph and fold it for CPU inference (conv+BN folding, oneDNN layouts).

        About 1.1-1.2x more images/s at 128 px (scripts/torchscript_load.py), up to 1.6x on small
        inputs. Kept only when the optimised graph gives the same outputs as the plain one;
        otherwise the plain one stays. With ``cache``, the checked frozen graph (or the verdict that
        optimising does not pay) is kept beside the model and later loads start from it, without
        freezing again (:mod:`quadra_ad.deploy.torchscript_cache`). The cache lies in the deployment
        folder, outside the card's hashes, so it cannot be trusted to be what ``model.pt`` computes:
        at each load the cached graph must give the plain graph's outputs on a fresh random batch,
        or it is thrown away and rebuilt; the cache can make a load faster, never change what runs.
        """
        import torch

        from quadra_ad.deploy.torchscript_cache import cache_key, read_cache, write_cache

        key = cache_key(self.path, self.device, self.card.sha256.get(self.format)) if cache else None
        cached = read_cache(self.path, self.device, key) if cache else None
        if cached is not None:
            if cached.frozen is None:
                log.debug("TorchScript optimisation skipped for %s: it did not pay on this machine before", self.path)
                return False
            try:
                optimized = torch.jit.optimize_for_inference(cached.frozen)
                example = self._check_batch(1)
                same = _all_close(_outputs(self.module, example), _outputs(optimized, example))
            except Exception as error:  # noqa: BLE001 - rebuild from the plain graph below
                log.info("The cached TorchScript graph of %s cannot be used (%s): rebuilding it", self.path, first_line(error))
            else:
                if same:
                    self.module = optimized
                    self.optimized_from_cache = True
                    return True
                log.warning("The cached TorchScript graph beside %s gives other outputs than that model (another "
                            "model's cache, or altered): ignored and rebuilt", self.path)
        ran, optimized, frozen_bytes = self._optimized_graph()
        if cache and ran:  # a verdict on this graph, not on a card that does not fit it
            write_cache(self.path, self.device, key, frozen_bytes if optimized is not None else None)
        if optimized is None:
            return False
        self.module = optimized
        return True

    def _check_batch(self, batch: int):
        """Random images of the card's size, drawn afresh at each load (no input a graph can be
        prepared for); ``batch`` of them unless the graph takes a fixed number."""
        import torch

        height, width = self.card.input_size
        return torch.rand(self.card.fixed_batch_size.get(self.format) or batch, self.card.input_channels, height, width)

    def _optimized_graph(self):
        """(whether the plain graph ran on the card's input, the optimised graph or None when it
        cannot be built or changes the outputs, the saved frozen graph it was built from).

        The optimised graph is built from the saved bytes, exactly as a later load builds it from
        the cache, so the check covers what later loads run.
        """
        import io

        import torch

        example = self._check_batch(2)
        try:
            expected = _outputs(self.module, example)
        except Exception as error:  # noqa: BLE001 - the loader's own check reports a graph that cannot run
            log.debug("TorchScript optimisation skipped for %s: %s", self.path, first_line(error))
            return False, None, None
        try:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated": ours, not the user's
                torch.jit.save(torch.jit.freeze(self.module), buffer)
            frozen_bytes = buffer.getvalue()
            optimized = torch.jit.optimize_for_inference(torch.jit.load(io.BytesIO(frozen_bytes), map_location=self.device))
            same = _all_close(expected, _outputs(optimized, example))
        except Exception as error:  # noqa: BLE001 - the plain graph still works
            log.debug("TorchScript optimisation skipped for %s: %s", self.path, first_line(error))
            return True, None, None
        if not same:
            log.debug("TorchScript optimisation changed the outputs of %s: plain graph kept", self.path)
            return True, None, None
        return True, optimized, frozen_bytes


class OnnxModel(ExportedModel):
    format = "onnx"

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        super().__init__(path, card, device)
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=onnx_session_options(), providers=providers)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a broken file
            raise ConfigError(f"task.model_path '{path}' cannot be loaded as ONNX ({first_line(error)}); is the file complete?") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"task.model_path '{path}' has {len(inputs)} inputs; a quadra_ad export has one image input")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape

    def run_graph(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {self.input_name: np.asarray(images, dtype=np.float32)}))


class OpenVinoModel(ExportedModel):
    """OpenVINO IR (``model.xml`` with ``model.bin`` beside it) on OpenVINO's CPU plugin, float32
    (the loader refuses any other device)."""

    format = "openvino"

    def __init__(self, path: Path, card: ModelCard | None, device: str) -> None:
        super().__init__(path, card, device)
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError(f"'{path}' is an OpenVINO model but OpenVINO is not installed: pip install "
                              f"'quadra_ad[openvino]' (or run the model.onnx beside it)") from None
        try:
            # f32: the CPU plugin would otherwise pick bf16 on CPUs that have it, changing the scores.
            self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types for a broken file
            raise ConfigError(f"task.model_path '{path}' cannot be loaded as OpenVINO ({first_line(error)}); are "
                              f"model.xml and model.bin complete?") from None
        self.input_shape = [d.get_length() if d.is_static else None for d in self.compiled.inputs[0].get_partial_shape()]

    def run_graph(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        results = self.compiled(np.asarray(images, dtype=np.float32))
        return tuple(results[output] for output in self.compiled.outputs)


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


def _outputs(graph, example) -> tuple:
    import torch

    with torch.inference_mode():
        return tuple(graph(example))


def _all_close(expected: tuple, got: tuple) -> bool:
    """The same outputs, each up to float32 reordering."""
    return len(expected) == len(got) and all(_close(a, b) for a, b in zip(expected, got, strict=True))


def _close(expected, got) -> bool:
    """Same values up to float32 reordering, relative to the output's own scale."""
    expected, got = np.asarray(expected.cpu(), dtype=np.float32), np.asarray(got.cpu(), dtype=np.float32)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return expected.shape == got.shape and bool(np.allclose(got, expected, rtol=1e-4, atol=1e-4 * max(scale, 1e-6)))
