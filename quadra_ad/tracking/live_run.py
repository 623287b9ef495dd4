"""The MLflow run of a training, opened when training starts and fed while it trains.

Per-epoch losses, validation metrics and learning rates reach the run as Lightning logs them,
and MLflow's own system-metrics monitor samples CPU, memory, disk, network (and GPU when
there is one), so a long training is watchable in ``mlflow ui``.

Live logging is a courtesy, never a condition: the first failure (server gone, store locked)
switches it off with one warning and training goes on. The run folder's ``mlflow_run.json``
names the live run, and the final logging (at the end, or ``quadra-ad-upload`` later) completes
that same run instead of creating a second one.

Why not Lightning's ``MLFlowLogger``: it ends the run itself when training ends, logs every value by
global step, and a store that stops answering raises into the training; this run is ended by the
final logging, and a failure only switches live logging off.
"""

import logging
import os
import time
from collections.abc import Mapping

from quadra_ad.errors import first_line
from quadra_ad.tracking.mlflow_writer import (
    check_server_reachable,
    check_sqlite_store_writable,
    create_embedded_store,
    experiment_id_for,
)
from quadra_ad.tracking.run_record import RunRecord

log = logging.getLogger(__name__)

#: A live request to a server that stopped answering must not hold training for minutes
#: (MLflow's client retries with back-off by default). Values the user set win.
LIVE_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class LiveRun:
    """One RUNNING MLflow run that accepts metrics while the training goes on."""

    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        #: The one line saying why live logging stopped (None while it works).
        self.broken: str | None = None
        self._monitor = None

    @classmethod
    def open(cls, record: RunRecord, params_held_back: tuple[str, ...] = ()) -> "LiveRun":
        """Create the run described by a run record and log its params.

        ``params_held_back``: params whose value is only known once training started (the batch
        size a finder picks); they are logged later with :meth:`log_params`. Raises on failure:
        the caller decides that the run then goes on without live logging.
        """
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = record.tracking_uri
        if uri.startswith(("http://", "https://")):
            for name, value in LIVE_HTTP_SETTINGS.items():
                os.environ.setdefault(name, value)
        check_server_reachable(uri)
        check_sqlite_store_writable(uri)
        create_embedded_store(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = experiment_id_for(client, uri, record.experiment_name, record.artifact_location)
        run = client.create_run(experiment_id, run_name=record.run_name, tags=dict(record.tags))
        params = [Param(k, v) for k, v in record.params.items() if k not in params_held_back]
        client.log_batch(run.info.run_id, params=params)  # in as many requests as MLflow's limits ask
        return cls(uri, run.info.run_id, experiment_id)

    # -- while training ----------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], steps: Mapping[str, int]) -> None:
        """Log ``metrics`` at their ``steps``; after a failure, nothing more is sent."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        items = [Metric(k, float(v), now_ms, int(steps[k])) for k, v in metrics.items()]
        if items:
            self._send(lambda client: client.log_batch(self.run_id, metrics=items), "metrics")

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        if items:
            self._send(lambda client: client.log_batch(self.run_id, params=items), "params")

    def _send(self, request, what: str) -> None:
        if self.broken is not None:
            return
        from mlflow.tracking import MlflowClient

        try:
            request(MlflowClient(tracking_uri=self.tracking_uri))
        except Exception as error:  # noqa: BLE001 - live logging never stops a training
            self.broken = first_line(error, typed=True, limit=300)
            self.stop_system_metrics()
            log.warning("MLflow stopped taking the live %s of run %s (%s); training goes on, the run folder keeps "
                        "everything and the run is completed at the end (or with quadra-ad-upload)",
                        what, self.run_id, self.broken)

    # -- system metrics ----------------------------------------------------------------------
    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's monitor of CPU, memory, disk, network and GPU, sampled every ``interval_s``."""
        # Its "started"/"no GPU" INFO lines are noise in a run's output; its warnings still show.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s,
                                                 tracking_uri=self.tracking_uri)
            # The first sample is taken here, on this thread: the monitor's thread then only
            # samples and sends (no import of its own while DataLoader workers fork).
            self._monitor.collect_metrics()
            self._monitor.start()
        except Exception as error:  # noqa: BLE001 - e.g. psutil missing: the run goes on without
            self._monitor = None
            log.warning("no system metrics for this run (%s: %s)", type(error).__name__, error)

    def stop_system_metrics(self, wait_s: float = 10.0) -> None:
        """Stop the monitor, waiting at most ``wait_s`` for its thread.

        MLflow's ``finish()`` joins that thread without a limit. A Ctrl-C or SIGTERM that lands
        inside the logging module's critical section leaves its lock held by the main thread, and
        the monitor's thread, logging through SQLAlchemy, then waits on it forever: the run would
        never end. The thread is a daemon, so a stuck one is left behind.
        """
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        thread, shutdown = getattr(monitor, "_process", None), getattr(monitor, "_shutdown_event", None)
        if thread is not None and shutdown is not None:
            shutdown.set()
            thread.join(wait_s)
            if thread.is_alive():
                log.debug("system metrics monitor did not stop within %.0f s; left behind", wait_s)
                return
        try:
            monitor.finish()
        except Exception:
            log.debug("system metrics monitor did not stop cleanly", exc_info=True)
