"""How fast a mistake is answered: the start-up checks against what an error used to cost.

Before the checks ran ahead of the run, a config or dataset mistake was found inside the task,
after torch, Lightning and anomalib were imported. This prints, best of ``--repeats`` runs:

- a refused command (``trainer.max_epochs=abc``) end to end, as a user types it;
- the same process importing torch + Lightning + anomalib (the floor of the old path);
- the dataset preflight on a generated folder of ``--images`` images (headers of every image).

    python scripts/startup_checks_benchmark.py                 # 5,000 images at 256 px
    python scripts/startup_checks_benchmark.py --images 20000 --size 512
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _best_wall(command: list[str], cwd: Path, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - started)
    return min(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="training images in the generated folder")
    parser.add_argument("--size", type=int, default=256, help="side of the generated images, px")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from quadra_ad.checks.dataset import check_dataset
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_synthetic_dataset(folder / "data", n_train=1, n_test_good=8, n_test_defect=8, size=args.size)
        image = (data / "train" / "good" / "000.png").read_bytes()
        for i in range(1, args.images):
            (data / "train" / "good" / f"copy_{i:06d}.png").write_bytes(image)

        refused = _best_wall([sys.executable, "-m", "quadra_ad", "experiment=base/anomaly/padim",
                              f"datamodule.data_path={data}", "trainer.max_epochs=abc"], folder, args.repeats)
        imports = _best_wall([sys.executable, "-c", "import torch, lightning, anomalib.models"], folder, args.repeats)
        checks = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            check_dataset(data)
            checks.append(time.perf_counter() - started)

    print(f"{'what':<58} {'seconds':>8}")
    print(f"{'refused command, end to end (now)':<58} {refused:>8.2f}")
    print(f"{'imports an error used to wait for (torch, Lightning, anomalib)':<58} {imports:>8.2f}")
    print(f"{f'dataset preflight, {args.images} images at {args.size} px':<58} {min(checks):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
