"""quadra_ad.evaluation.aupro: the value of anomalib's AUPRO (to 1e-6), on every kind of mask set."""

import numpy as np
import pytest
import torch

from quadra_ad.evaluation.aupro import aupro, pro_curve, region_labels

TOLERANCE = 1e-6


def anomalib_aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    from anomalib.metrics.aupro import _AUPRO  # the implementation behind anomalib's public AUPRO

    reference = _AUPRO(fpr_limit=fpr_limit)
    reference.update(torch.as_tensor(maps).float(), torch.as_tensor(masks).int())
    return float(reference.compute())


def _rectangles(rng: np.random.Generator, n: int, size: int, per_image: int, empty_every: int = 0) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=bool)
    for index in range(n):
        if empty_every and index % empty_every == 0:
            continue  # a good image among the defective ones
        for _ in range(int(rng.integers(1, per_image + 1))):
            y, x = rng.integers(0, size - 2, 2)
            height, width = rng.integers(1, size // 3, 2)
            masks[index, y:y + height, x:x + width] = True
    return masks


def _maps(rng: np.random.Generator, masks: np.ndarray, lift: float, levels: int | None = None) -> np.ndarray:
    maps = rng.random(masks.shape).astype(np.float32)
    if levels:  # few distinct scores: many tied thresholds
        maps = np.round(maps * levels) / levels
    return (maps + lift * masks).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.8])
def test_random_maps_with_several_regions_per_image(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    masks = _rectangles(rng, n=int(rng.integers(2, 9)), size=int(rng.integers(12, 48)), per_image=4, empty_every=3)
    maps = _maps(rng, masks, lift=float(rng.uniform(0.0, 0.8)), levels=[None, 7, 50][seed % 3])
    assert aupro(maps, masks, fpr_limit) == pytest.approx(anomalib_aupro(maps, masks, fpr_limit), abs=TOLERANCE)


def test_touching_regions_are_one_region_as_in_anomalib():
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = masks[0, 6:9, 6:9] = True  # corners touch: one 8-connected region
    masks[0, 10:14, 2:5] = masks[0, 10:14, 5:8] = True  # sides touch: one region
    masks[1, 0:3, 13:16] = True  # on the image border
    assert region_labels(masks).max() == 3
    maps = _maps(np.random.default_rng(1), masks, lift=0.3)
    assert aupro(maps, masks) == pytest.approx(anomalib_aupro(maps, masks), abs=TOLERANCE)


def test_regions_of_very_different_sizes_weigh_the_same():
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 1:30, 1:30] = True  # large
    masks[1, 5, 5] = True  # one pixel
    maps = _maps(np.random.default_rng(2), masks, lift=0.4)
    maps[1, 5, 5] = 0.0  # the small region found last: PRO is stuck at one half for a while
    assert aupro(maps, masks) == pytest.approx(anomalib_aupro(maps, masks), abs=TOLERANCE)


@pytest.mark.parametrize("case", ["no region anywhere", "no background", "constant map", "perfect map"])
def test_edge_cases_match_anomalib(case):
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[1, 2:5, 2:5] = True
    maps = np.random.default_rng(3).random(masks.shape).astype(np.float32)
    if case == "no region anywhere":
        masks[:] = False
    elif case == "no background":
        masks[:] = True
    elif case == "constant map":
        maps[:] = 0.5
    else:
        maps = masks.astype(np.float32)
    assert aupro(maps, masks) == pytest.approx(anomalib_aupro(maps, masks), abs=TOLERANCE)


def test_tensors_with_a_channel_axis_are_accepted():
    rng = np.random.default_rng(4)
    masks = _rectangles(rng, n=4, size=20, per_image=2)
    maps = torch.from_numpy(_maps(rng, masks, lift=0.2)).unsqueeze(1)  # (N, 1, H, W), as models return
    assert aupro(maps, torch.from_numpy(masks)) == pytest.approx(anomalib_aupro(maps, masks), abs=TOLERANCE)


def test_the_curve_is_cut_at_the_limit():
    rng = np.random.default_rng(5)
    masks = _rectangles(rng, n=5, size=24, per_image=3)
    fpr, pro = pro_curve(_maps(rng, masks, lift=0.3), masks, fpr_limit=0.3)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and fpr[-1] == pytest.approx(0.3)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0) and pro[-1] <= 1.0


def test_maps_of_a_padim_fit_give_anomalib_s_value():
    """Real anomaly maps: a PaDiM fitted on generated textures, scoring parts with one or two defects."""
    from anomalib.models.image.padim.torch_model import PadimModel

    from quadra_ad.testing.synthetic import add_defect, texture

    rng, size = np.random.default_rng(0), 64
    torch.manual_seed(0)
    model = PadimModel(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False, n_features=32)
    as_batch = lambda images: torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).float()  # noqa: E731 - a one-line adapter read where it is used
    model.train()
    with torch.no_grad():
        model(as_batch([texture(rng, size) for _ in range(12)]))
    model.fit()
    model.eval()
    images, masks = [], []
    for index in range(10):
        image, mask = texture(rng, size), np.zeros((size, size), dtype=np.uint8)
        for _ in range(index % 3):  # good parts, one defect, two defects
            image, blob = add_defect(rng, image, contrast=0.25)
            mask |= blob
        images.append(image)
        masks.append(mask > 0)
    with torch.no_grad():
        maps = model(as_batch(images)).anomaly_map
    masks = np.stack(masks)
    value = aupro(maps, masks)
    assert value == pytest.approx(anomalib_aupro(maps, masks), abs=TOLERANCE)
    assert 0.0 < value < 1.0
