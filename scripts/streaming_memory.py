"""quadra-ad-predict's memory over many images: peak RSS after 1,000, 10,000 and 100,000 images.

Trains a small PaDiM (resnet18, random weights, offline) at ``--size`` px on generated images,
fills a folder with ``--images`` hard links to its 16 test images (no extra disk), then runs
``quadra-ad-predict MODEL FOLDER --out results.jsonl`` as a new process on the first 1,000,
10,000 and all images of that folder, and prints each run's peak RSS (RUSAGE_CHILDREN of a
probe parent per run), its images/s, and the resident memory sampled every second during the
longest run. Flat peaks mean the memory does not grow with the number of images.

    python scripts/streaming_memory.py                      # 100,000 images at 64 px
    python scripts/streaming_memory.py --images 20000 --size 32
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROBE = ("import resource, subprocess, sys, time; started = time.time(); "
         "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(time.time() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _predict_command(model: Path, folder: Path, out: Path) -> list[str]:
    predict = Path(sys.executable).with_name("quadra-ad-predict")
    return [str(predict), str(model), str(folder), "--out", str(out), "--no-progress", "--batch", "16"]


def _measured(command: list[str], samples: list[float] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS MB) of ``command`` run in a fresh probe parent; RSS sampled into ``samples``."""
    probe = subprocess.Popen([sys.executable, "-c", PROBE, *command], stdout=subprocess.PIPE, text=True)
    if samples is not None:
        threading.Thread(target=_sample, args=(probe.pid, samples), daemon=True).start()
    out, _ = probe.communicate()
    if probe.returncode != 0:
        raise SystemExit(f"quadra-ad-predict failed: {' '.join(command)}")
    seconds, peak_kb = out.split()
    return float(seconds), int(peak_kb) / 1024


def _sample(parent: int, samples: list[float]) -> None:
    """The resident MB of the parent's child (the predictor) once a second while it runs."""
    while True:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            if children:
                for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) / 1024)
        except OSError:
            return
        time.sleep(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64, help="input size of the PaDiM and of the images, px")
    args = parser.parse_args()

    from quadra_ad.testing.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_synthetic_dataset(folder / "data", n_train=16, n_test_good=8, n_test_defect=8, size=args.size)
        subprocess.run([sys.executable, "-m", "quadra_ad", "experiment=base/anomaly/padim", f"datamodule.data_path={data}",
                        "backbone.pre_trained=false", f"transforms.input_size=[{args.size},{args.size}]", "~logger",
                        "export.types=[onnx]", "datamodule.num_workers=0", "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={folder / 'run'}"], cwd=folder, check=True, capture_output=True, text=True)
        model = folder / "run" / "deployment_model"
        sources = sorted((data / "test").rglob("*.png"))
        counts = sorted({min(n, args.images) for n in (1_000, 10_000, args.images)})
        rows = []
        for count in counts:
            images = folder / f"images_{count}"
            images.mkdir()
            for index in range(count):
                os.link(sources[index % len(sources)], images / f"{index:07d}.png")
            samples: list[float] = []
            seconds, peak = _measured(_predict_command(model, images, folder / "out.jsonl"), samples)
            lines = sum(1 for _ in (folder / "out.jsonl").open())
            assert lines == count, f"{lines} results for {count} images"
            rows.append((count, seconds, peak, samples))

    print(f"quadra-ad-predict, PaDiM resnet18 ONNX at {args.size} px, batch 16, JSONL out, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"{'images':>8} {'seconds':>8} {'images/s':>9} {'peak RSS MB':>12}")
    for count, seconds, peak, _ in rows:
        print(f"{count:>8} {seconds:>8.1f} {count / seconds:>9.0f} {peak:>12.0f}")
    samples = rows[-1][3]
    if samples:
        tenth = max(1, len(samples) // 10)
        deciles = [max(samples[i:i + tenth]) for i in range(0, len(samples), tenth)]
        print(f"resident MB during the {rows[-1][0]}-image run, highest per tenth of the run: "
              + " ".join(f"{d:.0f}" for d in deciles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
