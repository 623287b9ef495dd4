"""Write a synthetic MVTec-style dataset to try quadra-ad without data.

    python scripts/make_synthetic_dataset.py data/synthetic --size 128 --train 80
    quadra-ad experiment=base/anomaly/padim datamodule.data_path=data/synthetic model.pre_trained=false
"""

import argparse

from quadra_ad.testing.synthetic import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--test-good", type=int, default=15)
    parser.add_argument("--test-defect", type=int, default=15)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-masks", action="store_true")
    args = parser.parse_args()
    root = write_synthetic_dataset(
        args.root, args.train, args.test_good, args.test_defect, args.size, args.seed, with_masks=not args.no_masks
    )
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
