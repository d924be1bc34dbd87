"""MLflow for a training run: rank 0 only, one run per training run (reopened when it resumes, from
its checkpoint's record of the run or, killed before its first checkpoint, from RUN_RECORD)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labse_core.training.config import RunConfig
from labse_core.training.distributed import DistEnv
from storage.io import write_json_atomic
from storage.layout import Layout

RUN_RECORD = "mlflow_run.json"
"""In the run's checkpoint folder from its start to its end: the MLflow run id, so that an invocation
killed before its first checkpoint is continued in the same MLflow run, not left RUNNING beside a new one."""
_RECORD: list[Path] = []


def start_mlflow(
    cfg: RunConfig,
    layout: Layout,
    run_id: str | None,
    env: DistEnv,
    stage: str,
    extra_params: dict[str, Any] | None = None,
) -> str:
    """Rank 0: open (or, resuming, reopen) the run's MLflow run, a child of mlflow_parent_run_id if
    set; a new run gets every config field as a parameter (nested ones dotted), the stage and
    `extra_params`."""
    import mlflow

    from storage import tracking

    tracking.configure(layout)
    record = layout.checkpoints(stage, cfg.run_name) / RUN_RECORD
    if run_id is None and cfg.resume:
        run_id = _recorded_run(record)
    parent = {"parent_run_id": cfg.mlflow_parent_run_id, "nested": True} if cfg.mlflow_parent_run_id else {}
    run = mlflow.start_run(run_id=run_id, **parent) if run_id else mlflow.start_run(run_name=cfg.run_name, **parent)
    if run_id is not None:
        _LOGGED[run_id] = _logged_steps(run_id)
        if cfg.mlflow_parent_run_id:  # resumed by another flow run (a killed pipeline run again): move under it
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            mlflow.set_tag(MLFLOW_PARENT_RUN_ID, cfg.mlflow_parent_run_id)
    else:
        params = tracking.flat_params(cfg.model_dump(mode="json")) | {"world_size": env.world_size, "stage": stage}
        mlflow.log_params(params | (extra_params or {}))
    write_json_atomic(record, {"mlflow_run_id": run.info.run_id})
    _RECORD[:] = [record]
    return run.info.run_id


def _recorded_run(record: Path) -> str | None:
    """The run RUN_RECORD names, if it is still in the tracking store (and not deleted)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run_id = json.loads(record.read_text())["mlflow_run_id"]
        return run_id if MlflowClient().get_run(run_id).info.lifecycle_stage == "active" else None
    except (OSError, ValueError, KeyError, TypeError, MlflowException):
        return None


def progress_bar(cfg: RunConfig, env: DistEnv, step: int, max_steps: int, desc: str):
    """tqdm over the run's steps, on rank 0 when cfg.progress and stderr is a terminal (disable=None is
    tqdm's "off when not a tty"): a log file or a Prefect worker's output gets no bar updates."""
    from tqdm.auto import tqdm

    return tqdm(total=max_steps, initial=step, disable=None if (env.is_main and cfg.progress) else True, desc=desc)


_LOGGED: dict[str, dict[str, int]] = {}
"""Per reopened MLflow run: each metric's last step logged before it was reopened."""


def _logged_steps(run_id: str) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
            for key in client.get_run(run_id).data.metrics}


def log_metrics(cfg: RunConfig, env: DistEnv, metrics: dict[str, float], step: int) -> None:
    """Log to the active MLflow run (rank 0, when MLflow is on). A resumed run replays the steps
    after its checkpoint that the interrupted invocation had already logged, with the same values
    (the resume is exact): those are not logged twice, so every metric keeps one value per step."""
    if env.is_main and cfg.mlflow:
        import mlflow

        logged = _LOGGED.get(mlflow.active_run().info.run_id, {})
        metrics = {k: v for k, v in metrics.items() if step > logged.get(k, -1)}
        if metrics:
            mlflow.log_metrics(metrics, step=step)


def abandon_mlflow(run_id: str | None) -> None:
    """Rank 0 when a run raises: close its MLflow run as FAILED so that the process can start others (a
    notebook, a flow run again in-process); its record stays, so a resume reopens the same run."""
    if run_id is not None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status="FAILED")


def end_mlflow(cfg: RunConfig, tags: dict[str, Any]) -> None:
    """Rank 0 at the end of a run: tag it with its outputs and close it."""
    if cfg.mlflow:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})
        mlflow.end_run()
        for record in _RECORD:  # finished: a later run of this name is a new one (or resumes a checkpoint)
            record.unlink(missing_ok=True)
        _RECORD.clear()
