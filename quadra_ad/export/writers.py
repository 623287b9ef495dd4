"""One writer per export type: ``torchscript`` → ``model.pt``, ``onnx`` → ``model.onnx`` (and
``model.onnx.data`` for large weights), ``openvino`` → ``model.xml`` + ``model.bin`` (OpenVINO IR, converted from the ONNX graph).

All have a dynamic batch dimension; the spatial size is fixed to the training input size.
"""

import errno
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from quadra_ad.deploy.model_card import ONNX_WEIGHTS
from quadra_ad.deploy.runners import OnnxModel, OpenVinoModel, TorchScriptModel
from quadra_ad.errors import ConfigError, ExportError, first_line
from quadra_ad.export.graph import INPUT_NAME, OUTPUT_NAMES, AnomalyGraph
from quadra_ad.files import atomic_path, disk_is_full

log = logging.getLogger(__name__)

#: Loggers of the ONNX exporter that report every optimisation pass at INFO.
CHATTY_ONNX_LOGGERS = ("onnxscript", "onnx_ir")


@contextmanager
def _at_least_warning(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block the named loggers drop INFO records; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_torchscript(graph: AnomalyGraph, example: torch.Tensor, folder: Path) -> Path:
    """Trace the graph to TorchScript (``model.pt``)."""
    path = folder / "model.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        traced = torch.jit.trace(graph, example, check_trace=False)
    # To memory first: torch's own file writer aborts the whole process when the disk fills up.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getbuffer())
    return path


def export_onnx(
    graph: AnomalyGraph, example: torch.Tensor, folder: Path, opset_version: int | None = None, dynamic: bool = True
) -> Path:
    """Export the graph to ONNX (``model.onnx``) with the dynamo exporter.

    The exporter implements opset 18 and newer and converts down when asked for less; when that
    conversion fails it keeps 18 without saying so, hence the check of the written opset.
    Weights over :data:`ONNX_EXTERNAL_DATA_BYTES` go to ``model.onnx.data``: ONNX Runtime maps an
    external weights file into memory instead of parsing the weights out of the protobuf and
    copying them (PaDiM at 256 px, 177 MB of weights, loads at 272 MB peak instead of 395 MB,
    scripts/runtime_benchmark.py). The file is written once, with its weights where they belong;
    the weights file takes its name before the graph, so a complete ``model.onnx`` always finds its own.
    """
    import shutil
    import tempfile

    with torch.no_grad(), warnings.catch_warnings(), _at_least_warning(CHATTY_ONNX_LOGGERS):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            None,  # the program comes back and is saved below, with its weights in the right file
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},) if dynamic else None,
            opset_version=opset_version,
            verbose=False,
        )
        written = program.model.opset_imports.get("", program.model.opset_imports.get("ai.onnx"))
        if opset_version is not None and written != opset_version:  # refused before anything is written
            raise ExportError(
                f"export.onnx_opset={opset_version}: the ONNX exporter could not convert this model to that opset "
                f"(it wrote opset {written}); use export.onnx_opset={written} or leave it null"
            )
        path, weights = folder / "model.onnx", folder / ONNX_WEIGHTS
        external = _initializer_bytes(program) > ONNX_EXTERNAL_DATA_BYTES
        with tempfile.TemporaryDirectory(dir=folder, prefix=ONNX_SCRATCH_PREFIX) as scratch:
            written_file = Path(scratch) / path.name
            program.save(written_file, external_data=external)
            if external:
                written_weights = Path(scratch) / ONNX_WEIGHTS
                shutil.copymode(written_file, written_weights)  # the saver makes it owner-only
                written_weights.replace(weights)
            else:
                weights.unlink(missing_ok=True)  # a previous export's, no longer referenced
            written_file.replace(path)
    return path


#: Where an ONNX export is written before its files take their names (a killed writer leaves it).
ONNX_SCRATCH_PREFIX = ".onnx-"
#: ONNX files whose weights are larger than this keep them in ``model.onnx.data`` beside them.
ONNX_EXTERNAL_DATA_BYTES = 32 * 2**20


def _initializer_bytes(program) -> int:
    return sum(value.const_value.nbytes for value in program.model.graph.initializers.values()
               if value.const_value is not None)


def export_openvino(
    graph: AnomalyGraph, example: torch.Tensor, folder: Path, opset_version: int | None = None, dynamic: bool = True
) -> Path:
    """OpenVINO IR (``model.xml`` + ``model.bin``, float32 weights) converted from an ONNX export of
    the graph; the weights file takes its name first, so a complete ``model.xml`` always has its own.
    OpenVINO's presence was checked with the export settings, before training."""
    import tempfile

    import openvino as ov

    path = folder / "model.xml"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".openvino-") as scratch:
        onnx_path = export_onnx(graph, example, Path(scratch), opset_version, dynamic=dynamic)
        converted = ov.convert_model(str(onnx_path))
        ov.save_model(converted, str(Path(scratch) / "model.xml"), compress_to_fp16=False)
        (Path(scratch) / "model.bin").replace(folder / "model.bin")
        (Path(scratch) / "model.xml").replace(path)
    return path


EXPORT_TYPES = ("torchscript", "onnx", "openvino")
#: The oldest opset the ONNX Runtime versions we support still run.
MIN_ONNX_OPSET = 7


def check_export_config(types: list[str], onnx_opset) -> None:
    """Refuse, before any training, export settings that could only fail after it."""
    unknown = [t for t in types if t not in EXPORT_TYPES]
    if unknown:
        raise ConfigError(f"export.types: unknown type(s) {unknown}; choose from {sorted(EXPORT_TYPES)}")
    if "openvino" in types:
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            raise ConfigError("export.types has 'openvino' but OpenVINO is not installed: pip install "
                              "'quadra_ad[openvino]', or remove 'openvino' from export.types")
    if onnx_opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(onnx_opset, bool) or not isinstance(onnx_opset, int) or not MIN_ONNX_OPSET <= onnx_opset <= newest:
        raise ConfigError(
            f"export.onnx_opset={onnx_opset!r}: give a whole number from {MIN_ONNX_OPSET} to {newest} "
            f"(the installed onnx's newest), or null for the exporter's default"
        )


def _reproduces(graph: AnomalyGraph, export_type: str, path: Path, batches: list[torch.Tensor]) -> bool:
    """True when the exported file, loaded once and run the way inference runs it, gives the eager
    scores on every batch in ``batches``."""
    runner_type = {"torchscript": TorchScriptModel, "onnx": OnnxModel, "openvino": OpenVinoModel}[export_type]
    try:
        runner = runner_type(path, card=None, device="cpu")
    except Exception:  # noqa: BLE001 - a file that cannot be loaded reproduces nothing
        return False
    for images in batches:
        with torch.no_grad():
            expected = graph(images)[0]
        try:
            got = torch.as_tensor(runner.run_graph(images)[0])
        except Exception:  # noqa: BLE001 - a graph that cannot run this batch does not reproduce it
            return False
        scale = max(1.0, float(expected.abs().max()))
        if got.shape != expected.shape or float((got - expected).abs().max()) > 1e-3 * scale:
            return False
    return True


def _write(graph: AnomalyGraph, export_type: str, example: torch.Tensor, folder: Path, onnx_opset: int | None, dynamic: bool) -> Path:
    if export_type == "onnx":
        return export_onnx(graph, example, folder, onnx_opset, dynamic=dynamic)
    if export_type == "openvino":
        return export_openvino(graph, example, folder, onnx_opset, dynamic=dynamic)
    return export_torchscript(graph, example, folder)


def export_graph(
    graph: AnomalyGraph, input_size: list[int], folder: Path, types: list[str], onnx_opset: int | None,
) -> dict[str, tuple[Path, int | None]]:
    """Write every requested type into ``folder``; return ``{type: (path, fixed batch size or None)}``.

    Each file is checked against the eager graph on batches of 3 and 1 (not the batch it was
    traced with): some models bake the batch size into their code (``view(len(x), -1)``), which makes a
    traced graph fail or, worse, silently drop images. Those are re-exported at batch size 1 and
    ``model.json`` records it, so inference feeds them one image at a time.
    """
    check_export_config(types, onnx_opset)
    folder.mkdir(parents=True, exist_ok=True)
    graph = graph.cpu().eval()
    generator = torch.Generator().manual_seed(0)
    check = torch.randn(3, 3, *input_size, generator=generator)
    written = {}
    for export_type in types:
        log.info("Exporting %s to %s", export_type, folder)
        try:
            # Batch 2 so the tracer and exporter do not specialise the batch dimension to 1.
            path = _write(graph, export_type, torch.zeros(2, 3, *input_size), folder, onnx_opset, dynamic=True)
            if _reproduces(graph, export_type, path, [check, check[:1]]):
                written[export_type] = (path, None)
                continue
            log.warning("%s export does not handle other batch sizes for this model: exporting at batch size 1", export_type)
            path = _write(graph, export_type, check[:1], folder, onnx_opset, dynamic=False)
            if not _reproduces(graph, export_type, path, [check[:1]]):
                raise ExportError(f"export to {export_type} gives other scores than the trained model; "
                                  f"remove '{export_type}' from export.types to skip it")
            written[export_type] = (path, 1)
        except (RuntimeError, torch.jit.Error, NotImplementedError) as error:
            if disk_is_full(error, folder):
                raise OSError(errno.ENOSPC, f"no space left writing the {export_type} export in '{folder}'") from error
            raise ExportError(f"export to {export_type} failed for this model: {first_line(error)}; "
                              f"remove '{export_type}' from export.types to skip it") from error
    return written

