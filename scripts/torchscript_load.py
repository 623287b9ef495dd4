"""TorchScript on the CPU: load time and images/s, optimising at every load (before) against the
optimised graph kept beside the model (after, quadra_ad.deploy.torchscript_cache).

Exports PaDiM and PatchCore (resnet18, random weights, offline) at ``--size`` px with the real
exporter and model card, the models fitted on generated textures (PatchCore's memory bank is a
random tenth of its embedding: which rows the coreset keeps does not change the graph's cost).
Then, each in a new process (torch already imported: the times are the load alone), the best
of ``--repeats`` runs (shortest time, most images/s: on a shared machine the noise only ever adds
time) of:

  plain       torch.jit.load only, no optimisation (what the optimisation is measured against)
  before      ``load_exported_model`` optimising at every load (freeze, oneDNN pass, output check)
  first load  ``load_exported_model`` with the cache, none there yet: builds and writes it
  after       ``load_exported_model`` with the cache written by an earlier load

``load`` is the loader's time, ``+1st batch`` adds the first batch of 16 (the graph executor
specialises on its first calls). images/s at batch 1 and 16 are measured for ``--seconds`` each.

    python scripts/torchscript_load.py
    python scripts/torchscript_load.py --size 256 --repeats 5
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("plain", "before", "first load", "after")


# -- child: one load, then throughput ---------------------------------------------------------
def child(mode: str, folder: Path, seconds: float) -> None:
    import numpy as np
    import torch  # noqa: F401 - imported before the clock starts, in every mode

    from quadra_ad.deploy import torchscript_cache
    from quadra_ad.deploy.loader import load_exported_model
    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.deploy.runners import TorchScriptModel

    graph = folder / "model.pt"
    if mode == "first load":
        for path in torchscript_cache.cache_paths(graph, "cpu"):
            path.unlink(missing_ok=True)
    started = time.perf_counter()
    if mode == "plain":
        model = TorchScriptModel(graph, ModelCard.read(folder / "model.json"), "cpu")
    else:
        model = load_exported_model(graph, torchscript_cache=mode != "before")
    load = time.perf_counter() - started
    height, width = model.card.input_size
    batch16 = np.random.default_rng(0).random((16, 3, height, width), dtype=np.float32)
    model(batch16)
    first_batch = time.perf_counter() - started
    result = {"load_s": load, "first_batch_s": first_batch, "from_cache": model.optimized_from_cache}
    for batch_size in (1, 16):
        batch = batch16[:batch_size]
        model(batch)  # a new shape: the executor specialises again
        calls, begun = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - begun) < seconds or calls < 3:
            model(batch)
            calls += 1
        result[f"images_per_s_{batch_size}"] = calls * batch_size / elapsed
    print(json.dumps(result))


# -- the models ---------------------------------------------------------------------------
def export_models(root: Path, size: int, train_images: int) -> dict[str, Path]:
    """``root/<model>/`` with ``model.pt`` and its ``model.json``, for PaDiM and PatchCore."""
    import numpy as np
    import torch
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from quadra_ad.deploy.model_card import ModelCard, file_sha256
    from quadra_ad.evaluation.thresholds import Calibration
    from quadra_ad.export.graph import AnomalyGraph
    from quadra_ad.export.writers import export_torchscript
    from quadra_ad.testing.synthetic import texture

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(np.stack([texture(rng, size) for _ in range(train_images)]).transpose(0, 3, 1, 2).copy()).float()
    padim = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False)
    patchcore = PatchcoreModel(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False, num_neighbors=9)
    folders = {}
    for name, model in (("padim", padim), ("patchcore", patchcore)):
        model.train()
        with torch.no_grad():
            for start in range(0, train_images, 16):
                model(images[start:start + 16])
        if name == "padim":
            model.fit()
        else:
            embedding = torch.vstack(model.embedding_store)
            keep = torch.randperm(len(embedding))[: len(embedding) // 10]
            model.memory_bank = embedding[keep].contiguous()
        model.eval()
        folder = root / name
        folder.mkdir(parents=True)
        path = export_torchscript(AnomalyGraph(model), torch.zeros(2, 3, size, size), folder)
        ModelCard(model_class=f"anomalib.models.{name}", input_size=[size, size], mean=[0.485, 0.456, 0.406],
                  std=[0.229, 0.224, 0.225], calibration=Calibration(1.0, 0.0, 2.0), task_type="segmentation",
                  files={"torchscript": path.name}, sha256={"torchscript": file_sha256(path)}).write(folder)
        folders[name] = folder
        print(f"{name}: model.pt {path.stat().st_size / 1e6:.1f} MB", flush=True)
    return folders


# -- the parent ---------------------------------------------------------------------------
def measure(folder: Path, mode: str, seconds: float) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder), "--seconds", str(seconds)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of throughput measurement per batch size")
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.seconds)
        return

    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; best of {args.repeats} processes per mode")
    with tempfile.TemporaryDirectory(prefix="torchscript_load_") as scratch:
        folders = export_models(Path(scratch), args.size, args.train_images)
        rows = []
        for name, folder in folders.items():
            runs = {mode: [] for mode in MODES}
            for _ in range(args.repeats):
                for mode in MODES:  # interleaved, so a busy moment hits every mode alike
                    runs[mode].append(measure(folder, mode, args.seconds))
            assert all(run["from_cache"] for run in runs["after"]), "the second load did not use the cache"
            for mode in MODES:
                best = {key: min(run[key] for run in runs[mode]) for key in ("load_s", "first_batch_s")}
                best.update({key: max(run[key] for run in runs[mode]) for key in ("images_per_s_1", "images_per_s_16")})
                rows.append((name, mode, best))
    header = (f"{'model':<10} {'':<11} | {'load s':>7} | {'+1st batch s':>12} | {'images/s @1':>11} | {'images/s @16':>12}")
    print(header)
    print("-" * len(header))
    for name, mode, best in rows:
        print(f"{name:<10} {mode:<11} | {best['load_s']:7.2f} | {best['first_batch_s']:12.2f} | "
              f"{best['images_per_s_1']:11.1f} | {best['images_per_s_16']:12.1f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
