"""Services under load and under failure, for real:

- the registered champion served by ``mlflow models serve -m models:/labse@champion --env-manager local``
  holds a stream from three client processes: no errors, every response equal to the in-process pyfunc's
  unit-length embeddings, memory flat after warm-up, listening on 127.0.0.1 only;
- the MLflow server SIGKILLed while a model is being registered (its artifacts half uploaded): the
  registering process fails, no version exists without its artifacts or tags, ``@champion`` does not
  move, the lake is untouched; a ``labse`` command whose MLflow server is gone says so in one line;
- every server the platform starts binds 127.0.0.1 unless told otherwise.

The numbers in docs/reliability.md come from ``python -m bench.serve_load`` (the same machinery, with e5).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import serve_load
from tests.faults.conftest import tree_digest

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("Hello world", "Hallo Welt"), ("Open file", "Datei öffnen"), ("File not found", "Datei nicht gefunden")]


@pytest.fixture(scope="module")
def sentences(real_catalogs) -> list[str]:
    from tests.eval_helpers import catalog_sentences

    return sorted(set(catalog_sentences()))[:200]


def test_served_champion_holds_a_stream(tiny_eval_model, sentences, tmp_path):
    import mlflow

    uri = serve_load.register_champion(tiny_eval_model, tmp_path / "mlflow", PAIRS)
    previous, saved_path = mlflow.get_tracking_uri(), list(sys.path)
    mlflow.set_tracking_uri(uri)
    try:  # the reference: the same registered model loaded in this process (what `labse pull` users do)
        in_process = mlflow.pyfunc.load_model(serve_load.ALIAS_URI)
        reference = in_process.predict(sentences)
        precision = in_process.unwrap_python_model().precision  # --precision auto, as the server resolves it
    finally:
        mlflow.set_tracking_uri(previous)
        sys.path[:] = saved_path
    pool, ref = serve_load.write_pool(tmp_path / "pool", sentences, reference)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with serve_load.served(uri, tmp_path / "serve.log") as server:
        assert serve_load.listening_hosts(server.pid) == {"127.0.0.1"}  # MLflow's default, not 0.0.0.0
        with serve_load.RssSampler(server.pid, interval_s=0.25) as rss:
            # warm-up as long as the measured stretch: every worker thread has its buffers and glibc arena first
            warm = serve_load.run_clients(server.url, pool, ref, tmp_path / "warm", clients=3, batch=[1, 32, 8],
                                          seconds=6, env=env, precision=precision)
            warm_at = time.monotonic()
            load = serve_load.run_clients(server.url, pool, ref, tmp_path / "load", clients=3, batch=[1, 32, 8],
                                          seconds=6, seed=1, env=env, precision=precision)
        assert server.proc.poll() is None, serve_load._tail(server.log)
    assert warm["errors"] == 0 and load["errors"] == 0, load["error_samples"] or warm["error_samples"]
    # every response was compared with the in-process rows (clients check norms and values)
    assert load["requests"] == load["checked"] >= 30, load
    assert load["max_abs_diff_vs_in_process"] <= serve_load.TOLERANCES[precision]
    np.testing.assert_allclose(np.linalg.norm(np.load(ref), axis=1), 1.0, atol=1e-5)
    memory = serve_load.memory_summary(rss.samples, warm_at)
    assert memory["flat"], memory


# ---------------------------------------------------------------------------------------------------
# The MLflow server killed mid-registration

REGISTER = """
import json, sys, mlflow
from labse_core.mlflow_model import register_and_promote
mlflow.set_experiment("labse")
with mlflow.start_run(run_name="register"):
    promo = register_and_promote(sys.argv[1], [tuple(p) for p in json.loads(sys.argv[2])], name="labse",
                                 tags={"preset": "tiny"})
print(f"registered version {promo.version}")
"""


def _register_here(tracking_uri: str, model_dir: Path) -> str:
    """What REGISTER does, in this process (no interpreter start-up); returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from labse_core.mlflow_model import register_and_promote

    previous, saved_path = mlflow.get_tracking_uri(), list(sys.path)
    mlflow.set_tracking_uri(tracking_uri)
    try:  # an experiment id, not mlflow.set_experiment: that would stay active for later tests
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name("labse")
        exp_id = exp.experiment_id if exp else client.create_experiment("labse")
        with mlflow.start_run(experiment_id=exp_id, run_name="register"):
            return register_and_promote(model_dir, PAIRS, name="labse", tags={"preset": "tiny"}).version
    finally:
        mlflow.set_tracking_uri(previous)
        sys.path[:] = saved_path


def _start_mlflow(layout, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` exactly as ``labse server up`` starts it (default host), on ``layout``'s store."""
    from flows.server import DEFAULT_HOST, _healthy, server_commands

    argv, extra, _, _, health = server_commands(layout, DEFAULT_HOST, 1, port)["mlflow"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=os.environ | extra, cwd=layout.home, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _healthy(health):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    return proc


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _model_files(layout, source: str) -> dict[str, str]:
    """The files of a logged model, read straight from the server's artifact folder (no server needed)."""
    from mlflow import MlflowClient

    client = MlflowClient(layout.mlflow_tracking_uri)
    model_id = source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location  # mlflow-artifacts:/<exp>/models/<id>/artifacts
    return tree_digest(layout.mlflow_artifacts / location.removeprefix("mlflow-artifacts:/"))


def test_mlflow_server_killed_while_registering(tiny_eval_model, tmp_path):
    from mlflow import MlflowClient

    from flows.server import free_port
    from storage.layout import Layout

    layout = Layout.from_env(tmp_path / "home").ensure()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow.log"
    env = os.environ | {"MLFLOW_TRACKING_URI": api, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    register = [sys.executable, "-c", REGISTER, str(tiny_eval_model), json.dumps(PAIRS)]
    server = _start_mlflow(layout, port, log)
    try:
        assert serve_load.listening_hosts(server.pid) == {"127.0.0.1"}
        assert _register_here(api, tiny_eval_model) == "1"
        lake = tree_digest(layout.lake)
        before = {p for p in layout.mlflow_artifacts.rglob("*") if p.is_file()}
        # Fail at once instead of retrying with backoff for minutes (MLflow's default: 7 retries).
        second = subprocess.Popen(register, env=env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ({p for p in layout.mlflow_artifacts.rglob("*") if p.is_file()} - before):
            assert second.poll() is None and time.monotonic() < deadline, second.communicate()[1][-3000:]
            time.sleep(0.005)
        _kill_group(server)  # the second model's artifacts are being uploaded
        out, err = second.communicate(timeout=120)
    finally:
        _kill_group(server)
    assert second.returncode != 0 and "registered version" not in out
    assert "MlflowException" in err or "ConnectionError" in err or "Connection" in err, err[-3000:]

    # The registry as the dead server left it (its SQLite store and artifact folder, read directly).
    client = MlflowClient(layout.mlflow_tracking_uri)
    versions = client.search_model_versions("name = 'labse'")
    assert [str(v.version) for v in versions] == ["1"]
    v1 = versions[0]
    assert str(client.get_model_version_by_alias("labse", "champion").version) == "1"
    assert {"source_run_id", "eval_acc", "gate_decision", "preset"} <= set(v1.tags)
    v1_files = _model_files(layout, v1.source)
    prefix = f"artifacts/{Path(tiny_eval_model).name}/"  # the exported folder inside the pyfunc model
    assert {k.removeprefix(prefix): h for k, h in v1_files.items() if k.startswith(prefix)} == \
        tree_digest(Path(tiny_eval_model))
    # The half-uploaded model exists, and no version names it.
    partial = [m for m in layout.mlflow_artifacts.glob("*/models/*") if m.name not in v1.source]
    assert len(partial) == 1 and 0 < len(tree_digest(partial[0])) < len(v1_files)
    assert tree_digest(layout.lake) == lake


def test_command_whose_mlflow_server_is_gone_fails_in_one_line(tiny_eval_model, tmp_path):
    from flows.server import free_port
    from tests.faults.conftest import labse_env, run_labse

    home, port = tmp_path / "home", free_port()  # nothing listens there any more
    env = labse_env(home, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    res = run_labse(home, "evaluate", "tatoeba", "--model", str(tiny_eval_model), "--langs", "deu", env=env,
                    timeout=180)
    assert res.rc == 1 and not res.has_traceback, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MLflow server not answering: API request to") and f"127.0.0.1:{port}" in last
    assert not [p for p in (home / "lake").rglob("*") if p.is_file()]  # nothing half-published


def test_service_error_recognises_gone_servers_only():
    """The one-line reporter of `labse` (flows.cli.main) for MLflow's and Prefect's clients, and nothing else."""
    import httpx
    from mlflow.exceptions import MlflowException

    from flows.cli_errors import service_error

    gone = MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with\nexception X")
    assert service_error(gone) == ("MLflow server not answering: API request to "
                                   "http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception X")
    try:  # what a flow run raises when the Prefect server died under it (seen with a SIGKILLed server)
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as e:
            raise RuntimeError("while setting the flow run state") from e
    except RuntimeError as wrapped:
        assert service_error(wrapped) == "Prefect server not answering: [Errno 111] Connection refused"
    assert service_error(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")) is None
    assert service_error(ValueError("a bug")) is None


def test_servers_bind_localhost_unless_told_otherwise(tmp_path, monkeypatch):
    """Defaults of every server command (the real listening sockets are checked in the tests above)."""
    from mlflow.cli import cli as mlflow_cli
    from mlflow.models import cli as mlflow_models_cli

    from flows import cli, cli_server
    from flows.server import DEFAULT_HOST, server_commands, up
    from storage.layout import Layout

    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(up).parameters["host"].default == DEFAULT_HOST
    assert inspect.signature(cli_server.server_up).parameters["host"].default == "127.0.0.1"
    for argv, *_ in server_commands(Layout.from_env(tmp_path / "h"), DEFAULT_HOST, 1, 2).values():
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
    # `mlflow models serve` (serving the champion) and `mlflow server` (`labse ui mlflow` runs `mlflow ui`,
    # its alias) without -h/--host; MLFLOW_HOST in the environment is the user telling them otherwise.
    for command in (mlflow_models_cli.commands.commands["serve"], mlflow_cli.commands["server"]):
        assert next(p for p in command.params if p.name == "host").default == "127.0.0.1"
    started = []
    monkeypatch.setattr(cli.os, "execv", lambda path, args: started.append(args))
    cli.ui("prefect")
    cli.ui("mlflow")
    assert started[0][started[0].index("--host") + 1] == "127.0.0.1"
    assert "--host" not in started[1] and started[1][1] == "ui"
