"""``model.json``: everything needed to use an exported graph correctly, beside the graph.

Input size and normalisation stats say how to prepare images; the :class:`Calibration`
(thresholds and score ranges, all raw, from the validation set) says how to read the outputs.
The export step fills one in and writes it; every way of running an exported model reads it.
Its keys are flat (``image_threshold``, ``pixel_min`` … at the top level), as they always were.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from quadra_ad.thresholds import Calibration

MODEL_JSON = "model.json"
SCHEMA_VERSION = 1
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
    input_channels: int = 3
    input_name: str = "image"
    outputs: list[str] = field(default_factory=lambda: ["pred_score", "anomaly_map"])
    threshold_rule: str = "score >= threshold is anomalous"
    files: dict[str, str] = field(default_factory=dict)
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

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MODEL_JSON
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
