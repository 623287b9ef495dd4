"""Raw model outputs for a set of images, gathered batch by batch.

Training and inference both end with one of these per split; thresholds, metrics and reports
are computed from it. Scores and maps are the raw model outputs (never normalised in place).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ScoredSet:
    """Parallel lists of image paths, labels (None = unknown), raw scores, maps and masks."""

    image_paths: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)

    def add_batch(self, image_paths, labels, scores, maps, masks) -> None:
        """Append one batch; ``labels``/``masks``/``maps`` may be None for the whole batch."""
        count = len(image_paths)
        scores = scores.detach().float().reshape(count).cpu()
        self.image_paths.extend(str(p) for p in image_paths)
        self.labels.extend([None] * count if labels is None else [int(v) for v in labels.reshape(count).tolist()])
        self.defect_types.extend(_defect_type(p) for p in image_paths)
        self.scores.extend(scores.tolist())
        if maps is not None:
            self.maps.extend(maps.detach().float().reshape(count, *maps.shape[-2:]).cpu().clone().unbind(0))
        if masks is not None:
            self.masks.extend(masks.detach().bool().reshape(count, *masks.shape[-2:]).cpu().unbind(0))

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def labelled(self) -> list[int]:
        """Indices of the images that have a label."""
        return [i for i, label in enumerate(self.labels) if label is not None]

    def score_tensor(self, indices: list[int] | None = None) -> torch.Tensor:
        indices = range(len(self)) if indices is None else indices
        return torch.tensor([self.scores[i] for i in indices], dtype=torch.float32)

    def label_tensor(self, indices: list[int]) -> torch.Tensor:
        return torch.tensor([self.labels[i] for i in indices], dtype=torch.long)

    @property
    def has_maps(self) -> bool:
        return len(self.maps) == len(self) and len(self) > 0

    @property
    def has_masks(self) -> bool:
        return len(self.masks) == len(self) and len(self) > 0

    def map_tensor(self, indices: list[int]) -> torch.Tensor:
        """Anomaly maps of ``indices`` stacked into (N, H, W)."""
        return torch.stack([self.maps[i] for i in indices])

    def mask_tensor(self, indices: list[int]) -> torch.Tensor:
        """Ground-truth masks of ``indices`` stacked into (N, H, W)."""
        return torch.stack([self.masks[i] for i in indices])


def _defect_type(image_path) -> str:
    return Path(str(image_path)).parent.name


def concat_scored_sets(*parts: ScoredSet) -> ScoredSet:
    """One set holding every image of ``parts`` in order (maps and masks only if all have them)."""
    combined = ScoredSet()
    for part in parts:
        combined.image_paths += part.image_paths
        combined.labels += part.labels
        combined.defect_types += part.defect_types
        combined.scores += part.scores
    if all(part.has_maps or len(part) == 0 for part in parts):
        combined.maps = [m for part in parts for m in part.maps]
    if all(part.has_masks or len(part) == 0 for part in parts):
        combined.masks = [m for part in parts for m in part.masks]
    return combined
