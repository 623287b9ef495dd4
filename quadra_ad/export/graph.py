"""The exportable graph: an anomalib torch model reduced to ``image -> (score, map)``.

It returns raw (un-normalised) scores and anomaly maps. Thresholds and normalisation live in
``model.json`` and are applied outside, so inference can reuse or re-tune them freely.
"""

import torch
from torch import nn

OUTPUT_NAMES = ("pred_score", "anomaly_map")
INPUT_NAME = "image"


class AnomalyGraph(nn.Module):
    """Wraps ``AnomalibModule.model`` (a plain ``nn.Module``) in eval mode.

    Input: normalised images ``(B, 3, H, W)``. Outputs: ``pred_score (B,)`` and
    ``anomaly_map (B, 1, H, W)``, both raw. Image-level models (no map, e.g. DFKDE) return
    their score broadcast over the map so every graph has the same two outputs;
    ``model.json`` then says ``has_anomaly_map: false`` and the map is ignored.
    """

    def __init__(self, torch_model: nn.Module) -> None:
        super().__init__()
        self.model = torch_model.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(image)
        anomaly_map = output.anomaly_map
        pred_score = output.pred_score
        if anomaly_map is None:
            score = pred_score.reshape(image.shape[0], 1, 1, 1)
            anomaly_map = score.expand(image.shape[0], 1, image.shape[2], image.shape[3])
        elif anomaly_map.dim() == 3:
            anomaly_map = anomaly_map.unsqueeze(1)
        if pred_score is None:
            pred_score = torch.amax(anomaly_map, dim=(-3, -2, -1))
        return pred_score.reshape(image.shape[0]), anomaly_map
