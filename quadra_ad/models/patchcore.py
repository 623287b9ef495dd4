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

The class keeps anomalib's name so that run tags and model cards still say ``Patchcore``.
"""

import logging
import time
from typing import Any

import torch
from anomalib.models import Patchcore as AnomalibPatchcore
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from quadra_ad.models.coreset import greedy_k_center

log = logging.getLogger(__name__)

SAMPLERS = ("fast", "anomalib")


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

    def fit(self) -> None:
        """Turn the training embeddings into the coreset memory bank."""
        patches = sum(len(chunk) for chunk in self.model.embedding_store)
        started = time.perf_counter()
        if self.coreset_sampler == "anomalib":
            super().fit()
        else:
            subsample_memory_bank(self.model, self.coreset_sampling_ratio, self.coreset_seed)
        # scripts/benchmark.py reads this line from the run's log.
        log.info("PatchCore coreset (%s sampler): %d of %d patches in %.2f s", self.coreset_sampler,
                 len(self.model.memory_bank), patches, time.perf_counter() - started)


@torch.no_grad()
def subsample_memory_bank(model: PatchcoreModel, sampling_ratio: float, seed: int | None = None) -> None:
    """``model.memory_bank`` becomes the coreset of ``model.embedding_store``, which is emptied.

    The stacked embedding lives only in this function, so once the coreset is copied out it is
    freed, as with anomalib's ``subsample_embedding``. With a ``seed`` the rows are first put in
    an order of their own (see the module docstring).
    """
    if not model.embedding_store:
        raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
    embedding = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    if seed is not None:
        embedding = embedding.index_select(0, row_order(embedding))
    indices = greedy_k_center(embedding, sampling_ratio, seed)
    model.memory_bank = embedding.index_select(0, indices)


def row_order(embedding: torch.Tensor) -> torch.Tensor:
    """Indices that sort the rows of ``embedding`` by their sum: an order set by the rows' values,
    not by their positions (rows that tie are equal in practice, and then interchangeable)."""
    return torch.argsort(embedding.float().sum(dim=1), stable=True)
