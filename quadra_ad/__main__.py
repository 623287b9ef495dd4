"""``python -m quadra_ad`` behaves exactly like the ``quadra-ad`` console script."""

from quadra_ad.cli import main

if __name__ == "__main__":
    main()
