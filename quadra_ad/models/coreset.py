"""Greedy k-center coreset selection with flat memory, for PatchCore's memory bank.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
https://arxiv.org/abs/2106.08265, section 3.2) keeps a coreset of the training patch
features: a sparse random projection (Johnson-Lindenstrauss) shrinks the features, then the
greedy k-center rule (Sener & Savarese, https://arxiv.org/abs/1708.00489) starts from a random
patch and repeatedly adds the patch farthest from everything already chosen. The coreset is
made of rows of the original, unprojected features.

This is anomalib's ``KCenterGreedy`` selection, computed differently:

- anomalib computes every step's distances as ``norm(features - center)``, which allocates a
  fresh ``n x k`` tensor per step (plus the distance vector). On CPU glibc keeps the freed
  blocks, so a 20480-patch fit grew to 24 GB of RSS; forcing those blocks back to the OS
  (``MALLOC_MMAP_THRESHOLD_``) keeps RSS down but makes every step pay for fresh pages.
- Here every buffer is allocated once before the loop. A step is one matrix-vector product
  written into a preallocated vector (``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` with the squared
  norms computed once), an in-place minimum and an argmax: memory stays flat and the loop is
  bound by one read of the projected features per step. The features are kept column-major
  (feature-major) because CPU BLAS runs that product about 3.5x faster than on row-major
  rows, and the product is batched over blocks of rows so that it uses every core. No step
  calls ``.item()``, so on an accelerator the loop never waits.

The random draws are anomalib's, in anomalib's order: the projection matrix comes from
anomalib's ``SparseRandomProjection(eps=0.9)`` and the first patch from ``torch.randint`` on
the embedding's device. So under the same seed both samplers pick the same coreset, up to
float32 rounding breaking a near-tie the other way (distances are compared squared and from
the expansion above, not from the differences). Chosen patches are marked ``-inf`` rather
than 0, so an index is never chosen twice, even among duplicate patches.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

from quadra_ad.models.spilled_embedding import SpilledEmbedding

#: anomalib's PatchCore projects with ``SparseRandomProjection(eps=0.9)``.
DEFAULT_EPS = 0.9
#: Rows projected at a time: bounds the float32 copy of half-precision features.
PROJECTION_CHUNK = 16384


def coreset_size(n_rows: int, sampling_ratio: float) -> int:
    """How many rows a ``sampling_ratio`` keeps out of ``n_rows`` (at least one)."""
    if not 0.0 < sampling_ratio <= 1.0:
        raise ValueError(f"sampling_ratio must be in (0, 1], got {sampling_ratio}")
    if n_rows <= 0:
        raise ValueError("cannot select a coreset from an empty embedding")
    return max(1, int(n_rows * sampling_ratio))


def projection_matrix(n_rows: int, n_features: int, eps: float = DEFAULT_EPS,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """anomalib's sparse random projection matrix (``k x n_features``, float32) for ``n_rows`` rows,
    drawn exactly as anomalib's ``KCenterGreedy`` draws it (torch's and numpy's global generators).
    Only the embedding's shape decides it, so the embedding itself need not be at hand."""
    shape_only = torch.empty(1, 1, device=device).expand(n_rows, n_features)
    return SparseRandomProjection(eps=eps).fit(shape_only).sparse_random_matrix.to(torch.float32)


@torch.no_grad()
def project(embedding: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``embedding`` (``n x d``) through anomalib's sparse random projection, as float32 ``n x k``.

    The result is a view of column-major storage, the layout :func:`greedy_k_center_indices` is
    fastest on.
    """
    matrix = projection_matrix(*embedding.shape, eps, embedding.device)
    columns = torch.empty(matrix.shape[0], embedding.shape[0], dtype=torch.float32, device=embedding.device)
    _project_into(columns, matrix, embedding, 0)
    return columns.T


def _project_into(columns: torch.Tensor, matrix: torch.Tensor, rows: torch.Tensor, first: int,
                  position: torch.Tensor | None = None) -> None:
    """Column ``first + i`` of ``columns`` (column ``position[first + i]`` when given) becomes
    ``matrix @ rows[i]``. In pieces, so that half-precision rows are never copied to float32 all
    at once."""
    for part in range(0, len(rows), PROJECTION_CHUNK):
        piece = rows[part:part + PROJECTION_CHUNK].to(torch.float32)
        at = first + part
        if position is None:
            torch.matmul(matrix, piece.T, out=columns[:, at:at + len(piece)])
        else:
            columns.index_copy_(1, position[at:at + len(piece)], torch.matmul(matrix, piece.T))


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """``position`` with ``position[order[j]] == j``: where row ``i`` of the unordered rows goes."""
    return torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))


def _column_major(features: torch.Tensor) -> torch.Tensor:
    """``features`` with the same values, stored feature-major (a no-op when it already is)."""
    return features if features.T.is_contiguous() else features.T.contiguous().T


@torch.no_grad()
def greedy_k_center_indices(features: torch.Tensor, k: int, start: int | torch.Tensor) -> torch.Tensor:
    """Greedy k-center on ``features`` (``n x d``) from row ``start``; ``k`` row indices.

    Index ``i > 0`` is the row with the largest distance to its nearest row among indices
    ``0 .. i-1``. Every tensor the loop touches is allocated before it; features that are not
    float32 column-major are copied once to that (see the module docstring).
    """
    features = _column_major(features.to(torch.float32))
    n_rows, n_dims = features.shape
    if not 1 <= k <= n_rows:
        raise ValueError(f"k must be in [1, {n_rows}], got {k}")
    device = features.device
    # vector_norm reduces without materialising features ** 2.
    squared_norms = torch.linalg.vector_norm(features, dim=1).square_()
    min_distances = torch.full((n_rows,), math.inf, dtype=torch.float32, device=device)
    distances = torch.empty(n_rows, dtype=torch.float32, device=device)
    center = torch.empty(1, n_dims, dtype=torch.float32, device=device)
    center_norm = torch.empty(1, dtype=torch.float32, device=device)
    selected = torch.empty(k, dtype=torch.long, device=device)
    products = _BlockedProducts(features, center, distances)
    selected[0:1].copy_(torch.as_tensor(start, device=device).reshape(1))
    index = selected[0:1]
    for step in range(1, k):
        torch.index_select(features, 0, index, out=center)
        torch.index_select(squared_norms, 0, index, out=center_norm)
        # Squared distance of every row to the newest center: |x|^2 - 2 x.c + |c|^2.
        products.compute()
        torch.add(squared_norms, distances, alpha=-2.0, out=distances)
        distances.add_(center_norm)
        torch.minimum(min_distances, distances, out=min_distances)
        # A chosen row is never chosen again (rounding can leave it a tiny non-zero distance).
        min_distances.index_fill_(0, index, -math.inf)
        index = selected[step:step + 1]
        torch.argmax(min_distances, dim=0, keepdim=True, out=index)
    return selected


class _BlockedProducts:
    """``out = features @ center[0]``, as a batched product over blocks of rows.

    One matrix-vector product runs on one core (MKL); the same product split into a batch of
    row blocks runs on all of them, about 3x faster on 2 cores. All views are made once, on the
    column-major storage of ``features``; rows left over by the split go through a small ``mm``.
    """

    def __init__(self, features: torch.Tensor, center: torch.Tensor, out: torch.Tensor) -> None:
        columns = features.T  # (d, n), contiguous
        n_dims, n_rows = columns.shape
        blocks = max(1, min(2 * torch.get_num_threads(), n_rows))
        width = n_rows // blocks
        self.split = blocks * width
        self.blocks = columns[:, :self.split].view(n_dims, blocks, width).permute(1, 0, 2)
        self.block_center = center.view(1, 1, n_dims).expand(blocks, 1, n_dims)
        self.block_out = out[:self.split].view(blocks, 1, width)
        self.tail = columns[:, self.split:]
        self.center = center
        self.tail_out = out[self.split:].view(1, -1)

    def compute(self) -> None:
        torch.bmm(self.block_center, self.blocks, out=self.block_out)
        if self.tail.shape[1]:
            torch.mm(self.center, self.tail, out=self.tail_out)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Within the block torch and numpy draw from ``seed``; outside, their state is untouched."""
    if seed is None:
        yield
        return
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


@torch.no_grad()
def greedy_k_center(embedding: torch.Tensor, sampling_ratio: float, seed: int | None = None,
                    eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Indices (``long``, on ``embedding``'s device) of a PatchCore coreset of ``embedding`` (``n x d``).

    Keeps ``max(1, int(n * sampling_ratio))`` rows, chosen by greedy k-center in the randomly
    projected space. ``None`` draws the projection and the starting row from the global
    generators, as anomalib does (so a run seeded by Lightning is reproducible and matches
    anomalib's sampler); a ``seed`` draws them from that seed and leaves the global state alone.
    """
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D (rows x features), got shape {tuple(embedding.shape)}")
    k = coreset_size(embedding.shape[0], sampling_ratio)
    with _seeded(seed):
        features = project(embedding, eps)
        start = torch.randint(high=embedding.shape[0], size=(1,), device=embedding.device)
    return greedy_k_center_indices(features, k, start)


@torch.no_grad()
def sample_coreset(embedding: torch.Tensor, sampling_ratio: float, seed: int | None = None) -> torch.Tensor:
    """The coreset itself: the rows of the original ``embedding`` :func:`greedy_k_center` picks."""
    return embedding.index_select(0, greedy_k_center(embedding, sampling_ratio, seed))


@torch.no_grad()
def sample_coreset_spilled(spilled: SpilledEmbedding, sampling_ratio: float, seed: int | None = None,
                           order: torch.Tensor | None = None, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """:func:`sample_coreset` of the rows of ``spilled`` (taken in ``order`` when given), with only
    the embedding's random projection in memory.

    The search needs the projection alone (for a 384-feature ResNet-18 embedding, 245-314
    projected features; 1,536-feature Wide-ResNet-50 ones keep the same count). The rows are read
    back a block at a time and projected; the coreset rows are read back at the end. The draws
    are :func:`greedy_k_center`'s, in its order, and each row is projected by the same product,
    so the coreset is the same as with the embedding in memory.
    """
    n_rows = spilled.rows
    k = coreset_size(n_rows, sampling_ratio)
    with _seeded(seed):
        matrix = projection_matrix(n_rows, spilled.features, eps)
        start = torch.randint(high=n_rows, size=(1,))
    # Row i of the file is row position[i] of the ordered embedding.
    position = None if order is None else inverse_permutation(order)
    columns = torch.empty(matrix.shape[0], n_rows, dtype=torch.float32)
    for first, rows in spilled.blocks():
        _project_into(columns, matrix, rows, first, position)
    indices = greedy_k_center_indices(columns.T, k, start)
    del columns
    return spilled.read_rows(indices if order is None else order[indices])
