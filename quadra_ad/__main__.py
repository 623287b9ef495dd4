"""``python -m quadra_ad`` behaves exactly like the ``quadra-ad`` console script."""

from quadra_ad.cli.entry_points import quadra_ad

if __name__ == "__main__":
    quadra_ad()
