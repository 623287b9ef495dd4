"""Tell the task, once, what the training actually started with."""

from collections.abc import Callable

from lightning.pytorch.callbacks import Callback


class OnTrainingStart(Callback):
    """Calls ``notify(trainer)`` when training starts: after the batch-size finder (which runs at
    fit start) has chosen, before the first batch, so the chosen value is known while training."""

    def __init__(self, notify: Callable) -> None:
        self.notify = notify
        self._done = False

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._done:
            self._done = True
            self.notify(trainer)
