"""quadra_ad: Hydra experiment orchestration for visual anomaly detection.

Kept import-light on purpose: ``quadra-ad --help`` must not pay for torch or anomalib.
"""

__version__ = "0.1.0"
