"""The line-PC runtime: cold start, memory and throughput of the Predictor against bare ONNX Runtime.

Trains a PaDiM (resnet18, random weights, offline) at ``--size`` px on generated images, then:

- cold start: a new process that imports the Predictor, loads the ONNX model and scores one
  image file — wall time from spawn to the printed score, and the process's peak RSS (best of
  ``--repeats``); with ``--runtime-python`` (the python of a runtime-only venv, no torch) the
  same process runs there too;
- images/s at batch 1 and 16: ``Predictor.run`` on prepared arrays vs a bare
  ``InferenceSession.run`` on the same arrays (same session options), the whole
  ``Predictor.predict`` from image files (reading + NumPy preparation + graph), and the
  Predictor on the OpenVINO export of the same model (when OpenVINO is installed).

    python scripts/runtime_benchmark.py
    python scripts/runtime_benchmark.py --runtime-python <runtime-only venv>/bin/python --size 256
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLD_START = """
import sys, time
started = float(sys.argv[3])
from quadra_ad.deploy import Predictor
score = Predictor.load(sys.argv[1]).predict(sys.argv[2]).score
print(time.time() - started, score, 'torch' in sys.modules)
"""


def _cold_start(python: str, model: Path, image: Path, repeats: int) -> tuple[float, float, bool]:
    """(best seconds to the first score, peak RSS MB of the slowest-memory run, torch imported?)."""
    walls, peaks, torch_loaded = [], [], False
    for _ in range(repeats):
        # One measuring child per run: RUSAGE_CHILDREN keeps the maximum over every child ever waited for.
        probe = (f"import resource, subprocess, sys, time; "
                 f"out = subprocess.run([{python!r}, '-c', {COLD_START!r}, {str(model)!r}, {str(image)!r}, "
                 f"repr(time.time())], capture_output=True, text=True, check=True).stdout; "
                 f"print(out.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        fields = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
        walls.append(float(fields[0]))
        torch_loaded = torch_loaded or fields[2] == "True"
        peaks.append(int(fields[3]) / 1024)
    return min(walls), max(peaks), torch_loaded


def _images_per_second(step, images: int, seconds: float = 3.0) -> float:
    step()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += images
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="input size of the PaDiM, px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime-python", help="python of a runtime-only environment (pip install quadra_ad)")
    args = parser.parse_args()

    import importlib.util

    import numpy as np

    from quadra_ad.deploy import Predictor
    from quadra_ad.deploy.runners import onnx_session_options
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    has_openvino = importlib.util.find_spec("openvino") is not None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_synthetic_dataset(folder / "data", n_train=16, n_test_good=4, n_test_defect=4, size=args.size)
        subprocess.run([sys.executable, "-m", "quadra_ad", "experiment=base/anomaly/padim", f"datamodule.data_path={data}",
                        "backbone.pre_trained=false", f"transforms.input_size=[{args.size},{args.size}]", "~logger",
                        f"export.types=[{'onnx,openvino' if has_openvino else 'onnx'}]", "datamodule.num_workers=0",
                        "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={folder / 'run'}"], cwd=folder, check=True, capture_output=True, text=True)
        model = folder / "run" / "deployment_model" / "model.onnx"
        image = sorted((data / "test").rglob("*.png"))[0]

        rows = [("cold start to first score, full environment", *_cold_start(sys.executable, model, image, args.repeats))]
        if args.runtime_python:
            rows.append(("cold start to first score, runtime-only environment",
                         *_cold_start(args.runtime_python, model, image, args.repeats)))

        predictor = Predictor.load(model)
        openvino = Predictor.load(model.with_name("model.xml")) if has_openvino else None
        import onnxruntime as ort

        bare = ort.InferenceSession(str(model), sess_options=onnx_session_options(), providers=["CPUExecutionProvider"])
        name = bare.get_inputs()[0].name
        paths = sorted((data / "test").rglob("*.png"))
        rates = []
        for batch in (1, 16):
            prepared = np.stack([predictor.prepare(paths[i % len(paths)])[0] for i in range(batch)])
            batch_paths = [paths[i % len(paths)] for i in range(batch)]
            rates.append((batch,
                          _images_per_second(lambda p=prepared: bare.run(None, {name: p}), batch),
                          _images_per_second(lambda p=prepared: predictor.run(p), batch),
                          _images_per_second(lambda b=batch_paths: predictor.predict(b, batch_size=len(b)), batch),
                          _images_per_second(lambda p=prepared: openvino.run(p), batch) if openvino else float("nan")))

    print(f"PaDiM resnet18 ONNX at {args.size} px, {len(__import__('os').sched_getaffinity(0))} cores")
    print(f"{'':<52} {'seconds':>8} {'peak RSS MB':>12} {'torch imported':>15}")
    for what, wall, peak, torch_loaded in rows:
        print(f"{what:<52} {wall:>8.2f} {peak:>12.0f} {str(torch_loaded):>15}")
    print()
    print(f"{'images/s':<10} {'bare session.run':>17} {'Predictor.run':>14} {'overhead':>9} {'predict(files)':>15} "
          f"{'OpenVINO run':>13}")
    for batch, bare_rate, ours, whole, ov_rate in rates:
        print(f"{'batch ' + str(batch):<10} {bare_rate:>17.1f} {ours:>14.1f} {100 * (1 - ours / bare_rate):>8.1f}% {whole:>15.1f} "
              f"{ov_rate:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
