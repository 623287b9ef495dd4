"""Exact AUPRO: the area under the per-region-overlap curve up to an FPR limit, anomalib's value
in a fraction of its time.

The definition and every rule are anomalib's (``anomalib.metrics.AUPRO``, 2.x), so the value is
the same to float32 rounding (within 1e-6, tests/test_aupro.py):

- regions are the 8-connected components of each mask (OpenCV, as anomalib does on CPU), each
  image's numbered apart from the others';
- every distinct score ``t``, from the highest down, is one point of the curve: FPR(t) is the share
  of background pixels scoring ``>= t``, PRO(t) the mean over regions of each region's share of
  pixels scoring ``>= t``; the curve starts at (0, 0);
- the curve is cut at ``fpr_limit``, PRO interpolated linearly between the last point at or below
  the limit and the next one; the trapezoid area is divided by the last FPR kept.

Why it is faster (20-27x at 40 maps of 128 px, 9x at 100 of 256 px on 2 cores; scripts/aupro_benchmark.py):
anomalib argsorts every pixel of every map and integrates the whole curve before cutting it. Only
the pixels scoring at least as high as the background pixel where FPR passes the limit shape the
cut curve, and that score is found in linear time (``np.partition``); those (about ``fpr_limit``
of the background, plus the regions) are sorted as plain float32 values, which NumPy does with
SIMD instructions, several times faster than an argsort. The region pixels, few, are sorted apart
with their overlap steps, and the counts at every point come from their cumulative sums (float64)
by binary search.
"""

import cv2
import numpy as np

#: anomalib keeps the limit in a float32 tensor: 0.3 is compared as float32(0.3).
_LIMIT_DTYPE = np.float32


def region_labels(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) int64 labels: 0 for background, 1..R for the 8-connected regions of all masks,
    each image's regions numbered after the previous image's."""
    masks = np.ascontiguousarray(masks != 0, dtype=np.uint8)
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for index, mask in enumerate(masks):
        if not mask.any():
            continue
        count, components = cv2.connectedComponents(mask, connectivity=8)
        labels[index] = np.where(components > 0, components.astype(np.int64) + offset, 0)
        offset += count - 1
    return labels


def pro_curve(maps, masks, fpr_limit: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) of the per-region-overlap curve, cut at ``fpr_limit`` the way anomalib cuts it.

    ``maps`` and ``masks`` are (N, H, W) (or (N, 1, H, W)) arrays or tensors; any non-zero mask
    pixel is anomalous. Scores are compared in float32, as anomalib does, so ties are the same.
    """
    scores = _as_array(maps).astype(np.float32, copy=False).reshape(-1)
    labels = region_labels(_as_array(masks).reshape(-1, *np.shape(masks)[-2:])).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"maps {tuple(np.shape(maps))} and masks {tuple(np.shape(masks))} differ in size")
    limit = float(_LIMIT_DTYPE(fpr_limit))
    background = labels == 0
    num_background = int(background.sum())
    region_sizes = np.bincount(labels)[1:]
    num_regions = int(np.count_nonzero(region_sizes))
    if num_background == 0 or num_regions == 0:
        return np.array([0.0, limit]), np.array([0.0, 0.0])

    # Every distinct score at or above the cut, from the highest down: one point each, with the
    # number of pixels scoring at least that much (its position in the descending order).
    kept = np.sort(scores[_scores_that_shape_the_cut_curve(scores, background, num_background, limit)])[::-1]
    last_of_score = np.flatnonzero(np.append(kept[:-1] != kept[1:], True))
    point_scores, pixels_in = kept[last_of_score], last_of_score + 1
    # Region pixels, sorted apart (they are few): how many, and how much overlap, score at least t.
    in_region = ~background
    region_scores = scores[in_region]
    by_score = np.argsort(region_scores)
    region_scores = region_scores[by_score]
    overlap_steps = (1.0 / region_sizes[labels[in_region] - 1])[by_score]
    overlap_below = np.concatenate(([0.0], np.cumsum(overlap_steps)))
    first_at_least = np.searchsorted(region_scores, point_scores, side="left")
    region_pixels_in = region_scores.size - first_at_least
    overlap_in = overlap_below[-1] - overlap_below[first_at_least]
    fpr = np.minimum(np.concatenate(([0.0], (pixels_in - region_pixels_in) / num_background)), 1.0)
    pro = np.minimum(np.concatenate(([0.0], overlap_in / num_regions)), 1.0)
    return _cut_at(fpr, pro, limit)


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by that FPR
    (anomalib's ``AUPRO`` value, see the module docstring); 0.0 without regions or background."""
    fpr, pro = pro_curve(maps, masks, fpr_limit)
    area = float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1])) / 2.0)
    return area / float(fpr[-1])


def _scores_that_shape_the_cut_curve(scores: np.ndarray, background: np.ndarray, num_background: int,
                                     limit: float) -> np.ndarray:
    """Indices of the pixels scoring at least the background score where FPR first passes ``limit``.

    The point of that score is the first one past the limit (needed for the interpolation); every
    point before it has fewer background pixels in. One background pixel more than the exact count
    keeps a limit that lands on a float rounding boundary on the safe side.
    """
    passing = min(num_background, int(np.floor(limit * num_background)) + 2)
    if passing >= num_background:
        return np.arange(scores.size)
    background_scores = scores[background]
    cut_score = np.partition(background_scores, num_background - passing)[num_background - passing]
    return np.flatnonzero(scores >= cut_score)


def _cut_at(fpr: np.ndarray, pro: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to FPR ``limit``: the last point at or below it, then PRO interpolated at the
    limit when the next point lies beyond it (anomalib's rule, including its edge cases)."""
    last = int(np.searchsorted(fpr, limit, side="right")) - 1  # fpr is non-decreasing, fpr[0] = 0
    if fpr[last] < limit and last + 1 < fpr.size:
        f1, f2, p1, p2 = fpr[last], fpr[last + 1], pro[last], pro[last + 1]
        at_limit = p1 + (p2 - p1) * (limit - f1) / (f2 - f1)
        return np.append(fpr[: last + 1], limit), np.append(pro[: last + 1], at_limit)
    return fpr[: last + 1], pro[: last + 1]


def _as_array(values) -> np.ndarray:
    """A NumPy view of a tensor (on the CPU) or an array-like."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)
