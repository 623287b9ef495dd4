"""Console scripts. ``quadra_ad`` alone is the line-PC runtime (``quadra-ad-predict``, the
:class:`~quadra_ad.deploy.Predictor`); training, tracking and comparing need the ``train``
extra. Without it those commands say so in one line instead of an ImportError traceback.
"""

import importlib.util
import sys

#: Import name → distribution name of what the training extra brings.
TRAINING_PACKAGES = {
    "torch": "torch", "torchvision": "torchvision", "lightning": "lightning", "anomalib": "anomalib",
    "hydra": "hydra-core", "omegaconf": "omegaconf", "mlflow": "mlflow", "sklearn": "scikit-learn", "onnx": "onnx",
}


def missing_training_packages() -> list[str]:
    return [dist for module, dist in TRAINING_PACKAGES.items() if importlib.util.find_spec(module) is None]


def _require_training_extra(prog: str) -> None:
    missing = missing_training_packages()
    if missing:
        print(f"{prog}: needs quadra_ad's training extra (missing: {', '.join(missing)}): "
              f"pip install 'quadra_ad[train]' (quadra-ad-predict runs exported models without it)", file=sys.stderr)
        sys.exit(2)


def quadra_ad() -> None:
    _require_training_extra("quadra-ad")
    try:
        from quadra_ad.cli.train import main
    except KeyboardInterrupt:
        # Ctrl-C while the command itself is still being imported: nothing has run yet.
        import os

        from quadra_ad.errors import INTERRUPTED_AT_START

        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    from quadra_ad.runtime.interrupts import quiet_broken_pipe

    try:
        with quiet_broken_pipe():
            main()
    finally:
        from quadra_ad.runtime.garbage_collection import skip_final_collection

        skip_final_collection()  # the process ends here, normally or through sys.exit


def quadra_ad_compare():
    _require_training_extra("quadra-ad-compare")
    from quadra_ad.cli.compare import main
    from quadra_ad.runtime.interrupts import quiet_broken_pipe

    with quiet_broken_pipe():
        return main()


def quadra_ad_upload():
    _require_training_extra("quadra-ad-upload")
    from quadra_ad.cli.upload import main
    from quadra_ad.runtime.interrupts import quiet_broken_pipe

    with quiet_broken_pipe():
        return main()
