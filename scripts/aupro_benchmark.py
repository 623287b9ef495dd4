"""AUPRO: anomalib's ``AUPRO`` metric against quadra_ad.evaluation.aupro, time and value side by side.

Generated test sets the size of the benchmark's (``scripts/benchmark.py``: 40 test images at
128 px) and of a larger one (100 at 256 px): smooth anomaly maps (blurred noise), half the images
good, the others with one to three elliptic defects that score higher than their surroundings.
Both metrics get the same tensors; anomalib's metric module is imported before timing (in a
training run it already is), so the times are the computations alone: the first call and the
median of ``--repeats`` more.

    python scripts/aupro_benchmark.py
    python scripts/aupro_benchmark.py --sets 40x128 100x256 200x512 --repeats 5
"""

import argparse
import statistics
import time

import cv2
import numpy as np
import torch


def test_set(images: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (N, H, W) float32, masks (N, H, W) bool) like a PaDiM test step's."""
    rng = np.random.default_rng(seed)
    maps = np.empty((images, size, size), dtype=np.float32)
    masks = np.zeros((images, size, size), dtype=np.uint8)
    for index in range(images):
        noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), size / 32)
        maps[index] = noise / noise.std() + 10  # smooth, unit spread, as raw PaDiM maps are
        if index % 2 == 0:
            continue
        for _ in range(int(rng.integers(1, 4))):
            center = tuple(int(c) for c in rng.integers(size // 8, size - size // 8, 2))
            axes = tuple(int(a) for a in rng.integers(size // 32 + 1, size // 8, 2))
            cv2.ellipse(masks[index], center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        lift = cv2.GaussianBlur(masks[index].astype(np.float32), (0, 0), size / 64) * rng.uniform(0.5, 2.5)
        maps[index] += lift
    return torch.from_numpy(maps), torch.from_numpy(masks.astype(bool))


def anomalib_aupro(maps: torch.Tensor, masks: torch.Tensor) -> float:
    from anomalib.metrics.aupro import _AUPRO  # the implementation behind anomalib's public AUPRO

    metric = _AUPRO(fpr_limit=0.3)
    metric.update(maps.float(), masks.int())
    return float(metric.compute())


def ours(maps: torch.Tensor, masks: torch.Tensor) -> float:
    from quadra_ad.evaluation.aupro import aupro

    return aupro(maps, masks, fpr_limit=0.3)


def timed(function, maps, masks, repeats: int) -> tuple[float, float, float]:
    """(value, first call seconds, median seconds of ``repeats`` more calls)."""
    started = time.perf_counter()
    value = function(maps, masks)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(maps, masks)
        times.append(time.perf_counter() - started)
    return value, first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["40x128", "100x256"], help="IMAGESxPIXELS test sets")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import anomalib.metrics.aupro  # noqa: F401 - imported before timing, as in a training run

    import quadra_ad.evaluation.aupro  # noqa: F401 - imported before timing, as in a training run

    print(f"torch threads: {torch.get_num_threads()}; times: first call / median of {args.repeats} more")
    header = f"{'test set':>14} | {'anomalib AUPRO':>26} | {'quadra_ad.evaluation.aupro':>26} | {'speed-up':>8} | {'|difference|':>12}"
    print(header)
    print("-" * len(header))
    for entry in args.sets:
        images, size = (int(part) for part in entry.lower().split("x"))
        maps, masks = test_set(images, size, args.seed)
        reference, reference_first, reference_median = timed(anomalib_aupro, maps, masks, args.repeats)
        value, first, median = timed(ours, maps, masks, args.repeats)
        print(f"{images:>5} x {size:>3} px | {reference:.8f} {reference_first:5.2f}/{reference_median:5.2f} s | "
              f"{value:.8f} {first:5.2f}/{median:5.2f} s | {reference_median / median:7.1f}x | {abs(value - reference):12.2e}")


if __name__ == "__main__":
    main()
