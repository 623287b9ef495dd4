"""A Hydra callback that writes what the task function returned, as a sweeper would receive it."""

import json
from pathlib import Path

from hydra.experimental.callback import Callback


class ReturnRecorder(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.path.write_text(json.dumps(job_return.return_value))
