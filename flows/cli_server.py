"""`labse server up|down|status`, `labse serve` and `labse pull`: the platform as a service.

    labse server up [--host H] [--prefect-port P] [--mlflow-port M]   local Prefect + MLflow servers
    labse server status                                               their URLs, alive or not, scheduler health
    labse server down                                                 stop them
    labse serve [--cron "0 3 * * *"] [--inbox DIR]                    register + serve the deployments
    labse pull models:/labse@champion --out DIR                       a registered model -> a folder

Registered in ``flows/cli.py`` by ``cli_server.register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_console import console
from flows.cli_errors import fail as _fail

server_app = typer.Typer(no_args_is_help=True, help="Local Prefect and MLflow servers for this home.")


def register(app: typer.Typer) -> None:
    """Add `server`, `serve` and `pull` to the `labse` app."""
    app.add_typer(server_app, name="server")
    app.command("pull")(pull)
    app.command("serve")(serve)


def _print_servers(servers) -> None:
    for name, info in servers.items():
        console.print(f"{name:<8} {info.url}  (pid {info.pid}, log {info.log})")
    if "prefect" in servers:
        console.print(f"clients: PREFECT_API_URL={servers['prefect'].api_url}")
    if "mlflow" in servers:
        console.print(f"         MLFLOW_TRACKING_URI={servers['mlflow'].api_url}")


@server_app.command("up")
def server_up(
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow server port.")] = 5000,
) -> None:
    """Start a local Prefect server and MLflow server on this home (SQLite under LABSE_HOME); later labse
    commands use them (LABSE_HOME/servers.json; PREFECT_API_URL / MLFLOW_TRACKING_URI override)."""
    from flows import server
    from storage.layout import Layout

    layout = Layout.from_env()
    try:
        servers = server.up(layout, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port)
    except server.ServerError as e:
        _fail(e)
    _print_servers(servers)
    console.print(f"settings: {server.settings_path(layout)}; stop with `labse server down`")


@server_app.command("down")
def server_down() -> None:
    """Stop the servers `labse server up` started for this home."""
    from flows import server
    from storage.layout import Layout

    stopped = server.down(Layout.from_env())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no server was running for this home")


@server_app.command("status")
def server_status() -> None:
    """Show this home's servers: URL, pid, whether they answer, and whether Prefect's scheduler creates runs
    (the last scheduled run, or its last error in the server log); exit 1 when anything is down or failing."""
    from flows import server
    from storage.layout import Layout

    states = server.status(Layout.from_env())
    if not states:
        console.print("no server recorded for this home (labse server up)")
        raise typer.Exit(1)
    ok = True
    for name, (info, alive, healthy) in states.items():
        state = "up" if healthy else "starting" if alive else "down"
        ok &= healthy
        console.print(f"{name:<8} {state:<9} {info.url}  (pid {info.pid}, log {info.log})")
        if name == "prefect" and healthy:
            try:
                sched = server.scheduler_health(info)
            except OSError as e:
                sched = server.SchedulerHealth(False, f"unknown: the API did not answer ({e})")
            ok &= sched.healthy
            console.print(f"{'':<8} scheduler {sched.line}")
    if not ok:
        raise typer.Exit(1)


def pull(
    uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or runs:/ID/PATH.")],
    out: Annotated[Path, typer.Option(help="Folder to write the MLflow model into (must not exist, or be empty).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Download a registered model as an MLflow model folder (MLmodel, model code, labse_core, the exported
    encoder folder); mlflow.pyfunc.load_model(DIR) or load_encoder(DIR/artifacts/model_dir) use it offline."""
    from flows.registry import PullError, pull_model
    from storage import tracking
    from storage.layout import Layout

    tracking.configure(Layout.from_env())
    try:
        pulled = pull_model(uri, out, overwrite=overwrite)
    except PullError as e:
        _fail(e)
    console.print(f"{uri} (version {pulled.version}) -> {pulled.folder}")
    console.print(f"  encoder folder: {pulled.model_dir}")
    console.print(f"  python -c \"import mlflow; print(mlflow.pyfunc.load_model('{pulled.folder}').predict(['Hello']).shape)\"")


def serve(
    cron: Annotated[str, typer.Option(help="Schedule of scheduled-retrain (five-field cron, in --timezone).")] = "0 3 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of --cron (IANA name).")] = "UTC",
    inbox: Annotated[Path | None, typer.Option(help="Folder watched for new corpus files (default LABSE_HOME/inbox).")] = None,
    poll_s: Annotated[float, typer.Option(min=0.5, help="How often the inbox is checked, seconds.")] = 10.0,
    retrain_config: Annotated[Path | None, typer.Option(
        help="JSON file of scheduled-retrain's settings (RetrainConfig: prepare, shard, finetune, evaluate, ...); "
             "default: its built-in ones.")] = None,
) -> None:
    """Register the deployments (labse-pipeline, one per stage, scheduled-retrain) with the Prefect server and
    run them here until Ctrl-C; a file dropped into the inbox emits "new data landed"."""
    import os

    from pydantic import ValidationError

    from flows import deployments
    from storage.layout import Layout

    if not os.environ.get("PREFECT_API_URL"):
        _fail("labse serve needs a Prefect server (schedules and triggers do not run in-process): "
              "run `labse server up` first, or set PREFECT_API_URL")
    retrain = None
    if retrain_config is not None:
        from flows.stage_flows import RetrainConfig

        try:
            retrain = RetrainConfig.model_validate_json(retrain_config.read_text(encoding="utf-8"))
        except OSError as e:
            _fail(f"--retrain-config {retrain_config}: {e.strerror or e}")
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            _fail(f"--retrain-config {retrain_config}: {where}: {err['msg']}")
    layout = Layout.from_env()
    try:
        deployments.check_schedule(cron, timezone)
        deployments.serve_all(layout, cron=cron, timezone=timezone, inbox=inbox, poll_s=poll_s, retrain=retrain,
                              announce=console.print)
    except (ValueError, OSError) as e:
        _fail(e)
