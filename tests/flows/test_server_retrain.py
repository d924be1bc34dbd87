"""Scheduled retraining end to end on a real Prefect server, fired by the cron schedule alone: a small home
with a champion (a `labse pipeline` run through the servers, as a user makes one), then `labse serve --cron
"* * * * *"`: the scheduler creates a scheduled-retrain run, the runner runs it, and it fine-tunes from the
champion and registers a new version of the model."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from labse_core.finetune import config as finetune
from tests.flows.served import CATALOG, TERMINAL, labse, on_cron_grid, platform, wait_for

BEAM = {"num_workers": 1, "running_mode": "in_memory"}
EVALUATE = {"tatoeba_langs": ["deu"], "bucc": False}


def _tiny(steps: int) -> dict:
    return finetune.tiny_cpu(max_steps=steps, warmup_steps=2, eval_every=steps, checkpoint_every=1000,
                             progress=False).model_dump(mode="json")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("with-champion")
    with platform(home) as p:
        cfg = home / "pipeline.json"
        cfg.write_text(json.dumps({
            "preset": "served-test",
            "ingest": {"locale_roots": [], "paths": [str(CATALOG)], "languages": ["de"], "beam": BEAM},
            "prepare": {"beam": BEAM}, "vocab": {"vocab": {"vocab_size": 1000, "sample_size": 5000}, "beam": BEAM},
            "shard": {"beam": BEAM}, "pretrain": None, "finetune": _tiny(20), "evaluate": EVALUATE, "mine": None}))
        made = labse(p.env, "pipeline", "--preset", "smoke", "--config", str(cfg), timeout=600)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        retrain = home / "retrain.json"
        retrain.write_text(json.dumps({"shard": {"beam": BEAM}, "finetune": _tiny(10), "evaluate": EVALUATE}))
        p.start_serving("--cron", "* * * * *", "--retrain-config", str(retrain))
        yield p


@pytest.fixture(autouse=True)
def clean_server_logs(served):
    yield
    served.assert_server_logs_clean()


def test_the_cron_schedule_alone_retrains_the_champion_and_registers_a_version(served):
    client = MlflowClient(tracking_uri=served.mlflow)
    champion = client.get_model_version_by_alias("labse", "champion")
    dep = served.deployment("scheduled-retrain/scheduled-retrain")
    assert dep["parameters"]["config"]["finetune"]["max_steps"] == 10  # --retrain-config reached the deployment

    def first_finished():
        runs = served.runs(dep["id"], created_by={"type_": ["SCHEDULE"]})
        done = [r for r in runs if r["state"]["type"] in TERMINAL]
        return done[0] if done else None
    run = wait_for("a scheduled-retrain run created by the schedule to finish", first_finished, 300, served.log)
    assert run["state"]["type"] == "COMPLETED", (run["state"], served.log.read_text()[-4000:])
    assert run["auto_scheduled"] is True and on_cron_grid(run["expected_start_time"])
    assert run["parameters"]["config"]["finetune"]["max_steps"] == 10
    # The version it registered: lineage tags name the flow run; it was warm-started from the champion.
    versions = client.search_model_versions("name = 'labse'")
    mine = [v for v in versions if v.tags.get("prefect_flow_run_id") == run["id"]]
    assert len(mine) == 1 and int(mine[0].version) > int(champion.version), [(v.version, v.tags) for v in versions]
    assert mine[0].tags.get("preset") == "scheduled-retrain"
    runs = client.search_runs([client.get_experiment_by_name("labse").experiment_id],
                              f"tags.prefect_flow_run_id = '{run['id']}'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.tags["retrain.new_version"] == mine[0].version
