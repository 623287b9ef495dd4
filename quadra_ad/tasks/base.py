"""The task lifecycle shared by training and inference.

A task is ``prepare → train → test → export → report → finalize``; the CLI only builds the task
named in the config and calls :meth:`Task.execute`. Steps a task does not need stay no-ops.
"""

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


class Task:
    """Base class: holds the composed config and the run folder."""

    def __init__(self, config: DictConfig, output_dir: Path) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def prepare(self) -> None:
        """Build everything the later steps need (data, model, trainer)."""

    def train(self) -> None:
        """Fit the model."""

    def test(self) -> None:
        """Score the test data."""

    def export(self) -> None:
        """Write deployable artifacts."""

    def report(self) -> None:
        """Write human-readable results (tables, metrics) into the run folder."""

    def finalize(self) -> None:
        """Log the run to the tracker. Must never lose what is already on disk."""

    def execute(self) -> None:
        """Run every step in order."""
        for step in (self.prepare, self.train, self.test, self.export, self.report, self.finalize):
            log.debug("Task step: %s", step.__name__)
            step()
