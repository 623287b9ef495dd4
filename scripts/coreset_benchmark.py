"""PatchCore coreset selection: anomalib's KCenterGreedy against quadra_ad.models.coreset.

Builds a realistic PatchCore embedding (ResNet-18 layer2+layer3, random weights, on generated
128 px images: 80 images -> 20480 rows x 384 dims, projected to 245 for the search), then
selects a 10% coreset with each sampler in its own subprocess and prints the selection time
and the subprocess's peak RSS (``wait4``'s ``ru_maxrss``, which includes Python, torch and
the loaded embedding; the "before" column is the RSS just before the selection). Linux
starts a child's ``ru_maxrss`` at its parent's RSS when it execs, so this parent never
imports torch: the embedding is built in a subprocess too.

anomalib's sampler runs with ``MALLOC_MMAP_THRESHOLD_=1048576``: without it glibc keeps every
step's freed temporary and the process grows to tens of GB (24 GB seen on 2 cores).

    python scripts/coreset_benchmark.py                  # embedding from ResNet-18
    python scripts/coreset_benchmark.py --source random --rows 20480 --dims 384
    python scripts/coreset_benchmark.py --auroc          # also train both, compare image AUROC
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STOCK_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}


def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_embedding(args: argparse.Namespace, path: str) -> None:
    """Write the benchmark embedding to ``path`` (run in a subprocess, see the module docstring)."""
    import torch

    if args.source == "resnet":
        embedding = resnet_embedding(args.images, args.size, args.seed)
    else:
        embedding = torch.randn(args.rows, args.dims, generator=torch.Generator().manual_seed(args.seed)).relu_()
    torch.save(embedding, path)
    print(f"embedding: {args.source}, {tuple(embedding.shape)}, coreset ratio {args.ratio}")


def resnet_embedding(n_images: int, size: int, seed: int):
    """The embedding PatchCore's training epoch stores for ``n_images`` generated images."""
    import numpy as np
    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from quadra_ad.testing.synthetic import texture

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(np.stack([texture(rng, size) for _ in range(n_images)])).permute(0, 3, 1, 2)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False).train()
    with torch.no_grad():
        for batch in images.split(16):
            model(batch.contiguous())
    return torch.vstack(model.embedding_store)


def worker(sampler: str, embedding_path: str, ratio: float, seed: int) -> None:
    """Run one selection and print a JSON line with its figures (for the parent to read)."""
    import torch

    # Each side imports only what it needs (anomalib alone is ~450 MB), before "before".
    if sampler == "anomalib":
        from anomalib.models.components import KCenterGreedy

        def select(embedding: torch.Tensor) -> torch.Tensor:
            return KCenterGreedy(embedding, sampling_ratio=ratio).sample_coreset()
    else:
        from quadra_ad.models.coreset import sample_coreset

        def select(embedding: torch.Tensor) -> torch.Tensor:
            return sample_coreset(embedding, ratio, seed=seed)

    embedding = torch.load(embedding_path)
    torch.manual_seed(seed)
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    coreset = select(embedding)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_before_mb": before, "hwm_mb": _status_mb("VmHWM"),
                      "coreset": list(coreset.shape)}))


def measure(sampler: str, embedding_path: Path, ratio: float, seed: int) -> dict:
    """Run :func:`worker` in a child; add the child's own peak RSS from ``wait4``."""
    env = {**os.environ, **(STOCK_ENV if sampler == "anomalib" else {}), "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, "--worker", sampler, "--embedding", str(embedding_path),
               "--ratio", str(ratio), "--seed", str(seed)]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{sampler} worker failed with exit code {child.returncode}")
    figures = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss_mb"] = usage.ru_maxrss / 1024  # kB on Linux
    return figures


def auroc(sampler: str, data: Path, size: int, seed: int, workdir: Path) -> float:
    """image AUROC of a quadra-ad PatchCore run with ``sampler`` (in a child, for the malloc setting)."""
    code = (
        "import sys; from quadra_ad.checks.composition import compose_config; from quadra_ad.run import run\n"
        "task = run(compose_config(sys.argv[2:]), output_dir=sys.argv[1]); print(task.metrics['image_AUROC'])"
    )
    overrides = [
        "experiment=base/anomaly/patchcore", f"datamodule.data_path={data}", "backbone=resnet18",
        "backbone.pre_trained=false", f"transforms.input_size=[{size},{size}]", "datamodule.num_workers=0",
        f"core.seed={seed}", f"model.coreset_sampler={sampler}", "~logger", "export.types=[]",
        "trainer.enable_progress_bar=false", "callbacks=none",
    ]
    env = {**os.environ, **(STOCK_ENV if sampler == "anomalib" else {}), "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(workdir / f"{sampler}_{seed}"), *overrides],
                            env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["resnet", "random"], default="resnet")
    parser.add_argument("--images", type=int, default=80, help="training images (resnet source)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels")
    parser.add_argument("--rows", type=int, default=20480, help="embedding rows (random source)")
    parser.add_argument("--dims", type=int, default=384, help="embedding dims (random source)")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auroc", action="store_true", help="also train PatchCore with each sampler")
    parser.add_argument("--auroc-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--defect-contrast", type=float, default=0.05,
                        help="faint defects (AUROC data), so AUROC stays below 1.0 and a difference would show")
    parser.add_argument("--worker", choices=["anomalib", "fast"], help=argparse.SUPPRESS)
    parser.add_argument("--embedding", help=argparse.SUPPRESS)
    parser.add_argument("--make-embedding", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.embedding, args.ratio, args.seed)
        return
    if args.make_embedding:
        make_embedding(args, args.make_embedding)
        return

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        embedding_path = workdir / "embedding.pt"
        made = subprocess.run([sys.executable, *sys.argv, "--make-embedding", str(embedding_path)],
                              capture_output=True, text=True, check=True)
        print(made.stdout.strip().splitlines()[-1])
        rows = {sampler: measure(sampler, embedding_path, args.ratio, args.seed) for sampler in ("anomalib", "fast")}
        print(f"{'sampler':<10} {'coreset':>10} {'seconds':>8} {'RSS before MB':>14} {'peak RSS MB':>12} "
              f"{'VmHWM MB':>9}")
        for sampler, row in rows.items():
            print(f"{sampler:<10} {'x'.join(map(str, row['coreset'])):>10} {row['seconds']:>8.2f} "
                  f"{row['rss_before_mb']:>14.0f} {row['peak_rss_mb']:>12.0f} {row['hwm_mb']:>9.0f}")
        print(f"speed-up: {rows['anomalib']['seconds'] / rows['fast']['seconds']:.1f}x")

        if args.auroc:
            from quadra_ad.testing.synthetic import write_synthetic_dataset

            data = write_synthetic_dataset(workdir / "data", n_train=args.images, n_test_good=20, n_test_defect=20,
                                           size=args.size, defect_contrast=args.defect_contrast)
            print(f"{'seed':<6} {'anomalib AUROC':>15} {'fast AUROC':>11} {'delta':>7}")
            for seed in args.auroc_seeds:
                stock, fast = (auroc(s, data, args.size, seed, workdir) for s in ("anomalib", "fast"))
                print(f"{seed:<6} {stock:>15.4f} {fast:>11.4f} {fast - stock:>+7.4f}")


if __name__ == "__main__":
    main()
