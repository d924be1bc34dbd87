"""MLflow set-up: tracking URI and artifact store under ``LABSE_HOME`` unless the user points elsewhere.

Default: ``sqlite:///LABSE_HOME/mlflow/mlflow.db`` (runs, metrics and the model registry) and
``LABSE_HOME/mlflow/artifacts`` for artifacts. Set ``MLFLOW_TRACKING_URI`` to use an MLflow server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from storage.layout import Layout

EXPERIMENT = "labse"

# What the user set before this process started. mlflow.set_tracking_uri() exports the variable
# too (for subprocesses), so reading it later would return our own earlier choice instead.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def offline_env() -> None:
    """Environment for running with no network: no hub downloads, no telemetry."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }.items():
        os.environ.setdefault(key, value)


PARAM_CHARS = 500
"""Longest parameter value logged; longer ones (a list of every input file) are cut."""


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: dotted keys (`loss.margin`, `prepare.filters.min_chars`:
    comparable across runs in the MLflow UI), lists as JSON, each value at most PARAM_CHARS long."""
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out |= flat_params(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = (json.dumps(v) if isinstance(v, list | tuple) else str(v))[:PARAM_CHARS]
    return out


def tracking_uri(layout: Layout) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it (an MLflow server), else this home's sqlite store."""
    return _USER_TRACKING_URI or layout.mlflow_tracking_uri


def configure(layout: Layout, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at this home and make sure the experiment exists; returns its id."""
    import mlflow

    offline_env()
    layout.ensure()
    mlflow.set_tracking_uri(tracking_uri(layout))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        # A tracking server (http://, the compose stack in infra/) stores artifacts where it was told
        # (--artifacts-destination s3://...); a database URI in this process means local artifacts.
        server = tracking_uri(layout).startswith(("http://", "https://"))
        exp_id = mlflow.create_experiment(experiment, artifact_location=None if server else layout.mlflow_artifacts.as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
