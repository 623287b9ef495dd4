"""One writer per export type: ``torchscript`` → ``model.pt``, ``onnx`` → ``model.onnx``.

Both have a dynamic batch dimension; the spatial size is fixed to the training input size.
"""

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from quadra_ad.errors import ConfigError, ExportError
from quadra_ad.export.graph import INPUT_NAME, OUTPUT_NAMES, AnomalyGraph

log = logging.getLogger(__name__)


def export_torchscript(graph: AnomalyGraph, example: torch.Tensor, folder: Path) -> Path:
    """Trace the graph to TorchScript (``model.pt``)."""
    path = folder / "model.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        traced = torch.jit.trace(graph, example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(graph: AnomalyGraph, example: torch.Tensor, folder: Path, opset_version: int | None = None) -> Path:
    """Export the graph to ONNX (``model.onnx``) with the dynamo exporter, weights inline."""
    path = folder / "model.onnx"
    for chatty in ("onnxscript", "onnx_ir"):  # they log every optimisation pass at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=opset_version,
            external_data=False,
            verbose=False,
        )
    return path


WRITERS: dict[str, Callable[..., Path]] = {"torchscript": export_torchscript, "onnx": export_onnx}


def export_graph(graph: AnomalyGraph, input_size: list[int], folder: Path, types: list[str], onnx_opset: int | None) -> dict[str, Path]:
    """Write every requested type into ``folder``; return ``{type: path}``."""
    unknown = [t for t in types if t not in WRITERS]
    if unknown:
        raise ConfigError(f"export.types: unknown type(s) {unknown}; choose from {sorted(WRITERS)}")
    folder.mkdir(parents=True, exist_ok=True)
    graph = graph.cpu().eval()
    # Batch 2 so the tracer and exporter do not specialise the batch dimension to 1.
    example = torch.zeros(2, 3, *input_size)
    written = {}
    for export_type in types:
        log.info("Exporting %s to %s", export_type, folder)
        try:
            if export_type == "onnx":
                written[export_type] = export_onnx(graph, example, folder, onnx_opset)
            else:
                written[export_type] = WRITERS[export_type](graph, example, folder)
        except (RuntimeError, torch.jit.Error, NotImplementedError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExportError(f"export to {export_type} failed for this model: {first_line}; "
                              f"remove '{export_type}' from export.types to skip it") from error
    return written
