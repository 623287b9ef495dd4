"""Per-epoch (and per-step) values Lightning logged during training, read back from its CSV log."""

import csv
import math
from pathlib import Path

History = dict[str, list[tuple[int, float]]]


def indexed_by_epoch(name: str) -> bool:
    """Epoch-level values (``*_epoch``, validation metrics) are stepped by epoch, the rest by global step."""
    return name.endswith("_epoch") or name.startswith("val_")


def read_lightning_history(run_dir: Path) -> History:
    """``{metric: [(step, value), ...]}`` from ``lightning_logs/version_*/metrics.csv``.

    Epoch-level columns (``*_epoch`` and metrics logged once per epoch) use the epoch as step;
    the rest use the global step.
    """
    history: History = {}
    for csv_path in sorted(Path(run_dir).glob("lightning_logs/version_*/metrics.csv")):
        with csv_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                epoch = _as_int(row.get("epoch"))
                step = _as_int(row.get("step"))
                for name, text in row.items():
                    if name in ("epoch", "step") or text in ("", None) or not isinstance(text, str):
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue  # a row cut short (the run was stopped while Lightning wrote it)
                    if math.isnan(value):
                        continue
                    history.setdefault(name, []).append((epoch if indexed_by_epoch(name) else step, value))
    return history


def _as_int(text: str | None) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return 0
