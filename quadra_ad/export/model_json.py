"""``model.json``: everything needed to use an exported graph correctly, beside the graph.

Input size and normalisation stats say how to prepare images; thresholds and score ranges
(all raw, from the validation set) say how to read the outputs.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"
SCHEMA_VERSION = 1


@dataclass
class ModelCard:
    """The contents of ``model.json``."""

    model_class: str
    input_size: list[int]
    mean: list[float]
    std: list[float]
    image_threshold: float
    pixel_threshold: float | None
    image_min: float
    image_max: float
    pixel_min: float | None
    pixel_max: float | None
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

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MODEL_JSON
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> "ModelCard":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an exported model."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("quadra_ad", "anomalib", "torch", "torchvision", "lightning", "timm", "onnx", "onnxruntime"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
