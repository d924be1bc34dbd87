"""`labse server status`'s scheduler line, from the server's own traces: the runs its schedules created and the
errors in its log. The failing log is a real excerpt: Prefect 3.8's server with SQLAlchemy 2.1, whose scheduler
raised on every cycle while the server still answered its health check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.server import judge_scheduler, last_scheduler_error

FAILING = Path(__file__).resolve().parents[1] / "assets" / "logs" / "prefect-scheduler-failing.log"
DEPLOYMENTS = [{"id": "d1", "name": "scheduled-retrain", "schedules": [{"active": True}]},
               {"id": "d2", "name": "labse-pipeline", "schedules": []}]


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """The server log writes local times; the excerpt was written on a UTC machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _run(created: str) -> dict:
    return {"name": "happy-boar", "deployment_id": "d1", "created": created, "expected_start_time": "2026-12-06T02:20:00Z"}


def test_the_last_scheduler_error_is_read_from_the_log(tmp_path):
    when, what, count = last_scheduler_error(FAILING)
    assert (when, count) == ("01:57:45.920", 1)
    assert what == "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please supply a bulk_dml decorated function"
    twice = tmp_path / "prefect.log"
    twice.write_text("startup banner\n" + FAILING.read_text() + FAILING.read_text().replace("01:57:45.920", "01:58:30.672"))
    assert last_scheduler_error(twice)[::2] == ("01:58:30.672", 2)
    # Only this server's part of the log: what an earlier server wrote before the offset does not count.
    assert last_scheduler_error(twice, since=len(twice.read_bytes())) is None
    other = tmp_path / "other.log"
    other.write_text("01:57:45.920 | ERROR   | prefect.server.events - websocket closed\nValueError: x\n")
    assert last_scheduler_error(other) is None  # an error of another service is not the scheduler's


def test_a_scheduler_that_fails_and_never_created_a_run_is_failing():
    health = judge_scheduler(DEPLOYMENTS, [], last_scheduler_error(FAILING), str(FAILING))
    assert not health.healthy
    assert health.line.startswith("failing: 1 failed cycle in ") and "Can't evaluate bulk DML statement" in health.line


def test_a_run_created_after_the_last_error_means_it_recovered():
    error = last_scheduler_error(FAILING)
    before, after = _run("2026-12-06T01:57:00.000000Z"), _run("2026-12-06T01:58:10.000000Z")
    assert not judge_scheduler(DEPLOYMENTS, [before], error, "log").healthy
    health = judge_scheduler(DEPLOYMENTS, [before, after], error, "log")
    assert health.healthy and health.line == ("ok: last scheduled run happy-boar (scheduled-retrain) created "
                                              "2026-12-06T01:58:10 for 2026-12-06T02:20:00 UTC")


def test_no_run_yet_and_no_schedule_are_said_as_such():
    assert judge_scheduler(DEPLOYMENTS, [], None, "log").line.startswith("no scheduled run yet (1 active schedule(s): "
                                                                         "scheduled-retrain)")
    assert judge_scheduler(DEPLOYMENTS[1:], [], None, "log").line.startswith("no active schedule")
