"""Local Prefect and MLflow servers for this platform home, and the settings that point the CLI at them.

``labse server up`` starts ``prefect server start`` (its SQLite database under ``LABSE_HOME/prefect``)
and ``mlflow server`` (the home's ``mlflow/mlflow.db`` and ``mlflow/artifacts``) as background
processes bound to 127.0.0.1 unless told otherwise; their pids and logs go to ``LABSE_HOME/run/``
and their URLs to ``LABSE_HOME/servers.json``. Every later ``labse`` command (``flows.env.bootstrap``)
reads that file and talks to those servers (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``), unless the
environment already names other ones, or the servers are gone (a stale file is ignored).

A real server is what schedules and event triggers need: without ``PREFECT_API_URL`` Prefect runs an
in-process server without the deployment scheduler, so cron schedules never fire.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.io import write_json_atomic
from storage.layout import Layout

SETTINGS_NAME = "servers.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
START_TIMEOUT_S = 120.0
"""How long a server may take to answer its health check (Prefect's first start migrates its database:
~15-30 s on 2 busy cores)."""


class ServerError(Exception):
    """A server cannot be started or reached; the message is meant for the user as is."""


@dataclass(frozen=True)
class ServerInfo:
    name: str
    """``prefect`` or ``mlflow``."""
    pid: int
    url: str
    """What a browser opens (the UI)."""
    api_url: str
    """What clients are given: ``PREFECT_API_URL`` / ``MLFLOW_TRACKING_URI``."""
    log: str
    log_offset: int = 0
    """Where this server's part of its log begins (the log is appended to across restarts)."""

    def alive(self) -> bool:
        return pid_alive(self.pid)


def run_dir(layout: Layout) -> Path:
    """``LABSE_HOME/run``: the servers' pid files and logs."""
    return layout.home / "run"


def settings_path(layout: Layout) -> Path:
    return layout.home / SETTINGS_NAME


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, but not ours to manage
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all there is
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_settings(layout: Layout) -> dict[str, ServerInfo]:
    """The servers ``labse server up`` recorded for this home (an unreadable file counts as none)."""
    path = settings_path(layout)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: ServerInfo(**info) for name, info in data.get("servers", {}).items()}
    except (OSError, ValueError, TypeError):
        return {}


def client_env(layout: Layout) -> dict[str, str]:
    """Environment variables that point clients at this home's running servers ({} when none runs)."""
    servers = read_settings(layout)
    env = {}
    if (p := servers.get("prefect")) is not None and p.alive():
        env["PREFECT_API_URL"] = p.api_url
    if (m := servers.get("mlflow")) is not None and m.alive():
        env["MLFLOW_TRACKING_URI"] = m.api_url
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on now (tests; the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (our own localhost URL)
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _client_host(host: str) -> str:
    """The address clients on this machine use for a server bound to ``host``."""
    return DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host


def server_commands(layout: Layout, host: str, prefect_port: int, mlflow_port: int) -> dict[str, tuple[list[str], dict[str, str], str, str, str]]:
    """{name: (argv, extra env, UI URL, client URL, health URL)} for both servers."""
    bindir = Path(sys.executable).parent
    ch = _client_host(host)
    prefect_env = {"PREFECT_HOME": str(layout.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_UI_API_URL": f"http://{ch}:{prefect_port}/api"}
    mlflow_args = [str(bindir / "mlflow"), "server", "--host", host, "--port", str(mlflow_port),
                   "--backend-store-uri", layout.mlflow_tracking_uri,
                   "--artifacts-destination", layout.mlflow_artifacts.as_uri(), "--workers", "1"]
    return {
        "prefect": ([str(bindir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                    prefect_env, f"http://{ch}:{prefect_port}", f"http://{ch}:{prefect_port}/api",
                    f"http://{ch}:{prefect_port}/api/health"),
        "mlflow": (mlflow_args, {"MLFLOW_DISABLE_TELEMETRY": "true"}, f"http://{ch}:{mlflow_port}",
                   f"http://{ch}:{mlflow_port}", f"http://{ch}:{mlflow_port}/health"),
    }


def up(layout: Layout, *, host: str = DEFAULT_HOST, prefect_port: int = DEFAULT_PREFECT_PORT,
       mlflow_port: int = DEFAULT_MLFLOW_PORT, timeout_s: float = START_TIMEOUT_S) -> dict[str, ServerInfo]:
    """Start whichever of the two servers is not running for this home; wait until both answer."""
    layout.ensure()
    rd = run_dir(layout)
    rd.mkdir(parents=True, exist_ok=True)
    servers = {k: v for k, v in read_settings(layout).items() if v.alive()}
    ports = {"prefect": prefect_port, "mlflow": mlflow_port}
    commands = server_commands(layout, host, prefect_port, mlflow_port)
    started = []
    for name, (argv, extra, url, api_url, _) in commands.items():
        if name in servers:
            continue
        if not port_free(host, ports[name]):
            raise ServerError(f"{name}: port {ports[name]} on {host} is in use; pick another with --{name}-port")
        log = rd / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        env = os.environ.copy() | extra
        env.pop("PREFECT_API_URL", None)  # the server is the API; a client setting must not leak in
        with log.open("ab") as out:
            # A new session: the server outlives this command and Ctrl-C in this terminal.
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=layout.home, start_new_session=True)
        (rd / f"{name}.pid").write_text(f"{proc.pid}\n")
        servers[name] = ServerInfo(name, proc.pid, url, api_url, str(log), offset)
        started.append(name)
    _write(layout, servers)
    deadline = time.monotonic() + timeout_s
    for name in started:
        health = commands[name][4]
        while not _healthy(health):
            if not servers[name].alive():
                raise ServerError(f"{name} server exited while starting; see {servers[name].log}")
            if time.monotonic() > deadline:
                raise ServerError(f"{name} server did not answer {health} within {timeout_s:.0f}s; see {servers[name].log}")
            time.sleep(0.5)
    return servers


def _write(layout: Layout, servers: dict[str, ServerInfo]) -> None:
    if servers:
        write_json_atomic(settings_path(layout), {"servers": {k: asdict(v) for k, v in servers.items()}})
    else:
        settings_path(layout).unlink(missing_ok=True)


def down(layout: Layout, timeout_s: float = 10.0) -> list[str]:
    """Stop the servers this home started (SIGTERM to their process group, SIGKILL after ``timeout_s``);
    returns the names of those that were running."""
    stopped = []
    servers = read_settings(layout)
    for name, info in servers.items():
        if info.alive():
            try:
                os.killpg(info.pid, signal.SIGTERM)  # the server and the workers it forked
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout_s
            while info.alive() and time.monotonic() < deadline:
                _reap(info.pid)
                time.sleep(0.2)
            if info.alive():
                try:
                    os.killpg(info.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap(info.pid)
            stopped.append(name)
        (run_dir(layout) / f"{name}.pid").unlink(missing_ok=True)
    _write(layout, {})
    return stopped


def _reap(pid: int) -> None:
    """Collect a server this process started (else it stays a zombie that still 'exists')."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(layout: Layout) -> dict[str, tuple[ServerInfo, bool, bool]]:
    """{name: (info, process alive, health check answered)}."""
    out = {}
    for name, info in read_settings(layout).items():
        health = info.api_url.rstrip("/") + "/health"
        out[name] = (info, info.alive(), _healthy(health))
    return out


# ---------------------------------------------------------------------------------------------------
# Is the Prefect server's scheduler working? (A server whose scheduler fails on every cycle still answers
# its health check; its only traces are the runs it does not create and the errors in its log.)

SCHEDULER_SERVICES = ("schedule_recent_deployments", "schedule_deployments", "scheduler")


@dataclass(frozen=True)
class SchedulerHealth:
    healthy: bool
    line: str
    """One line for the user: the last scheduled run the server created, or why the scheduler is failing."""


def _api(api_url: str, path: str, body: object) -> object:
    req = urllib.request.Request(api_url.rstrip("/") + path, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (the home's own server)
        return json.loads(r.read() or b"null")


def last_scheduler_error(log: Path, since: int = 0) -> tuple[str, str, int] | None:
    """(time of day, exception line, failed cycles) of the scheduler's newest error in the server log after
    byte ``since``, or None. Prefect logs a failed scheduler cycle as an ERROR line naming the service,
    then the traceback, whose last line is the exception."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    last, count, reading = None, 0, False
    for line in lines:
        if "| ERROR" in line and any(s in line for s in SCHEDULER_SERVICES):
            count += 1
            last, reading = (line.split(" ", 1)[0], ""), True
        elif reading and line and not line[0].isspace() and not line.startswith("Traceback") and ":" in line:
            last, reading = (last[0], line.strip()), False
    return None if last is None else (last[0], last[1] or "see the server log", count)


def _local_time_of_day(iso: str) -> str:
    """An API timestamp as the server log writes times: local HH:MM:SS.mmm."""
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S.%f")[:12]


def scheduler_health(info: ServerInfo, since: int | None = None) -> SchedulerHealth:
    """The scheduler's state from the server itself: its active schedules, the newest run it created from a
    schedule, and its newest error in the log (``since``: where this server's part of the log begins)."""
    deployments = _api(info.api_url, "/deployments/filter", {"limit": 200}) or []
    runs = _api(info.api_url, "/flow_runs/filter",
                {"flow_runs": {"created_by": {"type_": ["SCHEDULE"]}}, "limit": 200}) or []
    error = last_scheduler_error(Path(info.log), info.log_offset if since is None else since)
    return judge_scheduler(deployments, runs, error, info.log)


def judge_scheduler(deployments: list[dict], runs: list[dict], error: tuple[str, str, int] | None,
                    log: str) -> SchedulerHealth:
    """Healthy unless the log's newest scheduler error is later than the newest run a schedule created."""
    newest = max(runs, key=lambda r: r["created"], default=None)
    if error is not None:
        when, what, count = error
        # A run created after the error (log times are local): the scheduler recovered since.
        created = _local_time_of_day(newest["created"]) if newest else ""
        if not created or created < when:
            return SchedulerHealth(False, f"failing: {count} failed cycle{'s' * (count > 1)} in {log}, the last at "
                                          f"{when}: {what}")
    if newest is not None:
        names = {d["id"]: d["name"] for d in deployments}
        return SchedulerHealth(True, f"ok: last scheduled run {newest['name']} ({names.get(newest['deployment_id'], '?')}) "
                                     f"created {newest['created'][:19]} for {newest['expected_start_time'][:19]} UTC")
    scheduled = [d["name"] for d in deployments if any(s.get("active") for s in d.get("schedules") or [])]
    if scheduled:
        return SchedulerHealth(True, f"no scheduled run yet ({len(scheduled)} active schedule(s): {', '.join(scheduled)}); "
                                     "no scheduler error in the log")
    return SchedulerHealth(True, "no active schedule (labse serve registers scheduled-retrain)")
