"""The platform as a service, for real: `labse server up` starts a Prefect server and an MLflow server (SQLite under
a temporary LABSE_HOME), `labse serve` registers and serves the deployments. A flow run created through the
Prefect REST API (what the UI's "Run" button does) completes and shows up in MLflow; with a schedule that
cannot fire during the test, a file dropped into the inbox starts exactly one scheduled-retrain run, created by
the server's automation; an emit the server does not take is said and retried; `labse prepare --append` tells
the server too; the schedule stays active after `labse serve` stops; `labse server down` stops both servers.
The cron schedule itself: tests/flows/test_server_schedule.py and test_server_retrain.py."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest

from tests.flows.served import CATALOG, api, labse, platform, wait_for


def _cron_far_from_now() -> str:
    """A daily schedule 12 hours away: it cannot fire while this module runs."""
    now = datetime.now(UTC)
    return f"{now.minute} {(now.hour + 12) % 24} * * *"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with platform(tmp_path_factory.mktemp("served")) as p:
        p.cron = _cron_far_from_now()
        p.start_serving("--cron", p.cron)
        yield p


@pytest.fixture(autouse=True)
def clean_server_logs(served):
    yield
    served.assert_server_logs_clean()


def _by_automation(served) -> list[dict]:
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    return served.runs(dep["id"], created_by={"type_": ["AUTOMATION"]})


def _started(served) -> list[dict]:
    """scheduled-retrain runs that left the Scheduled state (whoever created them)."""
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    return [r for r in served.runs(dep["id"]) if r["state"]["type"] != "SCHEDULED"]


def test_ui_style_run_completes_and_lands_in_mlflow(served):
    from mlflow import MlflowClient

    status = labse(served.env, "server", "status", timeout=60)
    assert status.returncode == 0 and status.stdout.count(" up ") == 2, status.stdout
    assert "scheduler ok" in status.stdout or "scheduler no scheduled run yet" in status.stdout, status.stdout
    dep = served.deployment("labse-ingest/labse-ingest")
    params = {"config": {"locale_roots": [], "paths": [str(CATALOG)], "languages": ["de"],
                         "beam": {"num_workers": 1, "running_mode": "in_memory"}}}
    run = api(served.prefect, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})

    def finished():
        state = served.run(run["id"])["state"]["type"]
        assert state not in ("FAILED", "CRASHED", "CANCELLED"), served.log.read_text()[-4000:]
        return state == "COMPLETED"
    wait_for("the ingest flow run", finished, 180, served.log)

    client = MlflowClient(tracking_uri=served.mlflow)
    exp = client.get_experiment_by_name("labse")
    runs = client.search_runs([exp.experiment_id], f"tags.prefect_flow_run_id = '{run['id']}'")
    assert [r.info.run_name for r in runs] == ["labse-ingest"] and runs[0].info.status == "FINISHED"
    child = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'")
    assert [c.info.run_name for c in child] == ["ingest"] and child[0].data.metrics["rows"] > 100
    artifacts = api(served.prefect, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    assert any("labse-ingest" in (a.get("description") or "") + (a.get("key") or "") + str(a.get("data"))
               for a in artifacts)


def test_a_file_in_the_inbox_starts_exactly_one_run_created_by_the_automation(served):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    assert [s["schedule"].get("cron") for s in dep["schedules"]] == [served.cron]
    assert _by_automation(served) == [] and _started(served) == []
    (served.home / "inbox" / "new.en-de.tsv").write_text("Open file\tDatei öffnen\n", encoding="utf-8")

    runs = wait_for("a scheduled-retrain run from the event", lambda: _by_automation(served), 90, served.log)
    wait_for("labse serve's line", lambda: "taken by the Prefect server" in served.log.read_text(), 30, served.log)
    assert "new data landed in" in served.log.read_text() and "emit failed" not in served.log.read_text()
    wait_for("the run to finish", lambda: served.run(runs[0]["id"])["state"]["type"] in ("COMPLETED", "FAILED"), 120,
             served.log)
    # Exactly one: the automation created it (not the schedule, which cannot fire now) and nothing else ran.
    assert len(_by_automation(served)) == 1 and [r["id"] for r in _started(served)] == [runs[0]["id"]]
    automation = api(served.prefect, "GET", f"/automations/{runs[0]['created_by']['id']}")
    assert automation["name"] == "new data landed"


def test_an_emit_the_server_does_not_take_is_said_and_retried_until_taken(served):
    """The Prefect server frozen (SIGSTOP: it neither answers nor refuses) when a file lands: `labse serve`
    says the emit failed, retries with the same event, and once the server answers exactly one run starts."""
    before = {r["id"] for r in _by_automation(served)}
    pid = int((served.home / "run" / "prefect.pid").read_text())
    os.killpg(pid, signal.SIGSTOP)
    try:
        (served.home / "inbox" / "later.en-de.tsv").write_text("Close file\tDatei schließen\n", encoding="utf-8")
        wait_for("labse serve to say the emit failed", lambda: "emit failed" in served.log.read_text(), 60, served.log)
    finally:
        os.killpg(pid, signal.SIGCONT)
    line = next(ln for ln in served.log.read_text().splitlines() if "emit failed" in ln)
    assert "later.en-de.tsv" in line and "retrying" in line
    wait_for("the retried emit to be taken", lambda: "later.en-de.tsv: event" in served.log.read_text(), 90, served.log)
    assert "failed attempt" in next(ln for ln in served.log.read_text().splitlines() if "later.en-de.tsv: event" in ln)
    new = wait_for("the run from the retried event",
                   lambda: [r for r in _by_automation(served) if r["id"] not in before], 90, served.log)
    wait_for("the run to finish", lambda: served.run(new[0]["id"])["state"]["type"] in ("COMPLETED", "FAILED"), 120,
             served.log)
    assert len(_by_automation(served)) == len(before) + 1


def test_prepare_append_emits_new_data_landed(served, tmp_path):
    """`labse prepare --append` with new clean pairs tells the server, which starts a scheduled-retrain run."""
    before = len(_by_automation(served))
    tsv = tmp_path / "more.tsv"
    tsv.write_text("Save the document\tDas Dokument speichern\nClose the window\tDas Fenster schließen\n"
                   "Print the page\tDie Seite drucken\n", encoding="utf-8")
    res = labse(served.env, "prepare", "--append", "--no-raw", "-i", str(tsv), "--langs", "en,de")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "emitted: new data landed, taken by the Prefect server" in res.stdout, res.stdout
    wait_for("a scheduled-retrain run from the event", lambda: len(_by_automation(served)) == before + 1, 60, served.log)


@pytest.mark.parametrize("args, says", [
    (["--cron", "61 * * *"], "--cron '61 * * *': Invalid cron string"),
    (["--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus': not a known time zone"),
    (["--inbox", "FILE"], "is a file, not a folder"),
    (["--retrain-config", "BADJSON"], "--retrain-config"),
    (["--retrain-config", "UNKNOWN"], "finetune.max_stepz: Extra inputs are not permitted"),
])
def test_bad_serve_settings_are_one_line_and_register_nothing(served, tmp_path, args, says):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    files = {"FILE": tmp_path / "inbox.txt", "BADJSON": tmp_path / "bad.json", "UNKNOWN": tmp_path / "unknown.json"}
    files["FILE"].write_text("not a folder")
    files["BADJSON"].write_text('{"finetune": ')
    files["UNKNOWN"].write_text('{"finetune": {"max_stepz": 3}}')
    res = labse(served.env, "serve", *[str(files.get(a, a)) for a in args], timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    after = served.deployment("scheduled-retrain/scheduled-retrain")
    assert after["updated"] == dep["updated"] and after["schedules"] == dep["schedules"]  # nothing registered


def test_a_port_in_use_is_one_line(served, tmp_path):
    env = served.env | {"LABSE_HOME": str(tmp_path / "other"), "PREFECT_HOME": str(tmp_path / "other" / "prefect")}
    port = served.prefect.split(":")[2].split("/")[0]
    res = labse(env, "server", "up", "--prefect-port", port, "--mlflow-port", "1", timeout=60)
    assert res.returncode == 2 and res.stderr == f"error: prefect: port {port} on 127.0.0.1 is in use; pick another with --prefect-port\n", res.stderr


def test_the_schedule_outlives_labse_serve(served):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    served.stop_serving()
    after = api(served.prefect, "GET", f"/deployments/{dep['id']}")
    assert after["paused"] is False  # pause_on_shutdown=False: the schedule outlives labse serve
    assert [s["schedule"]["cron"] for s in after["schedules"] if s["active"]] == [served.cron]
