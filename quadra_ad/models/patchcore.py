"""PatchCore whose memory-bank coreset is chosen by :mod:`quadra_ad.models.coreset`.

anomalib's ``Patchcore.fit`` (run once, at the end of the training epoch) stacks the stored
training embeddings and subsamples them with ``KCenterGreedy``, which on CPU needs seconds to
minutes and, through the allocator, gigabytes of RSS. This subclass replaces only that step
with the flat-memory sampler; ``coreset_sampler: anomalib`` keeps the stock one (for
comparisons). The torch model (``self.model``, what the exporter traces) stays anomalib's
``PatchcoreModel``, so checkpoints, export and inference are unchanged.

``coreset_seed`` (default None: the global generators, as anomalib draws) makes the coreset a
function of the training embeddings alone, not of the order in which the sampler delivered them:
the rows are put in a fixed order before the seeded draw of the first patch. A DDP run, whose
sampler deals the images in another order than a 1-process run's, then keeps the same coreset.

Memory: what a fit must hold is the embedding (patches x features x 4 bytes) once training ends,
and the embedding's random projection while the coreset is searched. On CPU the embedding waits
on the run folder's disk during the search (an unnamed file, gone with the process) and only the
coreset rows are read back, so the search holds the projection instead of both (for ResNet-18's
384 features the projection keeps 245-314: holding both was 1.6-1.8x the embedding). These also
made a CPU fit go well above the embedding, and are done differently here, with the same values
(``scripts/patchcore_memory.py`` measures it):

- anomalib ``vstack``s the per-batch embeddings while the list still holds them: twice the
  embedding at once. Here the rows are copied into one buffer a chunk at a time, each chunk
  released once copied (the buffer's pages become resident only as they are written).
- Freed heap blocks (activations, copied chunks) stay resident under glibc unless trimmed;
  they are trimmed after each training step and each copied chunk (:func:`release_freed_memory`).
- On CPU a training batch of 32 images ran through the backbone at once; its activations (for
  ResNet-18 at 128 px, ~50 MB, more than the embedding of 80 images at 1.5x) came on top of the
  stored rows. Training batches go through in slices of ``FORWARD_SLICE`` images instead; the
  backbone is in eval mode, so every image's features are the same as in a whole batch.

The class keeps anomalib's name so that run tags and model cards still say ``Patchcore``.
"""

import ctypes
import functools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from anomalib.models import Patchcore as AnomalibPatchcore
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from quadra_ad.models.coreset import greedy_k_center, inverse_permutation, sample_coreset_spilling

log = logging.getLogger(__name__)

SAMPLERS = ("fast", "anomalib")
#: Images per backbone pass while collecting the training embedding on CPU (see the module docstring).
FORWARD_SLICE = 8


class Patchcore(AnomalibPatchcore):
    """anomalib's Patchcore plus ``coreset_sampler`` (``fast``, the default, or ``anomalib``) and
    ``coreset_seed`` (fast sampler only; see the module docstring)."""

    def __init__(self, *args: Any, coreset_sampler: str = "fast", coreset_seed: int | None = None,
                 **kwargs: Any) -> None:
        if coreset_sampler not in SAMPLERS:
            raise ValueError(f"coreset_sampler must be one of {', '.join(SAMPLERS)}; got '{coreset_sampler}'")
        if coreset_seed is not None and coreset_sampler != "fast":
            raise ValueError("coreset_seed needs coreset_sampler=fast (anomalib's sampler draws from the global generators)")
        super().__init__(*args, **kwargs)
        self.coreset_sampler = coreset_sampler
        self.coreset_seed = coreset_seed

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Store the batch's embedding; on CPU a slice of the batch at a time (see the module docstring)."""
        if self.device.type != "cpu":
            return super().training_step(batch, *args, **kwargs)
        for images in batch.image.split(FORWARD_SLICE):
            self.model(images)
        release_freed_memory()
        # anomalib's dummy loss, for Lightning.
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def fit(self) -> None:
        """Turn the training embeddings into the coreset memory bank."""
        patches = sum(len(chunk) for chunk in self.model.embedding_store)
        started = time.perf_counter()
        if self.coreset_sampler == "anomalib":
            super().fit()
        else:
            subsample_memory_bank(self.model, self.coreset_sampling_ratio, self.coreset_seed, self._spill_dir())
        # scripts/benchmark.py reads this line from the run's log.
        log.info("PatchCore coreset (%s sampler): %d of %d patches in %.2f s", self.coreset_sampler,
                 len(self.model.memory_bank), patches, time.perf_counter() - started)

    def _spill_dir(self) -> Path | None:
        """Where the embedding waits while the coreset is searched: the run folder's disk (not the
        temporary folder, which may itself be memory). None on an accelerator, or without a trainer."""
        if self.device.type != "cpu" or self._trainer is None:
            return None
        return Path(self.trainer.default_root_dir)


#: Embedding dtypes that can wait on disk (through NumPy) while the coreset is searched.
SPILLABLE = (torch.float32, torch.float16, torch.float64)


@torch.no_grad()
def subsample_memory_bank(model: PatchcoreModel, sampling_ratio: float, seed: int | None = None,
                          spill_dir: Path | None = None) -> None:
    """``model.memory_bank`` becomes the coreset of ``model.embedding_store``, which is emptied.

    With ``spill_dir`` the embedding waits in an unnamed file there while the coreset is searched
    on its projection (:func:`~quadra_ad.models.coreset.sample_coreset_spilling`); the file is
    gone when the process ends, however it ends. Otherwise the stacked embedding lives only in
    this function, so once the coreset is copied out it is freed, as with anomalib's
    ``subsample_embedding``. With a ``seed`` the rows are first put in an order of their own
    (see the module docstring); the coreset is the same either way.
    """
    if not model.embedding_store:
        raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
    order = None
    if seed is not None:
        order = row_order(model.embedding_store)
    if spill_dir is not None and model.embedding_store[0].dtype in SPILLABLE:
        with tempfile.TemporaryFile(dir=spill_dir, prefix=".patchcore-embedding-") as spill:
            model.memory_bank = sample_coreset_spilling(model.embedding_store, sampling_ratio, spill, seed, order,
                                                        after_each_chunk=release_freed_memory)
        return
    embedding = stack_releasing(model.embedding_store, order)
    indices = greedy_k_center(embedding, sampling_ratio, seed)
    model.memory_bank = embedding.index_select(0, indices)


def stack_releasing(store: list[torch.Tensor], order: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.cat(store)`` (rows taken in ``order`` if given: ``cat(store)[order]``), emptying
    ``store`` as it goes: each chunk is dropped once copied, so the rows are held about once, not
    twice. The caller must hold no other reference to the chunks."""
    rows = sum(len(chunk) for chunk in store)
    embedding = torch.empty(rows, *store[0].shape[1:], dtype=store[0].dtype, device=store[0].device)
    # Row i of the concatenation goes to position[i]: i itself, or where ``order`` puts it.
    position = None if order is None else inverse_permutation(order)
    start = 0
    store.reverse()  # pop() from the end is O(1) and keeps the original order
    while store:
        chunk = store.pop()
        if position is None:
            embedding[start:start + len(chunk)].copy_(chunk)
        else:
            embedding.index_copy_(0, position[start:start + len(chunk)], chunk)
        start += len(chunk)
        del chunk
        release_freed_memory()
    return embedding


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc only; elsewhere nothing).

    Blocks under glibc's mmap threshold (up to 32 MB) come from its heap, and when freed in the
    middle of it (between stored embedding chunks) stay resident: the activations of every
    backbone pass and the chunks copied into the stacked embedding would otherwise add up to
    about one more embedding of RSS. ``malloc_trim`` returns those pages (a few ms).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` from the running process, or None (musl, macOS, Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


def row_order(embedding: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Indices that sort the rows of ``embedding`` (a tensor, or chunks to be concatenated) by
    their sum: an order set by the rows' values, not by their positions (rows that tie are equal
    in practice, and then interchangeable)."""
    chunks = [embedding] if isinstance(embedding, torch.Tensor) else embedding
    return torch.argsort(torch.cat([chunk.float().sum(dim=1) for chunk in chunks]), stable=True)
