"""PatchCore's fit memory against the size of the embedding it stores, and how time and memory
grow with the number of training images — quadra-ad's PatchCore and stock anomalib's.

PatchCore's training epoch stores one row of features per patch of every training image (the
embedding: patches x features x 4 bytes), then keeps a coreset of it. That embedding is the
floor of what a fit must hold; this script measures how far above it the fit goes.

  floor    ResNet-18 and Wide-ResNet-50 at 128 and 256 px, 80 training images, random weights,
           the layers (layer2, layer3) and coreset ratio (0.1) of experiments/base/anomaly/patchcore:
           our fit's peak RSS, the embedding computed from the feature-map size and the feature
           count (checked against the stored rows before the coreset), and
           ratio = (peak RSS - RSS just before fit) / embedding, held to <= 1.5.
  growth   ResNet-18 at 128 px with 80, 320 and 1,280 training images: fit seconds and peak RSS
           of ours and of a plain anomalib Engine (with MALLOC_MMAP_THRESHOLD_=1048576, without
           which its coreset loop grows to tens of GB). The coreset search grows with patches x
           coreset size: a size whose fit, predicted from the previous size's, passes --cap is not
           run for stock, and runs for ours with a 10x smaller coreset (memory only).

Every fit runs in a child process of its own, one at a time, under ``nice -n 5``. The "baseline"
is the child's own resident memory (``VmRSS``) at ``on_train_start``, freed heap handed back
first: imports, the backbone's weights and the datamodule already loaded, no batch seen yet — the
floor the fit itself stands on. There the high-water mark starts again (``/proc/self/clear_refs``),
so the fit's peak (``VmHWM`` when the coreset is done) is its own and not a transient of building
the model; "code" is how much of it is the libraries' code (``RssFile``) paged in by the fit's
first kernels. The process's peak is the larger of the high-water mark before training and
``ru_maxrss`` read with ``wait4`` from outside (what ran after the fit: Lightning's validation
pass). This parent never imports torch (a child's ``ru_maxrss`` starts at its parent's RSS), so
the data are generated in a child too. A separate child that only imports what a PatchCore run
imports gives the imports-only figure, shown next to it. Both sides load images with
``num_workers=0`` so that all of the fit's memory is in the measured process; test, export and
logging are switched off (fit is what is measured).

Prints one table, writes JSON (default scripts/patchcore_memory.json) and a plot (default
docs/patchcore_memory.png).

    python scripts/patchcore_memory.py                   # ~35 min on 2 cores (~20 with --reuse-stock)
    python scripts/patchcore_memory.py --cap 300 --growth 80 320
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_name  # scripts/machine_info.py

ROOT = Path(__file__).resolve().parents[1]
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
TARGET_RATIO = 1.5
#: Channels of layer2 and layer3 (PatchCore's default layers) and layer2's stride.
FEATURES = {"resnet18": 128 + 256, "wide_resnet50_2": 512 + 1024}
LAYER2_STRIDE = 8
CORESET_RATIO = 0.1
RATIO_TEXT = ("(peak RSS from on_train_start to the coreset done - RSS at on_train_start, freed heap trimmed first) "
              "/ (patches x features x 4 bytes); code_mb: of the fit's MB, the libraries' code pages (RssFile) it "
              "touched first; process_ratio: the same with the whole process's peak, validation pass included")
#: Coreset ratio of a run kept for its memory when the real one would pass --cap (see main).
MEMORY_ONLY_RATIO = 0.01
FLOOR_CASES = [("resnet18", 128), ("resnet18", 256), ("wide_resnet50_2", 128), ("wide_resnet50_2", 256)]


# -- children --------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_data(out: Path, n_train: int, size: int) -> None:
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    # A few test images: the datamodule wants both classes, but no test runs.
    write_synthetic_dataset(out, n_train=n_train, n_test_good=4, n_test_defect=4, size=size, with_masks=False)


def child_imports() -> None:
    """Import what a PatchCore run imports, and nothing else (the imports-only baseline)."""
    import anomalib.engine
    import anomalib.models  # noqa: F401 - imported for its memory, as a run imports it
    import lightning.pytorch  # noqa: F401 - imported for its memory, as a run imports it
    import timm  # noqa: F401 - imported for its memory, as a run imports it

    import quadra_ad.checks.composition
    import quadra_ad.datamodules
    import quadra_ad.models.patchcore
    import quadra_ad.run
    import quadra_ad.tasks.anomaly_training  # noqa: F401 - imported for its memory, as a run imports it


def _install_probes(fit_class, result: Path) -> None:
    """Record RSS at the start of training and around ``fit_class.fit`` (the coreset step), and the
    stored embedding's shape; write them to ``result`` once the fit is done."""
    from anomalib.models import Patchcore as AnomalibPatchcore

    from quadra_ad.models.patchcore import release_freed_memory

    record: dict = {}
    on_train_start = AnomalibPatchcore.on_train_start

    def probed_train_start(self, *args, **kwargs):
        # Heap freed before training goes back to the OS first: the baseline is what is live, so
        # the fit cannot hide its own memory in pages freed earlier (a lower, stricter baseline).
        release_freed_memory()
        record["baseline_rss_mb"] = _status_mb("VmRSS")
        record["baseline_file_mb"] = _status_mb("RssFile")
        record["peak_before_train_mb"] = _status_mb("VmHWM")
        # The peak so far (building the model can pass what the fit needs) must not hide the
        # fit's own: the high-water mark starts again here (Linux); the parent adds the earlier
        # peak back into the process's.
        Path("/proc/self/clear_refs").write_text("5")
        record["train_started"] = time.perf_counter()
        return on_train_start(self, *args, **kwargs)

    training_step = fit_class.training_step

    def probed_training_step(self, *args, **kwargs):
        # The first step: what loading a batch and the first backbone pass leave resident.
        first = "rss_first_step_start_mb" not in record
        if first:
            record["rss_first_step_start_mb"] = _status_mb("VmRSS")
        out = training_step(self, *args, **kwargs)
        if first:
            record["rss_first_step_end_mb"] = _status_mb("VmRSS")
            record["peak_first_step_mb"] = _status_mb("VmHWM")
        return out

    fit = fit_class.fit

    def probed_fit(self, *args, **kwargs):
        spilled = getattr(self, "_spilled", None)  # ours, on CPU: the rows wait in a file
        if spilled is not None:
            record.update(stored_in="disk", stored_rows=spilled.rows, stored_features=spilled.features,
                          stored_dtype=str(spilled.dtype),
                          stored_bytes=spilled.rows * spilled.features * torch_element_size(spilled.dtype))
        else:
            store = self.model.embedding_store
            record.update(stored_in="memory", stored_rows=sum(len(chunk) for chunk in store),
                          stored_features=int(store[0].shape[1]), stored_dtype=str(store[0].dtype),
                          stored_bytes=sum(chunk.numel() * chunk.element_size() for chunk in store))
        record["peak_collecting_mb"] = _status_mb("VmHWM")
        started = time.perf_counter()
        out = fit(self, *args, **kwargs)
        ended = time.perf_counter()
        record["coreset_s"] = ended - started
        record["fit_s"] = ended - record.pop("train_started")
        record["peak_after_fit_mb"] = _status_mb("VmHWM")
        # Pages of the libraries' code (libtorch's kernels) the fit ran for the first time: part of
        # the peak, file-backed and shared, not memory the fit allocated.
        record["file_after_fit_mb"] = _status_mb("RssFile")
        record["memory_bank"] = list(self.model.memory_bank.shape)
        result.write_text(json.dumps(record))
        return out

    AnomalibPatchcore.on_train_start = probed_train_start
    fit_class.training_step = probed_training_step
    fit_class.fit = probed_fit


def torch_element_size(dtype) -> int:
    import torch

    return torch.empty(0, dtype=dtype).element_size()


def child_ours(data: Path, backbone: str, size: int, workdir: Path, result: Path, ratio: float | None) -> None:
    from quadra_ad.checks.composition import compose_config
    from quadra_ad.models.patchcore import Patchcore
    from quadra_ad.run import run

    cfg = compose_config([
        "experiment=base/anomaly/patchcore", f"datamodule.data_path={data}", f"backbone={backbone}",
        "backbone.pre_trained=false", f"transforms.input_size=[{size},{size}]", "datamodule.num_workers=0",
        "core.test_after_training=false", "~logger", "export.types=[]", "callbacks=none",
        "trainer.enable_progress_bar=false", *([f"model.coreset_sampling_ratio={ratio}"] if ratio else []),
    ])
    assert list(cfg.model.layers) == ["layer2", "layer3"]
    assert cfg.model.coreset_sampling_ratio == (ratio or CORESET_RATIO)
    _install_probes(Patchcore, result)
    run(cfg, output_dir=workdir / "ours")


def child_stock(data: Path, backbone: str, size: int, workdir: Path, result: Path, ratio: float | None) -> None:
    from anomalib.models import Patchcore

    from quadra_ad.testing.engine_parity import engine_setup

    if backbone != "resnet18" or ratio:
        raise SystemExit("the stock side runs ResNet-18 only (engine_setup's backbone)")
    engine, model, datamodule = engine_setup("patchcore", data, size, seed=42, workdir=workdir, num_workers=0)
    _install_probes(Patchcore, result)
    engine.fit(model=model, datamodule=datamodule)


# -- the parent ------------------------------------------------------------------------------
def run_child(args: list[str], workdir: Path, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run this script as ``--child …`` under ``nice -n 5``; wall seconds, peak RSS (wait4) and load."""
    command = ["nice", "-n", "5", sys.executable, __file__, *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **(env or {})}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(workdir / "child.log", "ab") as log:
        process = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - started > timeout:
                process.kill()
                os.wait4(process.pid, 0)
                return {"timed_out": True, "wall_s": round(time.perf_counter() - started, 1)}
            time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = (workdir / "child.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:3])} … exited with {code}:\n{tail}")
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "load_1min": round(load, 2)}


def predicted_fit_s(previous: dict, n_train: int) -> float:
    """A fit's seconds from the previous size's: the coreset search grows with patches x coreset
    size (both proportional to the images), the rest with the images."""
    growth = n_train / previous["n_train"]
    return previous["coreset_s"] * growth ** 2 + (previous["fit_s"] - previous["coreset_s"]) * growth


def expected_embedding(backbone: str, size: int, n_train: int) -> tuple[int, int]:
    """(patches, features) PatchCore stores: one row per layer2 cell of every training image."""
    side = -(-size // LAYER2_STRIDE)
    return n_train * side * side, FEATURES[backbone]


def measure_fit(side: str, data: Path, backbone: str, size: int, n_train: int, workdir: Path,
                timeout: float | None = None, ratio: float | None = None) -> dict:
    result = workdir / f"{side}_{backbone}_{size}_{n_train}.json"
    env = MMAP_ENV if side == "stock" else None
    measured = run_child(["--child", side, "--data", str(data), "--backbone", backbone, "--size", str(size),
                          "--workdir", str(workdir / f"{side}_{backbone}_{size}_{n_train}"), "--result", str(result),
                          *(["--ratio", str(ratio)] if ratio else [])], workdir, env, timeout)
    if measured.get("timed_out"):
        return measured
    measured.update(json.loads(result.read_text()))
    # wait4's peak starts again at on_train_start (see _install_probes); the process's is the larger.
    measured["peak_rss_mb"] = round(max(measured["peak_rss_mb"], measured["peak_before_train_mb"]), 1)
    patches, features = expected_embedding(backbone, size, n_train)
    embedding_mb = patches * features * 4 / 2**20
    if (measured["stored_rows"], measured["stored_features"]) != (patches, features):
        raise RuntimeError(f"stored {measured['stored_rows']} x {measured['stored_features']}, "
                           f"expected {patches} x {features}")
    measured.update({"patches": patches, "features": features, "embedding_mb": round(embedding_mb, 1),
                     "stored_mb": round(measured["stored_bytes"] / 2**20, 1)})
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in derived(measured).items()}


def derived(row: dict) -> dict:
    """``row`` with the fit's memory above the baseline and its ratio to the embedding. The fit's
    peak is ``VmHWM`` when the coreset is done; the process's also covers what runs after the fit
    (Lightning's validation pass, which sets the thresholds)."""
    row["fit_delta_mb"] = round(row["peak_after_fit_mb"] - row["baseline_rss_mb"], 1)
    row["ratio"] = round(row["fit_delta_mb"] / row["embedding_mb"], 2)
    row["process_ratio"] = round((row["peak_rss_mb"] - row["baseline_rss_mb"]) / row["embedding_mb"], 2)
    if "file_after_fit_mb" in row:  # rows measured before this column existed have no split
        row["code_mb"] = round(row["file_after_fit_mb"] - row["baseline_file_mb"], 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--growth", type=int, nargs="+", default=[80, 320, 1280], help="training images")
    parser.add_argument("--cap", type=float, default=600, help="seconds a stock fit may take (default 600)")
    parser.add_argument("--json", type=Path, default=ROOT / "scripts" / "patchcore_memory.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "patchcore_memory.png")
    parser.add_argument("--skip-floor", action="store_true", help="only the growth series")
    parser.add_argument("--replot", action="store_true", help="table and plot again from --json, measuring nothing")
    parser.add_argument("--reuse-stock", action="store_true",
                        help="take stock anomalib's growth rows from --json instead of measuring them again "
                             "(they do not depend on this project's code; ~15 min saved)")
    parser.add_argument("--child", choices=["data", "imports", "ours", "stock"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-train", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "data":
        child_data(args.data, args.n_train, args.size)
        return 0
    if args.child == "imports":
        child_imports()
        return 0
    if args.child in ("ours", "stock"):
        (child_ours if args.child == "ours" else child_stock)(args.data, args.backbone, args.size, args.workdir,
                                                             args.result, args.ratio)
        return 0

    if args.replot:
        report = json.loads(args.json.read_text())
        for row in report["floor"] + report["growth"]["ours"] + report["growth"]["stock"]:
            if "not_run" not in row:
                derived(row)
        report["settings"]["ratio"] = RATIO_TEXT
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print_table(report)
        plot(report, args.plot)
        return 0
    started = time.perf_counter()
    report = {"machine": _machine(), "settings": {
        "layers": ["layer2", "layer3"], "coreset_ratio": CORESET_RATIO, "pre_trained": False, "batch": 32,
        "num_workers": 0, "nice": 5, "stock_cap_s": args.cap, "target_ratio": TARGET_RATIO,
        "ratio": RATIO_TEXT}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)

        def dataset(n_train: int, size: int) -> Path:
            folder = workdir / f"data_{n_train}_{size}"
            if not folder.exists():
                run_child(["--child", "data", "--data", str(folder), "--n-train", str(n_train), "--size", str(size)],
                          workdir)
            return folder

        print("imports baseline …", flush=True)
        report["imports_only"] = run_child(["--child", "imports"], workdir)
        report["floor"] = []
        if not args.skip_floor:
            for backbone, size in FLOOR_CASES:
                print(f"floor: ours, {backbone} at {size} px …", flush=True)
                row = measure_fit("ours", dataset(80, size), backbone, size, 80, workdir)
                report["floor"].append({"backbone": backbone, "size": size, "n_train": 80, **row})
        report["growth"] = {"ours": [], "stock": []}
        if args.reuse_stock:
            previous_report = json.loads(args.json.read_text())
            report["growth"]["stock"] = previous_report["growth"]["stock"]
            report["settings"]["stock_rows_from"] = previous_report["machine"].get("measured", "the previous run of this script")
        for side in ("ours",) if args.reuse_stock else ("ours", "stock"):
            previous = None
            for n_train in args.growth:
                same = [r for r in report["floor"]
                        if side == "ours" and (r["backbone"], r["size"], r["n_train"]) == ("resnet18", 128, n_train)]
                if same:  # the floor's ResNet-18 128 px run is this size's run
                    row = {k: v for k, v in same[0].items() if k not in ("backbone", "size")}
                    report["growth"][side].append(row)
                    previous = row
                    continue
                predicted = None if previous is None else predicted_fit_s(previous, n_train)
                ratio = None
                if predicted is not None and predicted > args.cap:
                    if side == "stock":
                        print(f"growth: stock, {n_train} images: not run (predicted {predicted:.0f} s > cap {args.cap:.0f} s)")
                        report["growth"][side].append({"n_train": n_train, "not_run": f"> cap {args.cap:.0f} s",
                                                       "predicted_fit_s": round(predicted)})
                        continue
                    # Ours: the memory still tells (the search's buffers do not depend on the coreset
                    # size), so it runs with a 10x smaller coreset; its time is not the real one.
                    ratio = MEMORY_ONLY_RATIO
                print(f"growth: {side}, {n_train} images" + (f", coreset ratio {ratio} (memory only)" if ratio else "")
                      + " …", flush=True)
                row = measure_fit(side, dataset(n_train, 128), "resnet18", 128, n_train, workdir,
                                  timeout=args.cap + 300, ratio=ratio)
                if row.get("timed_out"):
                    report["growth"][side].append({"n_train": n_train, "not_run": f"> cap {args.cap:.0f} s"})
                    previous = None
                    continue
                row = {"n_train": n_train, **row}
                if ratio:
                    row.update({"coreset_ratio": ratio, "predicted_fit_s": round(predicted)})
                report["growth"][side].append(row)
                previous = None if ratio else row
    report["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    print_table(report)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {_shown(args.json)}")
    plot(report, args.plot)
    print(f"wrote {_shown(args.plot)}")
    return 0 if all(row["ratio"] <= TARGET_RATIO for row in report["floor"]) else 1


def print_table(report: dict) -> None:
    machine, imports = report["machine"], report["imports_only"]
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; "
          f"fits under nice -n 5, one at a time, 1-min load average at each start shown")
    print(f"imports only (a process that imports what a PatchCore run imports): peak RSS {imports['peak_rss_mb']:.0f} MB")
    header = (f"{'side':<6}{'backbone':<17}{'px':>4}{'images':>7}{'patches x feat':>16}{'embed MB':>9}"
              f"{'before fit':>11}{'fit peak':>9}{'fit MB':>8}{'code':>6}{'ratio':>7}{'process peak':>13}{'fit s':>8}"
              f"{'coreset s':>10}{'load':>6}")
    print("\n" + header)
    print("-" * len(header))
    rows = [("ours", r) for r in report["floor"]]
    in_floor = {r["n_train"] for r in report["floor"] if (r["backbone"], r["size"]) == ("resnet18", 128)}
    rows += [("ours", r | {"backbone": "resnet18", "size": 128}) for r in report["growth"]["ours"]
             if r["n_train"] not in in_floor]
    rows += [("stock", r | {"backbone": "resnet18", "size": 128}) for r in report["growth"]["stock"]]
    for side, r in rows:
        lead = f"{side:<6}{r['backbone']:<17}{r['size']:>4}{r['n_train']:>7}"
        if "not_run" in r:
            patches, features = expected_embedding(r["backbone"], r["size"], r["n_train"])
            shape = f"{patches} x {features}"
            print(f"{lead}{shape:>16}{patches * features * 4 / 2**20:>9.0f}   not run: {r['not_run']}"
                  + (f" (predicted {r['predicted_fit_s']} s)" if "predicted_fit_s" in r else ""))
            continue
        ratio = f"{r['ratio']:.2f}" + ("" if side == "stock" or r["ratio"] <= TARGET_RATIO else "!")
        shape = f"{r['patches']} x {r['features']}"
        fit = f"{r['fit_s']:.1f}" + ("*" if "coreset_ratio" in r else "")
        coreset = f"{r['coreset_s']:.2f}" + ("*" if "coreset_ratio" in r else "")
        process = f"{r['peak_rss_mb']:.0f} ({r['process_ratio']:.2f})"
        code = f"{r['code_mb']:.0f}" if "code_mb" in r else "-"
        print(f"{lead}{shape:>16}{r['embedding_mb']:>9.0f}{r['baseline_rss_mb']:>11.0f}"
              f"{r['peak_after_fit_mb']:>9.0f}{r['fit_delta_mb']:>8.0f}{code:>6}{ratio:>7}{process:>13}{fit:>8}{coreset:>10}"
              f"{r['load_1min']:>6.1f}")
        if "coreset_ratio" in r:
            print(f"      * memory only: coreset ratio {r['coreset_ratio']} instead of {CORESET_RATIO} (the real fit "
                  f"was predicted at {r['predicted_fit_s']} s, over the cap); the peak hardly depends on it")
    print(f"(MB = 2^20 bytes; embed = patches x features x 4 bytes, equal to the rows stored before the coreset; "
          f"before fit = VmRSS at on_train_start, freed heap trimmed first;\n fit peak = peak RSS from there to the coreset done; "
          f"fit MB = fit peak - before fit; code = of which the libraries' code pages (RssFile) the fit touched first;\n "
          f"ratio = fit MB / embed, target <= {TARGET_RATIO} for ours;\n process peak = the whole process (wait4; "
          f"includes the validation pass after the fit), its ratio in brackets;\n fit s = first batch to coreset done; "
          f"stock with MALLOC_MMAP_THRESHOLD_)")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for side, style in (("ours", "o-"), ("stock", "s--")):
        done = [r for r in report["growth"][side] if "not_run" not in r]
        timed = [r for r in done if "coreset_ratio" not in r]
        label = "quadra-ad" if side == "ours" else "anomalib (stock)"
        time_axis.plot([r["n_train"] for r in timed], [r["fit_s"] for r in timed], style, label=label)
        memory_axis.plot([r["n_train"] for r in done], [r["fit_delta_mb"] for r in done], style, label=label)
        skipped = [r for r in report["growth"][side] if "predicted_fit_s" in r]
        if skipped:
            time_axis.plot([r["n_train"] for r in skipped], [r["predicted_fit_s"] for r in skipped], "x",
                           color=time_axis.lines[-1].get_color(), label=f"{label}: predicted, not run")
    embedding = [(r["n_train"], r["embedding_mb"]) for r in report["growth"]["ours"]]
    memory_axis.plot([n for n, _ in embedding], [mb for _, mb in embedding], ":", color="grey",
                     label="embedding (patches x features x 4 B)")
    memory_axis.plot([n for n, _ in embedding], [TARGET_RATIO * mb for _, mb in embedding], "--", color="grey",
                     linewidth=0.8, label=f"{TARGET_RATIO} x embedding")
    time_axis.set(xscale="log", yscale="log", xlabel="training images", ylabel="fit seconds",
                  title="PatchCore fit time (ResNet-18, 128 px)")
    memory_axis.set(xscale="log", yscale="log", xlabel="training images", ylabel="MB",
                    title="memory the fit adds (peak RSS - RSS at fit start)")
    for axis in (time_axis, memory_axis):
        counts = [r["n_train"] for r in report["growth"]["ours"]]
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    shown = [mb for _, mb in embedding] + [r["fit_delta_mb"] for side in report["growth"].values()
                                           for r in side if "not_run" not in r]
    memory_axis.set_yticks([t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
                            if min(shown) / 2 <= t <= 2 * max(shown)])
    memory_axis.yaxis.set_major_formatter(ScalarFormatter())
    memory_axis.yaxis.set_minor_formatter(NullFormatter())
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _machine() -> dict:
    from importlib.metadata import version

    return {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": version("torch"), "anomalib": version("anomalib"), "measured": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    sys.exit(main())
