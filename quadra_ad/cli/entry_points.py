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
        from quadra_ad.runtime.exit_codes import EXIT_MISTAKE

        print(f"{prog}: needs quadra_ad's training extra (missing: {', '.join(missing)}): "
              f"pip install 'quadra_ad[train]' (quadra-ad-predict runs exported models without it)", file=sys.stderr)
        sys.exit(EXIT_MISTAKE)


def _interrupted_while_importing(ending) -> None:
    """Ctrl-C while the command itself is still being imported: nothing has run yet."""
    from quadra_ad.errors import INTERRUPTED_AT_START
    from quadra_ad.runtime.run_ending import exit_at_once

    if ending.stopped:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        exit_at_once(ending.exit_code)


def quadra_ad() -> None:
    _require_training_extra("quadra-ad")
    from quadra_ad.runtime.closed_output import quiet_broken_pipe
    from quadra_ad.runtime.garbage_collection import skip_final_collection
    from quadra_ad.runtime.run_ending import ending_the_run

    with ending_the_run(say=_interrupted_while_importing, exits=True):
        from quadra_ad.cli.train import main
    try:
        with quiet_broken_pipe():
            main()
    finally:
        skip_final_collection()  # the process ends here, normally or through sys.exit


def quadra_ad_compare():
    _require_training_extra("quadra-ad-compare")
    from quadra_ad.cli.compare import main
    from quadra_ad.runtime.closed_output import quiet_broken_pipe

    with quiet_broken_pipe():
        return main()


def quadra_ad_upload():
    _require_training_extra("quadra-ad-upload")
    from quadra_ad.cli.upload import main
    from quadra_ad.runtime.closed_output import quiet_broken_pipe

    with quiet_broken_pipe():
        return main()
