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

from quadra_ad.thresholds import Calibration

MODEL_JSON = "model.json"
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
        path = Path(folder) / MODEL_JSON
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (graphs can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
