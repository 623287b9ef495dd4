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

Memory: on CPU, in a one-process run, the training rows go to an unnamed file in the run folder
as the backbone produces them (:class:`~quadra_ad.models.spilled_embedding.SpilledEmbedding`),
and the coreset search holds only their random projection
(:func:`~quadra_ad.models.coreset.sample_coreset_spilled`; 0.6-0.8x of a ResNet-18 embedding,
about 0.2x of a Wide-ResNet-50 one) instead of the embedding (patches x features x 4 bytes),
which anomalib holds twice over. The coreset is the same. What else a CPU fit held is done
differently here, with the same values (``scripts/patchcore_memory.py`` measures it):

- A training batch of 32 images ran through the backbone at once; its activations (for ResNet-18
  at 256 px, over 200 MB: more than the embedding of 80 images) came on top of everything else.
  Batches go through a few images at a time (:func:`forward_slice`: ``FORWARD_PIXELS`` pixels per
  pass); the backbone is in eval mode, so every image's features are the same as in a whole batch.
- Freed heap blocks (activations, written chunks) stay resident under glibc unless trimmed; they
  are trimmed after each training step and after the coreset search (:func:`release_freed_memory`).
- Where the rows stay in memory (an accelerator, a DDP run, whose processes exchange them, or
  ``coreset_sampler: anomalib``), anomalib ``vstack``s them while its list still holds them:
  twice the embedding at once. The fast sampler copies them into one buffer a chunk at a time,
  each chunk released once copied.

The class keeps anomalib's name so that run tags and model cards still say ``Patchcore``.
"""

import ctypes
import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from anomalib.models import Patchcore as AnomalibPatchcore
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from quadra_ad.models.coreset import greedy_k_center, inverse_permutation, sample_coreset_spilled
from quadra_ad.models.spilled_embedding import SPILLABLE, SpilledEmbedding, sums_of_rows
from quadra_ad.runtime.distributed import world_size

log = logging.getLogger(__name__)

SAMPLERS = ("fast", "anomalib")
#: Image pixels per backbone pass while collecting the training embedding on CPU (see the module
#: docstring): one 128 x 128 image, four 64 x 64 ones; never less than one image.
FORWARD_PIXELS = 128 * 128


def forward_slice(images: torch.Tensor) -> int:
    """How many of ``images`` (``n x c x h x w``) go through the backbone at once on CPU."""
    return max(1, FORWARD_PIXELS // (images.shape[-2] * images.shape[-1]))


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
        self._spilled: SpilledEmbedding | None = None

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Store the batch's embedding; on CPU a slice of the batch at a time, written to the run
        folder's disk where it can be (see the module docstring)."""
        if self.device.type != "cpu":
            return super().training_step(batch, *args, **kwargs)
        store = self.model.embedding_store
        for images in batch.image.split(forward_slice(batch.image)):
            self.model(images)
            spilled = self._spilled_embedding(store[-1])
            if spilled is not None:
                try:
                    spilled.append(store.pop())
                except BaseException:
                    # A failed write (a full disk) frees the rows' disk at once, so that what the
                    # run writes next (its record) finds the space.
                    self._drop_spilled()
                    raise
        release_freed_memory()
        # anomalib's dummy loss, for Lightning.
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def _spilled_embedding(self, chunk: torch.Tensor) -> SpilledEmbedding | None:
        """Where the training rows wait until the fit: a file in the run folder, or None (memory).

        In memory under DDP (the processes exchange their rows before the fit), with anomalib's
        sampler (it stacks them itself), without a trainer and for dtypes NumPy cannot write."""
        if self._spilled is None:
            directory = self._spill_dir()
            if (directory is None or self.coreset_sampler != "fast" or world_size() > 1
                    or chunk.dtype not in SPILLABLE or len(self.model.embedding_store) > 1):
                return None
            self._spilled = SpilledEmbedding(directory)
        return self._spilled

    def fit(self) -> None:
        """Turn the training embeddings into the coreset memory bank."""
        spilled, self._spilled = self._spilled, None
        patches = sum(len(chunk) for chunk in self.model.embedding_store) + (spilled.rows if spilled else 0)
        started = time.perf_counter()
        if self.coreset_sampler == "anomalib":
            super().fit()
        else:
            subsample_memory_bank(self.model, self.coreset_sampling_ratio, self.coreset_seed, self._spill_dir(),
                                  spilled)
        # scripts/benchmark.py reads this line from the run's log.
        log.info("PatchCore coreset (%s sampler): %d of %d patches in %.2f s", self.coreset_sampler,
                 len(self.model.memory_bank), patches, time.perf_counter() - started)

    def teardown(self, stage: str) -> None:
        """A run stopped before the fit frees the rows' disk now, not when the module is collected."""
        self._drop_spilled()
        super().teardown(stage)

    def _drop_spilled(self) -> None:
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None

    def _spill_dir(self) -> Path | None:
        """Where the training rows wait until the coreset is chosen: the run folder's disk (not the
        temporary folder, which may itself be memory). None on an accelerator, or without a trainer."""
        if self.device.type != "cpu" or self._trainer is None:
            return None
        return Path(self.trainer.default_root_dir)


@torch.no_grad()
def subsample_memory_bank(model: PatchcoreModel, sampling_ratio: float, seed: int | None = None,
                          spill_dir: Path | None = None, spilled: SpilledEmbedding | None = None) -> None:
    """``model.memory_bank`` becomes the coreset of the training rows: those already in
    ``spilled`` (if given), then those of ``model.embedding_store``, which is emptied.

    With ``spilled`` or ``spill_dir`` the rows wait in an unnamed file while the coreset is
    searched on their projection (:func:`~quadra_ad.models.coreset.sample_coreset_spilled`); the
    file is closed (gone) on return. Otherwise the stacked embedding lives only in this function,
    so once the coreset is copied out it is freed, as with anomalib's ``subsample_embedding``.
    With a ``seed`` the rows are first put in an order of their own (see the module docstring);
    the coreset is the same either way.
    """
    store = model.embedding_store
    if spilled is None and spill_dir is not None and store and store[0].dtype in SPILLABLE:
        spilled = SpilledEmbedding(spill_dir)
    if spilled is not None:
        with spilled:
            store.reverse()  # pop() from the end is O(1) and keeps the original order
            while store:
                spilled.append(store.pop())
                release_freed_memory()
            if not spilled.rows:
                raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
            order = None if seed is None else order_by_sums(spilled.row_sums())
            model.memory_bank = sample_coreset_spilled(spilled, sampling_ratio, seed, order)
        release_freed_memory()
        return
    if not store:
        raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
    order = None if seed is None else row_order(store)
    embedding = stack_releasing(store, order)
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
    return order_by_sums(torch.cat([sums_of_rows(chunk) for chunk in chunks]))


def order_by_sums(row_sums: torch.Tensor) -> torch.Tensor:
    """:func:`row_order` from the rows' sums alone."""
    return torch.argsort(row_sums, stable=True)
