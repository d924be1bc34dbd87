"""The MLflow registry flow on a real PostgreSQL server: log, register, alias (two versions through
the gate), then pull ``models:/labse@champion`` in a fresh process. `.ci/run` starts the server
(``infra/ci/postgres.sh``) and exports ``LABSE_TEST_POSTGRES_URI``; without it the test is skipped
and says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.eval_helpers import make_tiny_model

PG_ENV = "LABSE_TEST_POSTGRES_URI"
SENTENCES = ["Hello world", "Hallo Welt", "File not found"]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not os.environ.get(PG_ENV),
    reason=f"no PostgreSQL server: {PG_ENV} is not set (.ci/run starts one with infra/ci/postgres.sh)")


@pytest.fixture(scope="module")
def pg_uri():
    """A fresh database on the server for this run, dropped afterwards."""
    import psycopg2

    server = os.environ[PG_ENV]  # postgresql+psycopg2://user@host:port/db (SQLAlchemy's spelling)
    name = f"labse_mlflow_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server.replace("+psycopg2", "", 1))
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + f"/{name}"
    import sqlalchemy  # MLflow's engine keeps connections open: dispose them before dropping

    sqlalchemy.orm.close_all_sessions()
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_registry_flow_on_postgres(pg_uri, tmp_path, real_catalogs):
    import mlflow
    from mlflow import MlflowClient

    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.mlflow_model import register_and_promote

    model_dir = make_tiny_model(tmp_path / "m")
    pairs = [("Hello world", "Hallo Welt"), ("File", "Datei"), ("Open", "Öffnen")]
    previous = mlflow.get_tracking_uri()
    saved_path = list(sys.path)
    mlflow.set_tracking_uri(pg_uri)
    try:
        exp = mlflow.create_experiment("pg-test", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            first = register_and_promote(model_dir, pairs, name="labse")
        with mlflow.start_run(experiment_id=exp):
            second = register_and_promote(model_dir, pairs, name="labse")  # a tie: the new one is promoted
    finally:
        mlflow.set_tracking_uri(previous)
        sys.path[:] = saved_path
    assert (first.version, second.version) == ("1", "2") and first.promoted and second.promoted
    client = MlflowClient(pg_uri)
    assert str(client.get_model_version_by_alias("labse", "champion").version) == "2"
    assert str(client.get_registered_model("labse").aliases["champion"]) == "2"
    assert pg_uri.startswith("postgresql+psycopg2://") and client._tracking_client.tracking_uri == pg_uri

    script = ("import json, sys, mlflow, numpy as np\n"
              "m = mlflow.pyfunc.load_model('models:/labse@champion')\n"
              "np.save(sys.argv[2], m.predict(json.loads(sys.argv[1])))\n")
    npy = tmp_path / "emb.npy"
    env = os.environ | {"MLFLOW_TRACKING_URI": pg_uri, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(SENTENCES), str(npy)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(npy), encode(SENTENCES, load_encoder(model_dir), progress=False), atol=1e-5)
