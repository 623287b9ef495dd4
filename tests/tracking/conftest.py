"""A real ``mlflow server`` on loopback (SQLite backend, local artifact root), started once per session."""

import pytest

from tests.mlflow_processes import free_port, start_mlflow, stop_mlflow

__all__ = ["free_port", "mlflow_server"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URI of a running ``mlflow server`` whose store lives in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow_server")
    process, uri = start_mlflow(["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts")], root, root / "server.log")
    try:
        yield uri
    finally:
        stop_mlflow(process)
