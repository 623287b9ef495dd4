"""The flat-memory greedy k-center sampler and the PatchCore model that uses it."""

import os

import numpy as np
import pytest
import torch
from anomalib.models.components import KCenterGreedy
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection
from lightning.pytorch import Trainer
from torch.profiler import ProfilerActivity, profile

from quadra_ad.models.coreset import (
    coreset_size,
    greedy_k_center,
    greedy_k_center_indices,
    project,
    sample_coreset,
    sample_coreset_spilling,
)
from quadra_ad.models.patchcore import FORWARD_SLICE, Patchcore, row_order, stack_releasing, subsample_memory_bank
from quadra_ad.run import run
from tests.conftest import training_config


def _random(rows: int, dims: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dims, generator=torch.Generator().manual_seed(seed))


def _assert_greedy(features: torch.Tensor, indices: list[int]) -> None:
    """Each index after the first is a farthest point from those before it (float64 reference)."""
    points = features.double()
    min_distances = torch.full((len(points),), float("inf"), dtype=torch.float64)
    for previous, chosen in zip(indices, indices[1:]):
        min_distances = torch.minimum(min_distances, (points - points[previous]).norm(dim=1))
        # float32 distances may break a near-tie the other way: compare distances, not indices.
        assert min_distances[chosen] >= min_distances.max() - 1e-4, (chosen, int(min_distances.argmax()))


def _seed_all(seed: int) -> None:
    # anomalib's projection draws from torch's and numpy's global generators.
    torch.manual_seed(seed)
    np.random.seed(seed)


def test_indices_are_greedy_k_center_on_the_given_features():
    points = _random(301, 16)  # not a multiple of the row blocks: the leftover row counts too
    indices = greedy_k_center_indices(points, 30, start=5).tolist()
    assert indices[0] == 5 and len(set(indices)) == 30
    _assert_greedy(points, indices)


def test_coreset_is_greedy_k_center_in_the_projected_space():
    embedding = _random(300, 512).relu()
    indices = greedy_k_center(embedding, 0.1, seed=3).tolist()
    # The same seed gives the same projection and starting row (see greedy_k_center).
    _seed_all(3)
    features = project(embedding)
    start = int(torch.randint(high=300, size=(1,)))
    assert features.shape == (300, 140) and indices[0] == start and len(set(indices)) == 30
    _assert_greedy(features, indices)


def test_projection_is_anomalibs(monkeypatch):
    monkeypatch.setattr("quadra_ad.models.coreset.PROJECTION_CHUNK", 64)  # several chunks
    embedding = _random(300, 384).relu()
    _seed_all(0)
    ours = project(embedding.half())
    _seed_all(0)
    theirs = SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
    assert ours.dtype == torch.float32 and ours.stride() == (1, 300)
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)  # ours from half-precision input


def test_same_draws_as_anomalib_give_the_same_coreset():
    embedding = _random(2000, 384).relu()
    _seed_all(5)
    theirs = KCenterGreedy(embedding, sampling_ratio=0.05).select_coreset_idxs()
    _seed_all(5)
    ours = greedy_k_center(embedding, 0.05).tolist()
    # float32 rounding may break a near-tie the other way; the coreset stays the same set, or nearly.
    assert ours[0] == theirs[0] and len(set(ours) & set(theirs)) >= 0.95 * len(theirs)


@pytest.mark.parametrize(("rows", "ratio", "expected"), [(300, 0.1, 30), (300, 0.001, 1), (7, 1.0, 7), (1, 0.5, 1)])
def test_coreset_size_is_ratio_times_rows_and_at_least_one(rows, ratio, expected):
    indices = greedy_k_center(_random(rows, 8), ratio, seed=0)
    assert indices.dtype == torch.long and indices.shape == (expected,)
    assert len(set(indices.tolist())) == expected and 0 <= indices.min() and indices.max() < rows


def test_duplicate_rows_are_never_chosen_twice():
    points = _random(5, 4).repeat(4, 1)  # 20 rows, 5 distinct
    indices = greedy_k_center(points, 0.5, seed=0).tolist()
    assert len(set(indices)) == 10


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_invalid_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="sampling_ratio"):
        coreset_size(100, ratio)


def test_same_seed_same_coreset_and_global_generators_untouched():
    embedding = _random(1000, 256).relu()
    _seed_all(0)
    first = greedy_k_center(embedding, 0.05, seed=11)
    assert torch.equal(first, greedy_k_center(embedding, 0.05, seed=11))
    assert not torch.equal(first, greedy_k_center(embedding, 0.05, seed=12))
    after = (torch.rand(1), np.random.rand())
    _seed_all(0)
    assert after == (torch.rand(1), np.random.rand())


def test_coreset_is_rows_of_the_original_embedding():
    embedding = _random(1000, 256).relu().half()
    coreset = sample_coreset(embedding, 0.05, seed=0)
    assert coreset.dtype == torch.float16 and coreset.shape == (50, 256)
    assert torch.equal(coreset, embedding[greedy_k_center(embedding, 0.05, seed=0)])


def test_memory_is_flat_across_steps():
    """Bytes allocated by the greedy loop do not grow with the number of steps."""
    features = project(_random(5000, 384))

    def allocated(k: int) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            greedy_k_center_indices(features, k, start=0)
        return sum(event.cpu_memory_usage for event in prof.events() if event.cpu_memory_usage > 0)

    # 190 more steps: only 8 bytes per index may be added (anomalib's loop adds 5000 x 210 floats per step).
    assert allocated(200) - allocated(10) <= 190 * 8 + 1024


@pytest.mark.parametrize("sampler", ["fast", "anomalib"])
def test_fit_fills_the_memory_bank_and_empties_the_store(sampler):
    model = Patchcore(backbone="resnet18", pre_trained=False, coreset_sampler=sampler, coreset_sampling_ratio=0.1,
                      pre_processor=False, post_processor=False, evaluator=False, visualizer=False)
    model.model.embedding_store.extend([_random(160, 384, seed=i) for i in range(3)])
    model.fit()
    assert model.model.memory_bank.shape == (48, 384) and model.model.embedding_store == []


@pytest.mark.parametrize("ordered", [False, True])
def test_stacking_releases_the_chunks_and_keeps_the_rows(ordered):
    chunks = [_random(rows, 16, seed=rows) for rows in (40, 7, 25)]
    expected = torch.cat(chunks)
    order = row_order(chunks) if ordered else None
    store = list(chunks)
    stacked = stack_releasing(store, order)
    assert store == []
    assert torch.equal(stacked, expected[order] if ordered else expected)
    assert torch.equal(row_order(chunks), row_order(expected))


@pytest.mark.parametrize(("ordered", "seed"), [(False, None), (False, 4), (True, 4)])
def test_the_embedding_waiting_on_disk_gives_the_same_coreset(tmp_path, ordered, seed, monkeypatch):
    import quadra_ad.models.coreset as coreset

    monkeypatch.setattr(coreset, "READ_BACK_BYTES", 3000)  # several read-back blocks, one row not a divisor
    chunks = [_random(rows, 40, seed=rows) for rows in (300, 57, 410, 1)]
    order = row_order(chunks) if ordered else None
    torch.manual_seed(5), np.random.seed(5)
    expected = sample_coreset(stack_releasing(list(chunks), order), 0.1, seed)
    torch.manual_seed(5), np.random.seed(5)
    store = list(chunks)
    with (tmp_path / "spill").open("w+b") as spill:
        got = sample_coreset_spilling(store, 0.1, spill, seed, order)
    assert store == [] and torch.equal(got, expected)
    assert (tmp_path / "spill").stat().st_size == 768 * 40 * 4  # the whole embedding, as float32 rows


def test_a_spilled_embedding_cut_short_is_an_error(tmp_path):
    chunks = [_random(200, 8, seed=1)]
    with (tmp_path / "spill").open("w+b") as spill:
        original_flush = spill.flush
        spill.flush = lambda: (original_flush(), spill.truncate(10 * 8 * 4))  # the disk lost the tail
        with pytest.raises(OSError, match="ended early"):
            sample_coreset_spilling(chunks, 0.5, spill)


def test_a_cpu_fit_in_a_trainer_spills_to_the_run_folder_and_leaves_nothing(tmp_path, monkeypatch):
    import quadra_ad.models.patchcore as patchcore

    spilled_in = []
    original = patchcore.sample_coreset_spilling

    def recording(store, ratio, spill, *args, **kwargs):
        spilled_in.append(os.path.dirname(os.path.realpath(f"/proc/self/fd/{spill.fileno()}")))
        return original(store, ratio, spill, *args, **kwargs)

    monkeypatch.setattr(patchcore, "sample_coreset_spilling", recording)
    model = Patchcore(backbone="resnet18", pre_trained=False, coreset_sampling_ratio=0.1, pre_processor=False,
                      post_processor=False, evaluator=False, visualizer=False)
    model.trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    model.model.embedding_store.extend([_random(160, 384, seed=i) for i in range(3)])
    model.fit()
    assert model.model.memory_bank.shape == (48, 384) and model.model.embedding_store == []
    assert spilled_in == [str(tmp_path.resolve())] and list(tmp_path.iterdir()) == []  # an unnamed file


def test_training_batch_in_slices_stores_the_rows_of_the_whole_batch():
    from anomalib.data import ImageBatch

    model = Patchcore(backbone="resnet18", pre_trained=False, pre_processor=False, post_processor=False,
                      evaluator=False, visualizer=False)
    images = torch.rand(2 * FORWARD_SLICE + 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.training_step(ImageBatch(image=images))
    assert len(model.model.embedding_store) == 3  # slices of 8, 8 and 3 images
    with torch.no_grad():
        whole = model.model(images)
    assert torch.equal(torch.cat(model.model.embedding_store[:3]), whole)


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="coreset_sampler"):
        Patchcore(backbone="resnet18", pre_trained=False, coreset_sampler="slow")


def test_empty_store_is_an_error():
    model = Patchcore(backbone="resnet18", pre_trained=False, visualizer=False)
    with pytest.raises(ValueError, match="empty"):
        subsample_memory_bank(model.model, 0.1)


def test_patchcore_trains_with_the_fast_coreset(segmentation_dataset, tmp_path):
    cfg = training_config("base/anomaly/patchcore", segmentation_dataset, None, "backbone=resnet18", "export.types=[]")
    task = run(cfg, output_dir=tmp_path / "run")
    assert isinstance(task.model, Patchcore) and task.model.coreset_sampler == "fast"
    # 12 training images of 32 px: layer2 of ResNet-18 gives 4 x 4 patches each, 192 rows.
    assert task.model.model.memory_bank.shape == (int(12 * 16 * 0.1), 128 + 256)
    assert task.model.model.embedding_store == []
    assert task.metrics["image_AUROC"] > 0.5  # the coreset still tells the defects apart
