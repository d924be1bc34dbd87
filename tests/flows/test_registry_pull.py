"""The encoder as an MLflow "models from code" pyfunc: registered with its lineage, pulled with `labse pull`
in another process, and loaded by `mlflow.pyfunc.load_model("models:/labse@champion")` in a fresh, offline
Python process, giving the same embeddings as `load_encoder` on the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.eval_helpers import make_tiny_model

SENTENCES = ["Hello world", "Hallo Welt", "Привет, мир!", "こんにちは世界", "File not found"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, real_catalogs):
    """A tiny random encoder registered as `labse` (champion) in a private sqlite store."""
    import mlflow

    from flows.lineage import lineage_tags
    from labse_core.mlflow_model import register_and_promote
    from storage.layout import Layout

    tmp = tmp_path_factory.mktemp("registry")
    model_dir = make_tiny_model(tmp / "m")
    uri = f"sqlite:///{tmp}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("pull-test", artifact_location=(tmp / "artifacts").as_uri())
    saved_path = list(sys.path)
    try:
        with mlflow.start_run(experiment_id=exp) as run:
            promo = register_and_promote(model_dir, [("Hello world", "Hallo Welt"), ("File", "Datei")], name="labse",
                                         tags=lineage_tags(Layout.from_env(), preset="tiny"))
    finally:
        mlflow.set_tracking_uri(previous)
        sys.path[:] = saved_path  # logging may add the model's code path
    return {"tmp": tmp, "uri": uri, "model_dir": model_dir, "promo": promo, "run_id": run.info.run_id}


def _env(registry) -> dict[str, str]:
    return os.environ | {"MLFLOW_TRACKING_URI": registry["uri"], "LABSE_HOME": str(registry["tmp"] / "home"),
                         "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                         "OMP_NUM_THREADS": "1"}


def test_version_is_a_model_from_code_tagged_with_its_lineage(registry):
    from mlflow import MlflowClient

    promo = registry["promo"]
    assert promo.promoted and promo.version == "1"
    client = MlflowClient(registry["uri"])
    version = client.get_model_version("labse", "1")
    tags = version.tags
    assert tags["source_run_id"] == registry["run_id"] == version.run_id
    assert tags["preset"] == "tiny" and len(tags["code_version"]) == 16
    assert tags["git_commit"] == "unknown" or len(tags["git_commit"].removesuffix("+dirty")) == 40
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry["uri"])
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/labse/1", dst_path=str(registry["tmp"] / "dl")))
    finally:
        mlflow.set_tracking_uri(previous)
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    # models from code: the source file is the model; no pickled python_model anywhere
    assert pyfunc["model_code_path"].endswith("mlflow_model_code.py")
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("python_model.pkl"))
    assert (local / "input_example.json").is_file() and mlmodel["signature"]["inputs"]
    assert (local / "code" / "labse_core" / "embed.py").is_file()


def test_pull_then_load_in_fresh_offline_processes(registry, tmp_path):
    from flows.registry import PullError, pull_model
    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.mlflow_model import _model_folder_in

    out = tmp_path / "pulled"
    cli = subprocess.run([sys.executable, "-m", "flows.cli", "pull", "models:/labse@champion", "--out", str(out)],
                         env=_env(registry), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "(version 1)" in cli.stdout and (out / "MLmodel").is_file()
    missing = subprocess.run([sys.executable, "-m", "flows.cli", "pull", "models:/labse@nope", "--out", str(tmp_path / "x")],
                             env=_env(registry), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nope" in missing.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(PullError, match="--out .* exists"):  # refused before anything is downloaded
        pull_model("models:/labse@champion", out)
    model_dir = _model_folder_in(out)
    assert str(model_dir) in cli.stdout and model_dir.parent.name == "artifacts"

    # A fresh interpreter in another folder: nothing of this process, no network.
    script = (
        "import json, sys, mlflow, numpy as np\n"
        "s = json.loads(sys.argv[1])\n"
        "a = mlflow.pyfunc.load_model('models:/labse@champion').predict(s)\n"
        "import pandas as pd\n"
        "b = mlflow.pyfunc.load_model(sys.argv[2]).predict(pd.DataFrame({'text': s}))\n"
        "np.save(sys.argv[3], np.stack([a, b]))\n"
    )
    npy = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(SENTENCES), str(out), str(npy)],
                          env=_env(registry) | {"PYTHONPATH": ""}, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_alias, from_folder = np.load(npy)
    reference = encode(SENTENCES, load_encoder(model_dir), progress=False)
    original = encode(SENTENCES, load_encoder(registry["model_dir"]), progress=False)
    np.testing.assert_allclose(from_alias, reference, atol=1e-5)
    np.testing.assert_allclose(from_folder, reference, atol=1e-5)
    np.testing.assert_allclose(reference, original, atol=1e-6)
    assert from_alias.shape == (len(SENTENCES), 128) and from_alias.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_alias, axis=1), 1.0, atol=1e-5)
