"""MLflow for a training run: rank 0 only, one run per training run (reopened when it resumes)."""

from __future__ import annotations

import json
from typing import Any

from labse_core.training.config import RunConfig
from labse_core.training.distributed import DistEnv
from storage.layout import Layout


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
    parent = {"parent_run_id": cfg.mlflow_parent_run_id, "nested": True} if cfg.mlflow_parent_run_id else {}
    run = mlflow.start_run(run_id=run_id, **parent) if run_id else mlflow.start_run(run_name=cfg.run_name, **parent)
    if run_id is None:
        params = flat_params(cfg.model_dump(mode="json")) | {"world_size": env.world_size, "stage": stage}
        mlflow.log_params(params | (extra_params or {}))
    return run.info.run_id


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (`loss.margin`: comparable across runs in the MLflow UI);
    lists as JSON."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out |= flat_params(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list | tuple) else v
    return out


def progress_bar(cfg: RunConfig, env: DistEnv, step: int, max_steps: int, desc: str):
    """tqdm over the run's steps, on rank 0 when cfg.progress and stderr is a terminal (disable=None is
    tqdm's "off when not a tty"): a log file or a Prefect worker's output gets no bar updates."""
    from tqdm.auto import tqdm

    return tqdm(total=max_steps, initial=step, disable=None if (env.is_main and cfg.progress) else True, desc=desc)


def log_metrics(cfg: RunConfig, env: DistEnv, metrics: dict[str, float], step: int) -> None:
    """Log to the active MLflow run (rank 0, when MLflow is on)."""
    if env.is_main and cfg.mlflow:
        import mlflow

        mlflow.log_metrics(metrics, step=step)


def end_mlflow(cfg: RunConfig, tags: dict[str, Any]) -> None:
    """Rank 0 at the end of a run: tag it with its outputs and close it."""
    if cfg.mlflow:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})
        mlflow.end_run()
