"""``labse pull``: a registered model version as an MLflow model folder on disk.

The folder is what MLflow logged: ``MLmodel``, the model code (``mlflow_model_code.py``), ``code/labse_core``
and ``artifacts/model_dir`` (the exported encoder folder). ``mlflow.pyfunc.load_model(folder)`` loads it
offline; ``labse_core.export.load_encoder(folder/artifacts/model_dir)`` gives the same encoder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labse_core.mlflow_model import _model_folder_in


class PullError(Exception):
    """The model cannot be pulled; the message is meant for the user as is."""


@dataclass(frozen=True)
class Pulled:
    folder: Path
    """The MLflow model folder (``--out``)."""
    model_dir: Path
    """The exported encoder folder inside it."""
    version: str | None


def pull_model(uri: str, out: str | os.PathLike[str], *, overwrite: bool = False) -> Pulled:
    """Download ``uri``'s model version into ``out`` (written beside it and renamed into place, so ``out``
    is never half written). Uses the current MLflow tracking URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PullError(f"--out {out}: exists and is not an empty folder; pass --overwrite to replace it")
    version = None
    artifact_uri = uri
    if uri.startswith("models:/"):
        try:
            # Resolves the alias to a version once: what is written is that version, named in the output.
            version = _resolve_version(uri)
        except ValueError as e:
            raise PullError(str(e)) from None
        name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
        artifact_uri = f"models:/{name}/{version}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp))
        if not (tmp / "MLmodel").is_file():
            raise PullError(f"{uri}: not an MLflow model (no MLmodel file)")
        model_dir = _model_folder_in(tmp)
        if model_dir is None:
            raise PullError(f"{uri}: holds no exported model folder (labse_export.json)")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except MlflowException as e:
        raise PullError(f"{uri}: {str(e).splitlines()[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Pulled(out, out / model_dir.relative_to(tmp), version)


def _resolve_version(uri: str) -> str:
    """The version a ``models:/`` URI names now, without downloading it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from labse_core.mlflow_model import _MODELS_URI

    m = _MODELS_URI.match(uri)
    if m is None:
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest")
    client = MlflowClient()
    try:
        if m["alias"] is not None:
            return str(client.get_model_version_by_alias(m["name"], m["alias"]).version)
        if m["version"] == "latest":
            versions = client.search_model_versions(f"name = '{m['name']}'")
            if not versions:
                raise ValueError(f"{uri}: registered model {m['name']!r} has no versions")
            return str(max(int(v.version) for v in versions))
        return str(client.get_model_version(m["name"], m["version"]).version)
    except MlflowException as e:
        raise ValueError(f"{uri}: {str(e).splitlines()[0]}") from None
