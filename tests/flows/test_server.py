"""The platform as a service, for real: `labse server up` starts a Prefect server and an MLflow server (SQLite
under a temporary LABSE_HOME), `labse serve` registers and serves the deployments, a flow run created
through the Prefect REST API (what the UI's "Run" button does) completes and shows up in MLflow, a file
dropped into the inbox fires "new data landed" and scheduled-retrain gets a flow run, the schedule stays
active after `labse serve` stops, and `labse server down` stops both servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Path("/usr/share/locale/de/LC_MESSAGES/coreutils.mo")


def api(base: str, method: str, path: str, body: object | None = None) -> object:
    """One REST call; 503/429 (SQLite busy while `labse serve` registers deployments) are retried, as
    Prefect's own client does."""
    for attempt in range(8):
        req = urllib.request.Request(base + path, method=method, headers={"Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (localhost)
                text = r.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503) or attempt == 7:
                raise
            time.sleep(1 + attempt)


def labse(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(what: str, check, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    if not CATALOG.is_file():
        pytest.skip(f"{CATALOG} is missing")
    home = tmp_path_factory.mktemp("served")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env |= {"LABSE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "OMP_NUM_THREADS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1"}
    pport, mport = free_port(), free_port()
    up = labse(env, "server", "up", "--prefect-port", str(pport), "--mlflow-port", str(mport))
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert f"http://127.0.0.1:{pport}" in up.stdout and f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mport}" in up.stdout
        log = home / "serve.log"
        with log.open("w") as out:
            serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *", "--poll-s", "1"],
                                     env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        yield {"home": home, "env": env, "prefect": f"http://127.0.0.1:{pport}/api", "mlflow": f"http://127.0.0.1:{mport}",
               "serve": serve, "log": log}
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(30)
    finally:
        down = labse(env, "server", "down", timeout=60)
        assert down.returncode == 0, down.stderr


def deployment(p, name: str) -> dict:
    def get():
        try:
            return api(p["prefect"], "GET", f"/deployments/name/{name}")
        except OSError:
            return None
    return wait_for(f"deployment {name}", get, 120, p["log"])


def test_ui_style_run_completes_and_lands_in_mlflow(platform):
    from mlflow import MlflowClient

    status = labse(platform["env"], "server", "status", timeout=60)
    assert status.returncode == 0 and status.stdout.count(" up ") == 2, status.stdout
    deployment(platform, "scheduled-retrain/scheduled-retrain")  # the last one `labse serve` registers
    dep = deployment(platform, "labse-ingest/labse-ingest")
    params = {"config": {"locale_roots": [], "paths": [str(CATALOG)], "languages": ["de"],
                         "beam": {"num_workers": 1, "running_mode": "in_memory"}}}
    run = api(platform["prefect"], "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})

    def finished():
        state = api(platform["prefect"], "GET", f"/flow_runs/{run['id']}")["state"]["type"]
        assert state not in ("FAILED", "CRASHED", "CANCELLED"), platform["log"].read_text()[-4000:]
        return state == "COMPLETED"
    wait_for("the ingest flow run", finished, 180, platform["log"])

    client = MlflowClient(tracking_uri=platform["mlflow"])
    exp = client.get_experiment_by_name("labse")
    runs = client.search_runs([exp.experiment_id], f"tags.prefect_flow_run_id = '{run['id']}'")
    assert [r.info.run_name for r in runs] == ["labse-ingest"] and runs[0].info.status == "FINISHED"
    child = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'")
    assert [c.info.run_name for c in child] == ["ingest"] and child[0].data.metrics["rows"] > 100
    artifacts = api(platform["prefect"], "POST", "/artifacts/filter",
                    {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    assert any("labse-ingest" in (a.get("description") or "") + (a.get("key") or "") + str(a.get("data"))
               for a in artifacts)


def test_new_data_in_the_inbox_triggers_scheduled_retrain(platform):
    dep = deployment(platform, "scheduled-retrain/scheduled-retrain")
    assert [s["schedule"].get("cron") for s in dep["schedules"]] == ["0 3 * * *"]
    wait_for("the inbox watcher", lambda: "serving" in platform["log"].read_text(), 60, platform["log"])
    (platform["home"] / "inbox" / "new.en-de.tsv").write_text("Open file\tDatei öffnen\n", encoding="utf-8")

    def retrain_runs():
        return api(platform["prefect"], "POST", "/flow_runs/filter",
                   {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    runs = wait_for("a scheduled-retrain flow run", retrain_runs, 90, platform["log"])
    assert "new data landed" in platform["log"].read_text()
    assert all(r["deployment_id"] == dep["id"] for r in runs)

    serve = platform["serve"]
    os.killpg(serve.pid, signal.SIGTERM)
    serve.wait(30)
    after = api(platform["prefect"], "GET", f"/deployments/{dep['id']}")
    assert after["paused"] is False  # pause_on_shutdown=False: the schedule outlives labse serve


def test_prepare_append_emits_new_data_landed(platform, tmp_path):
    """`labse prepare --append` with new clean pairs tells the server; the trigger creates a scheduled-retrain
    run (server-side: it needs no `labse serve`, which the previous test stopped)."""
    dep = deployment(platform, "scheduled-retrain/scheduled-retrain")

    def retrain_runs():
        return api(platform["prefect"], "POST", "/flow_runs/filter",
                   {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    before = len(retrain_runs())
    tsv = tmp_path / "more.tsv"
    tsv.write_text("Save the document\tDas Dokument speichern\nClose the window\tDas Fenster schließen\n"
                   "Print the page\tDie Seite drucken\n", encoding="utf-8")
    res = labse(platform["env"], "prepare", "--append", "--no-raw", "-i", str(tsv), "--langs", "en,de")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "emitted: new data landed" in res.stdout, res.stdout
    wait_for("a scheduled-retrain run from the event", lambda: len(retrain_runs()) > before, 60, platform["log"])
