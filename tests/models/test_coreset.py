"""The flat-memory greedy k-center sampler and the PatchCore model that uses it."""

import itertools
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
    sample_coreset_spilled,
)
from quadra_ad.models.patchcore import (
    FORWARD_PIXELS,
    Patchcore,
    forward_slice,
    row_order,
    stack_releasing,
    subsample_memory_bank,
)
from quadra_ad.models.spilled_embedding import SpilledEmbedding
from quadra_ad.run import run
from tests.conftest import training_config


def _random(rows: int, dims: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dims, generator=torch.Generator().manual_seed(seed))


def _assert_greedy(features: torch.Tensor, indices: list[int]) -> None:
    """Each index after the first is a farthest point from those before it (float64 reference)."""
    points = features.double()
    min_distances = torch.full((len(points),), float("inf"), dtype=torch.float64)
    for previous, chosen in itertools.pairwise(indices):
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
    assert len(set(indices.tolist())) == expected and indices.min() >= 0 and indices.max() < rows


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
    import quadra_ad.models.spilled_embedding as spilled_embedding

    monkeypatch.setattr(spilled_embedding, "READ_BLOCK_BYTES", 3000)  # several blocks, one row not a divisor
    chunks = [_random(rows, 40, seed=rows) for rows in (300, 57, 410, 1)]
    order = row_order(chunks) if ordered else None
    torch.manual_seed(5), np.random.seed(5)
    expected = sample_coreset(stack_releasing(list(chunks), order), 0.1, seed)
    torch.manual_seed(5), np.random.seed(5)
    with SpilledEmbedding(tmp_path) as spilled:
        for chunk in chunks:
            spilled.append(chunk)
        assert torch.equal(spilled.row_sums(), torch.cat(chunks).sum(dim=1))
        got = sample_coreset_spilled(spilled, 0.1, seed, order)
        assert spilled.rows == 768 and os.fstat(spilled._file.fileno()).st_size == 768 * 40 * 4  # float32 rows
    assert torch.equal(got, expected)
    assert list(tmp_path.iterdir()) == []  # an unnamed file, gone once closed


def test_spilled_rows_come_back_by_block_and_by_index(tmp_path, monkeypatch):
    import quadra_ad.models.spilled_embedding as spilled_embedding

    monkeypatch.setattr(spilled_embedding, "READ_BLOCK_BYTES", 7 * 6 * 2)  # 7 float16 rows a block
    rows = _random(30, 6).half()
    with SpilledEmbedding(tmp_path) as spilled:
        spilled.append(rows[:11])
        spilled.append(rows[11:])
        blocks = [(first, block.clone()) for first, block in spilled.blocks()]
        assert [first for first, _ in blocks] == [0, 7, 14, 21, 28]
        assert torch.equal(torch.cat([block for _, block in blocks]), rows)
        wanted = torch.tensor([29, 3, 3, 17, 0, 8])
        assert torch.equal(spilled.read_rows(wanted), rows[wanted])


def test_spilled_chunks_must_agree_on_features_and_dtype(tmp_path):
    with SpilledEmbedding(tmp_path) as spilled:
        spilled.append(_random(4, 8))
        with pytest.raises(ValueError, match="6 torch.float32 features after 8"):
            spilled.append(_random(4, 6))
        with pytest.raises(ValueError, match="bfloat16"):
            spilled.append(_random(4, 8).bfloat16())
        with pytest.raises(ValueError, match="2-D"):
            spilled.append(torch.zeros(2, 2, 2))


def test_a_spilled_embedding_cut_short_is_an_error(tmp_path):
    with SpilledEmbedding(tmp_path) as spilled:
        spilled.append(_random(200, 8, seed=1))
        spilled._file.flush()
        spilled._file.truncate(10 * 8 * 4)  # the disk lost the tail
        with pytest.raises(OSError, match="ended early"):
            sample_coreset_spilled(spilled, 0.5)


def _patchcore(**kwargs) -> Patchcore:
    return Patchcore(backbone="resnet18", pre_trained=False, pre_processor=False, post_processor=False,
                     evaluator=False, visualizer=False, **kwargs)


def test_a_cpu_fit_in_a_trainer_spills_to_the_run_folder_and_leaves_nothing(tmp_path, monkeypatch):
    import quadra_ad.models.patchcore as patchcore

    spilled_in = []
    original = patchcore.sample_coreset_spilled

    def recording(spilled, *args, **kwargs):
        spilled_in.append(os.path.dirname(os.path.realpath(f"/proc/self/fd/{spilled._file.fileno()}")))
        return original(spilled, *args, **kwargs)

    monkeypatch.setattr(patchcore, "sample_coreset_spilled", recording)
    model = _patchcore(coreset_sampling_ratio=0.1)
    model.trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    model.model.embedding_store.extend([_random(160, 384, seed=i) for i in range(3)])
    model.fit()
    assert model.model.memory_bank.shape == (48, 384) and model.model.embedding_store == []
    assert spilled_in == [str(tmp_path.resolve())] and list(tmp_path.iterdir()) == []  # an unnamed file


def _training_steps(model: Patchcore, images: torch.Tensor, batch: int) -> None:
    from anomalib.data import ImageBatch

    for first in range(0, len(images), batch):
        model.training_step(ImageBatch(image=images[first:first + batch]))


@pytest.mark.parametrize("seed", [None, 7])
def test_training_rows_wait_on_disk_and_give_the_coreset_of_rows_in_memory(tmp_path, seed):
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    in_memory = _patchcore(coreset_sampling_ratio=0.25, coreset_seed=seed)
    on_disk = _patchcore(coreset_sampling_ratio=0.25, coreset_seed=seed)
    on_disk.model.load_state_dict(in_memory.model.state_dict())
    on_disk.trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)

    _training_steps(in_memory, images, 5)
    _training_steps(on_disk, images, 5)
    rows = torch.cat(in_memory.model.embedding_store)
    assert rows.shape == (12 * 8 * 8, 384)
    # Every row went to the run folder's disk as it came: none is held in memory.
    assert on_disk.model.embedding_store == [] and on_disk._spilled.rows == len(rows)
    assert os.fstat(on_disk._spilled._file.fileno()).st_size == rows.numel() * 4

    torch.manual_seed(3), np.random.seed(3)
    in_memory.fit()
    torch.manual_seed(3), np.random.seed(3)
    on_disk.fit()
    assert torch.equal(on_disk.model.memory_bank, in_memory.model.memory_bank)
    assert on_disk._spilled is None and list(tmp_path.iterdir()) == []


def test_a_run_stopped_before_the_fit_frees_the_spilled_rows(tmp_path):
    model = _patchcore()
    model.trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    _training_steps(model, torch.rand(2, 3, 32, 32), 2)
    spilled = model._spilled
    assert spilled.rows == 2 * 4 * 4
    model.teardown("fit")
    assert model._spilled is None and spilled._file.closed


@pytest.mark.parametrize("why", ["anomalib sampler", "no trainer", "bfloat16"])
def test_rows_stay_in_memory_where_they_cannot_wait_on_disk(tmp_path, why):
    model = _patchcore(coreset_sampler="anomalib" if why == "anomalib sampler" else "fast")
    if why != "no trainer":
        model.trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    if why == "bfloat16":
        model.model.to(torch.bfloat16)  # anomalib casts the images to the memory bank's dtype
    _training_steps(model, torch.rand(4, 3, 32, 32), 2)
    assert model._spilled is None and len(model.model.embedding_store) == 2


def test_training_batch_in_slices_stores_the_rows_of_the_whole_batch():
    from anomalib.data import ImageBatch

    model = _patchcore()
    images = torch.rand(35, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert forward_slice(images) == FORWARD_PIXELS // (32 * 32) == 16
    model.training_step(ImageBatch(image=images))
    assert len(model.model.embedding_store) == 3  # slices of 16, 16 and 3 images (no trainer: in memory)
    with torch.no_grad():
        whole = model.model(images)
    assert torch.equal(torch.cat(model.model.embedding_store[:3]), whole)


def test_a_slice_is_at_least_one_image():
    assert forward_slice(torch.empty(3, 3, 512, 512)) == 1
    assert forward_slice(torch.empty(3, 3, 128, 128)) == 1
    assert forward_slice(torch.empty(3, 3, 64, 64)) == 4


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
