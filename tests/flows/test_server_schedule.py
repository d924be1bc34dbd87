"""The schedule itself, on a real Prefect server: `labse serve --cron "* * * * *"` on a fresh home (no corpus,
no champion) and nothing else (no inbox file, no event). The server's scheduler must create the runs, the
runner must run them, and each must end with one clear reason; with nobody serving, the server marks a
missed run Late; two runs of scheduled-retrain never run at once (its concurrency limit of 1)."""

from __future__ import annotations

import time

import pytest

from tests.flows.served import TERMINAL, api, labse, on_cron_grid, platform, wait_for

REASON = "scheduled-retrain: nothing to warm-start from: model models:/labse@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with platform(tmp_path_factory.mktemp("no-champion")) as p:
        p.start_serving("--cron", "* * * * *")
        yield p


@pytest.fixture(autouse=True)
def clean_server_logs(served):
    yield
    served.assert_server_logs_clean()


def _scheduled(served, dep_id: str) -> list[dict]:
    return served.runs(dep_id, created_by={"type_": ["SCHEDULE"]})


def test_the_cron_schedule_creates_a_run_that_fails_once_with_one_clear_reason(served):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["* * * * *"]

    def first_finished():
        done = [r for r in _scheduled(served, dep["id"]) if r["state"]["type"] in TERMINAL]
        return done[0] if done else None
    # The scheduler creates runs ahead; the runner starts the first at its minute (<= 60 s away).
    run = wait_for("a scheduled-retrain run created by the schedule to finish", first_finished, 200, served.log)
    assert run["auto_scheduled"] is True and run["created_by"]["type"] == "SCHEDULE"
    assert on_cron_grid(run["expected_start_time"]), run["expected_start_time"]
    assert run["state"]["type"] == "FAILED" and run["state"]["message"].startswith(REASON), run["state"]
    assert run["run_count"] == 1  # no retry
    assert "labse demo" in run["state"]["message"]  # and what to do about it
    # Once per scheduled point, not in a loop: every failed run is a distinct minute of the grid.
    failed = [r for r in _scheduled(served, dep["id"]) if r["state"]["type"] == "FAILED"]
    starts = [r["expected_start_time"] for r in failed]
    assert len(starts) == len(set(starts)) and all(on_cron_grid(s) for s in starts)
    # Its log: one error line with the reason, then Prefect's final state line; no traceback.
    wait_for("the run's last log line", lambda: f"Flow run '{run['name']}' - Finished in state Failed" in served.log.read_text(),
             30, served.log)
    time.sleep(3)  # what the run's process writes after its final state (an engine traceback would come here)
    lines = [ln for ln in served.log.read_text().splitlines() if f"Flow run '{run['name']}'" in ln]
    errors = [ln for ln in lines if "| ERROR" in ln]
    assert len(errors) == 1 and "nothing to warm-start from" in errors[0], lines
    assert "Traceback" not in served.log.read_text()


def test_server_status_reports_the_last_scheduled_run(served):
    res = labse(served.env, "server", "status", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "scheduler" in ln)
    assert "scheduler ok: last scheduled run" in line and "(scheduled-retrain)" in line, res.stdout


def test_two_runs_never_overlap_the_second_waits_for_the_concurrency_slot(served):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    ids = [api(served.prefect, "POST", f"/deployments/{dep['id']}/create_flow_run", {})["id"] for _ in range(2)]

    def both_done():
        runs = [served.run(i) for i in ids]
        return runs if all(r["state"]["type"] in TERMINAL for r in runs) else None
    runs = wait_for("both runs to finish", both_done, 150, served.log)
    assert all(r["state"]["message"].startswith(REASON) for r in runs)
    a, b = sorted(runs, key=lambda r: r["start_time"])
    assert a["end_time"] <= b["start_time"], (a, b)  # one at a time
    # The deployment's limit held one back (the server's concurrency slots), not chance timing.
    assert any("AwaitingConcurrencySlot" in served.states(r["id"]) for r in runs), [served.states(i) for i in ids]


def test_with_nobody_serving_the_server_marks_the_missed_run_late(served):
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    served.stop_serving()
    now = time.time()

    def late():
        from datetime import datetime

        missed = [r for r in _scheduled(served, dep["id"])
                  if datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")).timestamp() > now - 1]
        return [r for r in missed if r["state"]["name"] == "Late"]
    # The next minute's run has no runner: the server's late-runs service marks it (15 s after its start).
    runs = wait_for("the next scheduled run to be marked Late", late, 120, served.log)
    assert runs[0]["state"]["type"] == "SCHEDULED" and on_cron_grid(runs[0]["expected_start_time"])
