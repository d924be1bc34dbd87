"""Secrets in the environment never reach what a run records: MLflow params, tags, metrics, artifacts,
run summaries, lake manifests. Runs an evaluation and a mining run (both log params, tags, tables and
artifacts) with secret-looking variables set, then reads every byte under the home."""

from __future__ import annotations

import os
from pathlib import Path

from storage.layout import Layout

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYzz8secretA1",
    "AWS_ACCESS_KEY_ID": "AKIAZZZZZZZZZSECRETB2",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-secretC3",
    "PREFECT_API_KEY": "pnu_secretD4xxxxxxxxxxxxxxxxxxxxxxxx",
    "HF_TOKEN": "hf_secretE5yyyyyyyyyyyyyyyyyyyyyyyy",
    "DATABASE_URL": "postgresql://labse:pg-secretF6@db:5432/mlflow",
}


def test_runs_record_no_environment_secrets(tmp_path, monkeypatch, tiny_eval_model):
    from flows.evaluate import MineRunConfig, TatoebaEvalConfig, run_mine, run_tatoeba
    from labse_core.mining.miner import MineConfig
    from storage import tracking

    model_dir = tiny_eval_model
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    session_home = os.environ["LABSE_HOME"]
    layout = Layout.from_env(tmp_path / "home").ensure()
    try:
        run_tatoeba(TatoebaEvalConfig(model=str(model_dir), langs=["deu"]), layout)
        src, tgt = tmp_path / "de.txt", tmp_path / "en.txt"
        src.write_text("Datei öffnen\nDatei speichern\nAbbrechen\n")
        tgt.write_text("Open file\nSave file\nCancel\n")
        run_mine(MineRunConfig(src=str(src), tgt=str(tgt), src_lang="de", tgt_lang="en", model=str(model_dir),
                               mine=MineConfig(threshold=0.0, filter=False)), layout)
    finally:
        tracking.configure(Layout.from_env(session_home))
    files = [p for p in Path(layout.home).rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files) and any(p.name == "mine.json" for p in files)  # the scan sees the runs
    leaks = [(str(p), key) for p in files for key, value in SECRETS.items() if value.encode() in p.read_bytes()]
    assert not leaks, leaks
    # The scan reads what runs record: the mining run's params (its input path) are in the store.
    assert any(str(src).encode() in p.read_bytes() for p in files if p.suffix == ".db")
