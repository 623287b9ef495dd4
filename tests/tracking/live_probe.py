"""A Lightning callback for the live-logging tests: at the start of one epoch it looks at the MLflow
run the training opened (and can stop the tracking server), then writes what it saw to a JSON file."""

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class LiveProbe(Callback):
    def __init__(self, out: str, at_epoch: int = 2, kill_pid_file: str | None = None) -> None:
        self.out, self.at_epoch, self.kill_pid_file = Path(out), at_epoch, kill_pid_file

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.at_epoch:
            return
        from mlflow.tracking import MlflowClient

        record = json.loads((Path(trainer.default_root_dir) / "mlflow_run.json").read_text())
        client = MlflowClient(tracking_uri=record["tracking_uri"])
        run = client.get_run(record["live_run_id"])
        seen = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "loss_steps": [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_epoch")],
            "auroc_steps": [m.step for m in client.get_metric_history(run.info.run_id, "val_image_AUROC")],
            "params": dict(run.data.params),
        }
        self.out.write_text(json.dumps(seen))
        if self.kill_pid_file:
            os.killpg(int(Path(self.kill_pid_file).read_text()), signal.SIGKILL)
