"""A real platform service for the server tests: `labse server up` (Prefect + MLflow servers, SQLite under a
temporary LABSE_HOME) and `labse serve` (the deployments), both as the user starts them, and the checks the
tests share: REST calls, waiting for a flow run, and server logs that must hold no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flows.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Path("/usr/share/locale/de/LC_MESSAGES/coreutils.mo")
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


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


@dataclass
class Platform:
    home: Path
    env: dict[str, str]
    prefect: str
    mlflow: str
    log: Path
    """`labse serve`'s output."""
    serve: subprocess.Popen | None = None
    cron: str | None = None
    checked_to: dict[str, int] = field(default_factory=dict)

    def start_serving(self, *args: str) -> None:
        with self.log.open("a") as out:
            self.serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--poll-s", "1", *args],
                                          env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        wait_for("labse serve to register its deployments",
                 lambda: "serving" in self.log.read_text(errors="replace") or self.serve.poll() is not None, 120, self.log)
        assert self.serve.poll() is None, self.log.read_text()[-4000:]
        self.deployment("scheduled-retrain/scheduled-retrain")  # the last one it registers

    def stop_serving(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            os.killpg(self.serve.pid, signal.SIGTERM)
            self.serve.wait(60)
        self.serve = None

    def deployment(self, name: str) -> dict:
        def get():
            try:
                return api(self.prefect, "GET", f"/deployments/name/{name}")
            except OSError:
                return None
        return wait_for(f"deployment {name}", get, 120, self.log)

    def runs(self, deployment_id: str, **flow_run_filter) -> list[dict]:
        return api(self.prefect, "POST", "/flow_runs/filter",
                   {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, **flow_run_filter}, "limit": 200})

    def run(self, run_id: str) -> dict:
        return api(self.prefect, "GET", f"/flow_runs/{run_id}")

    def states(self, run_id: str) -> list[str]:
        """Every state the run went through, oldest first (state names: Scheduled, AwaitingConcurrencySlot...)."""
        states = api(self.prefect, "GET", f"/flow_run_states/?flow_run_id={run_id}")
        return [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]

    def server_logs(self) -> dict[str, str]:
        """What each server wrote to its log since the last check."""
        out = {}
        for name in ("prefect", "mlflow"):
            path = self.home / "run" / f"{name}.log"
            text = path.read_bytes().decode("utf-8", "replace") if path.exists() else ""
            out[name] = text[self.checked_to.get(name, 0):]
            self.checked_to[name] = len(text)
        return out

    def assert_server_logs_clean(self) -> None:
        """A server that logged a traceback (a failing service: scheduler, triggers, event persister...) fails
        the test, whatever the test itself checked."""
        for name, text in self.server_logs().items():
            if "Traceback" in text:
                at = text.index("Traceback")
                pytest.fail(f"the {name} server logged a traceback:\n{text[max(0, at - 300):at + 3000]}")


@contextmanager
def platform(home: Path):
    """Both servers up on free ports for ``home`` (nothing served yet: ``Platform.start_serving``); stopped and
    their logs checked for tracebacks at the end."""
    if not CATALOG.is_file():
        pytest.skip(f"{CATALOG} is missing")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env |= {"LABSE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "OMP_NUM_THREADS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1"}
    pport, mport = free_port(), free_port()
    up = labse(env, "server", "up", "--prefect-port", str(pport), "--mlflow-port", str(mport))
    p = Platform(home, env, f"http://127.0.0.1:{pport}/api", f"http://127.0.0.1:{mport}", home / "serve.log")
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert f"http://127.0.0.1:{pport}" in up.stdout and f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mport}" in up.stdout
        yield p
        p.stop_serving()
    finally:
        p.stop_serving()
        down = labse(env, "server", "down", timeout=60)
        assert down.returncode == 0, down.stderr


def on_cron_grid(iso: str, every_minutes: int = 1) -> bool:
    """Whether a run's expected start is a point of a `*/N * * * *` schedule: a whole minute."""
    from datetime import datetime

    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return t.second == 0 and t.microsecond == 0 and t.minute % every_minutes == 0
