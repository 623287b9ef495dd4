"""``model.json``: everything needed to use an exported graph correctly, beside the graph.

Input size and normalisation stats say how to prepare images; the :class:`Calibration`
(thresholds and score ranges, all raw, from the validation set) says how to read the outputs.
The export step fills one in and writes it; every way of running an exported model reads it.
Its keys are flat (``image_threshold``, ``pixel_min`` … at the top level), as they always were.
``sha256`` names the content of each graph file the card was written for, so a card moved
beside another graph is refused instead of silently applying its thresholds there.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from quadra_ad.errors import ConfigError
from quadra_ad.files import write_text
from quadra_ad.thresholds import Calibration

MODEL_JSON = "model.json"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit")
ONNX_SUFFIXES = (".onnx",)
#: OpenVINO IR: the ``.xml`` graph, its weights in the ``.bin`` of the same name beside it.
OPENVINO_SUFFIXES = (".xml",)
#: ONNX weights kept outside the graph (external data) when they are large; the graph names this file.
ONNX_WEIGHTS = "model.onnx.data"
#: Graph files looked for, in this order, when a deployment folder is given.
GRAPH_FILES = ("model.onnx", "model.xml", "model.pt")
#: The region-of-interest mask, shipped beside model.json when the training used one.
VALID_AREA_MASK = "valid_area_mask.png"
#: 2: ``sha256`` of the graph files.
SCHEMA_VERSION = 2
_CALIBRATION_KEYS = tuple(f.name for f in fields(Calibration))
#: Keys of model.json in the order they are written (the calibration's sit after ``std``).
_KEY_ORDER = ("model_class", "input_size", "mean", "std", "image_threshold", "pixel_threshold", "image_min",
              "image_max", "pixel_min", "pixel_max", "task_type")


@dataclass
class ModelCard:
    """The contents of ``model.json``."""

    model_class: str
    input_size: list[int]
    mean: list[float]
    std: list[float]
    calibration: Calibration
    task_type: str
    #: What every image goes through before the graph, in this order: pixels outside the valid
    #: area mask (a file beside model.json, any non-zero pixel valid) set to 0, the crop box
    #: ``[x1, y1, x2, y2]`` cut out, resized to ``input_size``, normalised with ``mean``/``std``.
    valid_area_mask: str | None = None
    crop_area: list[int] | None = None
    resize: str = "bilinear, antialiased (torchvision v2 resize)"
    channel_order: str = "RGB"
    pixel_scaling: str = "uint8 / 255, uint16 / 65535, float clipped to [0, 1]; gray and RGBA read as RGB"
    input_channels: int = 3
    input_name: str = "image"
    outputs: list[str] = field(default_factory=lambda: ["pred_score", "anomaly_map"])
    threshold_rule: str = "score >= threshold is anomalous"
    files: dict[str, str] = field(default_factory=dict)
    #: Content hash of each exported file, by format: which graphs this card belongs to.
    sha256: dict[str, str] = field(default_factory=dict)
    #: Formats whose graph only takes this many images at once (others take any batch size).
    fixed_batch_size: dict[str, int] = field(default_factory=dict)
    #: False for image-level models: their graph's map is the score broadcast, not a real map.
    has_anomaly_map: bool = True
    versions: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The flat ``model.json`` mapping."""
        values = asdict(self)
        values.update(values.pop("calibration"))
        ordered = {key: values.pop(key) for key in _KEY_ORDER}
        return {**ordered, **values}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "ModelCard":
        values = dict(values)
        # Every calibration key must be there (pixel ones may be null): a card without them is not ours.
        missing = [key for key in _CALIBRATION_KEYS if key not in values]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        calibration = Calibration(**{key: values.pop(key) for key in _CALIBRATION_KEYS})
        return cls(calibration=calibration, **values)

    def describes(self, graph_file: Path) -> bool:
        """True when ``graph_file`` is one of the files this card was written for (by content)."""
        return file_sha256(graph_file) in self.sha256.values()

    def write(self, folder: Path) -> Path:
        return write_text(Path(folder) / MODEL_JSON, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def weights_file(graph_file: Path) -> Path | None:
    """The file holding ``graph_file``'s weights when they live beside it: OpenVINO's ``.bin``,
    ONNX's external data (when the export wrote it); None when the graph file holds them."""
    suffix = graph_file.suffix.lower()
    if suffix in OPENVINO_SUFFIXES:
        return graph_file.with_suffix(".bin")
    if suffix in ONNX_SUFFIXES and (graph_file.parent / ONNX_WEIGHTS).is_file():
        return graph_file.parent / ONNX_WEIGHTS
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (graphs can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_exported_model(model_path: str | Path | None) -> tuple[Path, ModelCard]:
    """The graph file ``task.model_path`` names and the card beside it; one ConfigError per problem.

    Reads files only (no torch, no ONNX Runtime), so it runs before anything heavy is imported.
    """
    if model_path is None or str(model_path).strip() == "":
        raise ConfigError("task.model_path is not set: give task.model_path=<run folder>/deployment_model/model.pt (or .onnx)")
    path = Path(model_path).expanduser()
    if path.is_dir() or path.name == MODEL_JSON:
        folder = path if path.is_dir() else path.parent
        found = [folder / name for name in GRAPH_FILES if (folder / name).is_file()]
        if not found:
            raise ConfigError(f"task.model_path '{path}': no {', '.join(GRAPH_FILES)} in '{folder}'; give a training "
                              f"run's deployment_model folder or a graph file in it")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"task.model_path '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES + OPENVINO_SUFFIXES:
        raise ConfigError(
            f"task.model_path '{path}': unknown model format '{suffix}'; give a TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}), "
            f"ONNX (.onnx) or OpenVINO (.xml) file from a training run's deployment_model folder"
        )
    if suffix in OPENVINO_SUFFIXES and not path.with_suffix(".bin").is_file():
        raise ConfigError(f"task.model_path '{path}': its weights '{path.with_suffix('.bin').name}' are missing beside it; "
                          f"copy the whole deployment_model folder")
    card_path = path.parent / MODEL_JSON
    if not card_path.is_file():
        raise ConfigError(f"no {MODEL_JSON} beside task.model_path '{path}': keep the exported model in its deployment_model folder")
    try:
        card = ModelCard.read(card_path)
    except (ValueError, TypeError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"'{card_path}' is not a quadra_ad model.json ({first})") from None
    if card.valid_area_mask and not (path.parent / card.valid_area_mask).is_file():
        raise ConfigError(
            f"'{card_path}' needs its valid area mask '{card.valid_area_mask}' beside it, and it is missing: copy "
            f"the whole deployment_model folder"
        )
    return path, card


def check_input_size(given, card: ModelCard) -> None:
    """Refuse an input size other than the one the graph was exported for."""
    if given is not None and [int(s) for s in given] != list(card.input_size):
        raise ConfigError(
            f"transforms.input_size={[int(s) for s in given]} but the model was exported for {list(card.input_size)} "
            f"(model.json input_size): remove transforms.input_size, the model's size is used"
        )


def preparation_from_card(card: ModelCard, folder: Path) -> dict[str, Any]:
    """The datamodule arguments that reproduce the training's preparation of images."""
    return {
        "image_size": list(card.input_size), "mean": list(card.mean), "std": list(card.std),
        "crop_area": list(card.crop_area) if card.crop_area is not None else None,
        "valid_area_mask": str(Path(folder) / card.valid_area_mask) if card.valid_area_mask else None,
    }
