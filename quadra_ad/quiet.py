"""A quiet terminal: what a run prints is quadra-ad's own lines, Lightning's once, and real problems.

Third-party deprecation and future warnings (timm, anomalib, torch.jit, Lightning's pytree), the
Lightning hints that do not apply to one-epoch models, the litlogger advert and MLflow's
database-creation lines say nothing a user can act on. ``core.verbose=true`` keeps them all.
MLflow's telemetry is off unless the user turned it on (``MLFLOW_DISABLE_TELEMETRY=false``).
"""

import logging
import os
import warnings

#: Packages whose FutureWarning / DeprecationWarning / UserWarning lines are silenced.
THIRD_PARTY = r"(lightning|torch|torchvision|torchmetrics|timm|anomalib|mlflow|onnx|onnxscript|onnx_ir|openvino)(\.|$)"
#: Messages that are noise whichever module they are attributed to.
NOISE = (
    r".*Importing from timm\.models",
    r".*anomalib\.models\.components\.dinov2 package is deprecated",
    r".*`torch\.jit\.",
    r".*isinstance\(treespec, LeafSpec\)",
    r".*Add type hints to the `predict` method",
    r".*module\(s\) in eval mode at the start of training",
    r".*smaller than the logging interval",
    r".*`LightningModule\.configure_optimizers` returned `None`",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party(verbose: bool = False) -> None:
    """Silence third-party noise (not errors, not our own warnings) unless ``verbose``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _print_lightning_once()
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    _drop_noise_at_display()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _drop_noise_at_display() -> None:
    """Some libraries reset the filters around their own calls (MLflow shows its UserWarnings
    "once" inside ``catch_warnings``), so the known noise is also dropped where warnings are shown."""
    import re

    shown = warnings.showwarning
    if getattr(shown, "_quadra_ad_quiet", False):
        return
    noise = re.compile("|".join(f"(?:{pattern})" for pattern in NOISE), re.IGNORECASE)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if noise.match(str(message)):
            return
        shown(message, category, filename, lineno, file, line)

    showwarning._quadra_ad_quiet = True
    warnings.showwarning = showwarning


def _print_lightning_once() -> None:
    """Lightning adds its own stderr handlers when it is imported before logging is configured
    (as under Hydra): its lines then came out twice. Hydra's handlers print them once."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
