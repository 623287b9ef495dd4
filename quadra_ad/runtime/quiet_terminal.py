"""A quiet terminal: what a run prints is what a user acts on; the run's log file keeps the rest.

On the terminal: quadra-ad's own lines (dataset, thresholds, metrics, results, export, where the
run and its MLflow record are), every warning and error of ours, and any library's warnings and
errors logged through ``logging``. In the run's log file only (``<run folder>/cli.log``): how each
object was built ("Instantiating …"), Lightning's and anomalib's progress notes (device lines, the
model summary table, ``val_check_interval`` and "fit stopped" notes), and third-party Python
warnings (deprecations, Lightning's ``PossibleUserWarning`` hints such as ``num_workers``).
Lightning's litlogger advert and MLflow's database-creation lines are dropped.
``core.verbose=true`` prints everything. MLflow's telemetry is off unless the user turned it on
(``MLFLOW_DISABLE_TELEMETRY=false``).
"""

import logging
import os
import re
import warnings

#: Packages whose Python warnings (deprecations, hints) go to the run's log file, not the terminal.
THIRD_PARTY = ("lightning", "lightning_fabric", "pytorch_lightning", "torch", "torchvision", "torchmetrics", "timm",
               "anomalib", "mlflow", "onnx", "onnxscript", "onnx_ir", "openvino")
_THIRD_PARTY_FILE = re.compile(r"[\\/](?:" + "|".join(THIRD_PARTY) + r")[\\/]")
#: Warnings that are noise wherever they are attributed (a library may warn on behalf of its caller).
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
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern in NOISE), re.IGNORECASE)
#: Third-party warnings a user acts on: they stay on the terminal.
ACTIONABLE = re.compile(r"GPU available but not used")
#: Loggers whose lines below WARNING are kept from the terminal (their warnings and errors still show).
LOG_FILE_ONLY_BELOW_WARNING = ("quadra_ad.config.instantiation", "lightning", "anomalib")
#: The logger that carries third-party Python warnings into the log file (as ``logging.captureWarnings`` names it).
WARNINGS_LOGGER = "py.warnings"
#: Terminal colour codes some libraries put in their warnings (MLflow): the log file is plain text.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class TerminalFilter(logging.Filter):
    """On a terminal handler: lets through what a user acts on; the log file handler keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == WARNINGS_LOGGER:
            return False
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == name or record.name.startswith(f"{name}.")
                       for name in LOG_FILE_ONLY_BELOW_WARNING)


def quiet_third_party(verbose: bool = False) -> None:
    """Keep library notes and third-party warnings off the terminal (in the log file) unless ``verbose``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _print_lightning_once()
    if verbose:
        return
    _filter_terminal_handlers()
    _route_third_party_warnings()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero.filters):  # once, though each sweep job calls this
        rank_zero.addFilter(_DropAdverts())
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _filter_terminal_handlers() -> None:
    """Hydra sets up the root logger with a terminal handler and a file handler (each job anew, so
    this runs per job): only the terminal one gets the filter."""
    for handler in logging.getLogger().handlers:
        on_terminal = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if on_terminal and not any(isinstance(f, TerminalFilter) for f in handler.filters):
            handler.addFilter(TerminalFilter())


def is_third_party_noise(message: Warning | str, filename: str) -> bool:
    """A warning raised from a third-party package's file, or known noise, that no user acts on."""
    text = str(message)
    if ACTIONABLE.search(text):
        return False
    return bool(_THIRD_PARTY_FILE.search(filename) or _NOISE.match(text))


def _route_third_party_warnings() -> None:
    """Third-party warnings go to the log file where they are shown. Some libraries reset the
    filters around their own calls (MLflow shows its UserWarnings "once" inside ``catch_warnings``),
    so the decision is taken at display, not by a filter."""
    shown = warnings.showwarning
    if getattr(shown, "_quadra_ad_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not is_third_party_noise(message, filename):
            shown(message, category, filename, lineno, file, line)
            return
        log = logging.getLogger(WARNINGS_LOGGER)
        # Outside a Hydra run nothing logs to a file, and logging's last resort would print it.
        if log.hasHandlers():
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            log.warning("%s", _COLOUR.sub("", text))

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
