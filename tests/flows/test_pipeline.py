"""labse-pipeline (and labse-ablation after it) under the Prefect test harness, tracked in the session's
MLflow (sqlite), on this machine's gettext catalogs."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows.pipeline import labse_pipeline
from flows.presets import EvaluateStageConfig, MineStageConfig, PipelineConfig, preset
from flows.stage_cache import ATTEMPT_FILE
from labse_core.data.held_out import is_held_out
from labse_core.data.shards import shard_files
from labse_core.finetune import config as finetune
from labse_core.pretrain.config import tiny_cpu
from labse_core.vocab import VocabConfig
from storage import catalog, tracking
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS

FINETUNE_STEPS = 300


def _config(**overrides) -> PipelineConfig:
    beam = BeamConfig(num_workers=2)
    cfg = dict(preset="test", ingest=GettextIngestConfig(languages=["de", "uk"], beam=beam),
               prepare=PrepareConfig(beam=beam),
               vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=2000, sample_size=10_000), beam=beam),
               shard=ShardConfig(beam=beam),
               pretrain=tiny_cpu(max_steps=40, warmup_steps=5, checkpoint_every=20, progress=False),
               # Enough steps to learn beyond the pretrained start (see STEP0_MARGIN), ~1 min on 2 cores.
               finetune=finetune.tiny_cpu(max_steps=FINETUNE_STEPS, warmup_steps=10, eval_every=100,
                                          checkpoint_every=150, progress=False),
               evaluate=EvaluateStageConfig(bucc_gold=60, bucc_distractors=100),
               mine=MineStageConfig(lang="de", gold=100, distractors=120))
    return PipelineConfig(**(cfg | overrides))


@pytest.fixture(scope="module")
def summary(prefect_harness, real_catalogs):
    return labse_pipeline(_config())


def stage(summary, name):
    return next(s for s in summary.stages if s.stage == name)


def test_flow_writes_corpus_and_catalog(summary):
    stage, clean, rejects, vocab, pairs, tlm, mlm, pre, fine, evaluate, mine, register = summary.stages
    assert [s.stage for s in (fine, evaluate, mine, register)] == ["finetune", "evaluate", "mine", "register"]
    assert pre.stage == "pretrain" and pre.rows == 40 and pre.stats["loss_last"] < pre.stats["loss_first"]
    assert (vocab.stage, pairs.dataset, tlm.dataset, mlm.dataset) == ("vocab", "shards_pairs", "shards_tlm", "shards_mlm")
    assert pairs.rows == clean.rows and vocab.rows == 10_000
    # TLM leaves out the pairs fine-tuning holds out for its evaluation (the pipeline passes eval_fraction)
    shard_pairs = pq.read_table(Layout.from_env().dataset_dir(SHARD_PAIRS.relpath), columns=["src_text", "tgt_text"])
    fraction = finetune.tiny_cpu().eval_fraction
    held = sum(is_held_out(a, b, fraction) for a, b in zip(*shard_pairs.to_pydict().values(), strict=True))
    assert tlm.rows == pairs.rows - held and held > 0
    assert stage.stage == "ingest" and stage.rows > 20_000 and stage.partitions == 2
    assert (clean.dataset, rejects.dataset) == ("corpus_clean", "corpus_rejects")
    assert clean.rows + rejects.rows == stage.rows  # every raw pair is clean or rejected
    assert {"corpus_raw", "corpus_clean", "corpus_rejects"} <= set(summary.views)
    rows = catalog.query(Layout.from_env(), "SELECT lang, count(*) AS n FROM corpus_raw GROUP BY 1 ORDER BY 1").to_pylist()
    assert [r["lang"] for r in rows] == ["de", "uk"] and sum(r["n"] for r in rows) == stage.rows


def test_mlflow_holds_parent_and_child_runs(summary):
    layout = Layout.from_env()
    client = MlflowClient(tracking.tracking_uri(layout))
    assert tracking.tracking_uri(layout).startswith("sqlite:///") and layout.mlflow_db.exists()
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.data.tags["pipeline"] == "labse-pipeline" and parent.info.status == "FINISHED"
    assert parent.data.tags["prefect_flow_run_id"] == summary.prefect_flow_run_id
    child = client.get_run(summary.stages[0].mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["rows"] == summary.stages[0].rows
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "ingest")}
    assert {"ingest/corpus_raw", "ingest/corpus_raw.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(child.info.run_id, "ingest/corpus_raw")] == ["ingest/corpus_raw/_manifest.json"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} == {"ingest", "prepare", "vocab", "shard", "tiny-cpu", "evaluate-tatoeba",
                                                    "evaluate-bucc", "mine"}
    assert len(children) == 9  # pretrain and finetune are both tiny-cpu runs


def test_presets():
    assert preset("demo").ingest.languages is None  # the demo reads every catalog
    assert len(preset("demo").prepare.raw_languages) == 30
    with pytest.raises(ValueError, match="known presets"):
        preset("nope")


STEP0_MARGIN = 0.05
"""How much the fine-tuning stage must improve on its own step-0 held-out accuracy (see the test)."""


def test_finetune_stage_warm_starts_and_registers_the_champion(summary):
    import mlflow
    from mlflow import MlflowClient

    from labse_core.embed import encode
    from labse_core.export import load_encoder

    pre, fine, ev, reg = (stage(summary, n) for n in ("pretrain", "finetune", "evaluate", "register"))
    assert fine.rows == FINETUNE_STEPS and fine.stats["init_from"] == pre.path
    held_out = fine.stats["held_out_pairs"]
    assert held_out > 100
    # The model must learn: better than its own starting point (step 0, the pretrained encoder, which
    # already retrieves many gettext pairs through shared subwords), not merely above chance.
    assert fine.stats["step0_accuracy"] is not None
    assert fine.stats["best_accuracy"] >= fine.stats["step0_accuracy"] + STEP0_MARGIN, fine.stats
    client = MlflowClient()
    run = client.get_run(fine.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == summary.mlflow_run_id
    assert "plots/finetune.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    champion = client.get_model_version_by_alias("labse", "champion")
    assert str(champion.version) == reg.stats["registered_version"] and reg.stats["promoted"] is True
    assert reg.stats["reason"] == "no champion yet" and champion.run_id == fine.mlflow_run_id
    assert float(champion.tags["eval_acc"]) == pytest.approx(fine.stats["best_accuracy"], abs=0.02)
    # The gate's primary metric is the evaluate stage's Tatoeba mean over the run's languages.
    assert ev.stats["tatoeba_langs"] == ["deu", "ukr"]
    assert champion.tags["gate_primary_metric"] == "tatoeba_mean"
    assert float(champion.tags["tatoeba_mean"]) == pytest.approx(ev.stats["tatoeba_mean"], abs=1e-6)

    # What users pull from the registry embeds like the exported best/ folder.
    texts = ["Open the file", "Datei öffnen", "Відкрити файл", "Quit"]
    pulled = mlflow.pyfunc.load_model("models:/labse@champion").predict(texts)
    np.testing.assert_allclose(pulled, encode(texts, load_encoder(fine.path), progress=False), atol=1e-5)


def test_evaluate_and_mine_stages_publish_results(summary):
    ev, mine = stage(summary, "evaluate"), stage(summary, "mine")
    layout = Layout.from_env()
    assert 0.0 <= ev.stats["tatoeba_mean"] <= 1.0 and 0.0 <= ev.stats["bucc_f1"] <= 1.0
    rows = catalog.query(layout, "SELECT eval_set, count(*) AS n FROM eval_results WHERE run_id IN "
                                 f"('{ev.stats['tatoeba_run_id']}', '{ev.stats['bucc_run_id']}') GROUP BY 1").to_pylist()
    assert {r["eval_set"] for r in rows} == {"tatoeba-v1", "bucc-gettext"} and sum(r["n"] for r in rows) == ev.rows
    group = catalog.query(layout, "SELECT value FROM eval_results WHERE scope = 'group' AND language = 'evaluated' AND "
                                  f"direction = 'both' AND run_id = '{ev.stats['tatoeba_run_id']}'").to_pylist()
    assert group == [{"value": pytest.approx(ev.stats["tatoeba_mean"])}]
    # Evaluated before the gate, on the folder; once registered, the rows name the version it became.
    version = stage(summary, "register").stats["registered_version"]
    labels = catalog.query(layout, "SELECT DISTINCT model_uri, model_version FROM eval_results WHERE run_id IN "
                                   f"('{ev.stats['tatoeba_run_id']}', '{ev.stats['bucc_run_id']}')").to_pylist()
    assert labels == [{"model_uri": f"models:/labse/{version}", "model_version": str(version)}]
    # The demo's mining run: a BUCC-style de-en set of held-out pairs, mined at the dev-tuned threshold.
    assert mine.stats["gold"] == 100 and mine.stats["src_sentences"] == mine.stats["tgt_sentences"] == 220
    assert mine.stats["threshold"] == pytest.approx(ev.stats["bucc_thresholds"]["de"])
    assert 0.0 < mine.stats["f1"] <= 1.0, mine.stats
    mined = catalog.query(layout, f"SELECT count(*) AS n FROM mined WHERE run_id = '{mine.mlflow_run_id}'").to_pylist()
    assert mined == [{"n": mine.rows}]


def test_registry_gate_branches(summary, tmp_path):
    """Every branch of gate_decision through register_and_promote, with the pipeline's primary metric."""
    import mlflow
    from mlflow import MlflowClient

    from labse_core.evaluation import tatoeba as tat
    from labse_core.mlflow_model import register_and_promote
    from tests.conftest import TATOEBA

    fine, ev = stage(summary, "finetune"), stage(summary, "evaluate")
    layout = Layout.from_env()
    constant = constant_model(fine.path, tmp_path)
    pairs = held_out_pairs()

    def promote(model_dir):
        with mlflow.start_run(run_name="gate-test"):
            return register_and_promote(
                model_dir, pairs, name="gate-test", cache_dir=layout.model_cache, primary_name="tatoeba_mean",
                primary=lambda embed: tat.evaluate_tatoeba(embed, TATOEBA, ["deu", "ukr"]).group("evaluated").acc)

    first = promote(constant)
    assert first.promoted and first.reason == "no champion yet"
    better = promote(fine.path)
    assert better.promoted and better.reason == "higher primary metric" and better.champion_version == first.version
    assert better.primary == pytest.approx(ev.stats["tatoeba_mean"]) and better.champion_primary < better.primary
    same = promote(fine.path)  # the same weights again: a tie on both metrics
    assert same.promoted and same.reason == "tie on both metrics: the newer version wins"
    worse = promote(constant)
    assert not worse.promoted and worse.reason == "lower primary metric"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("gate-test", "champion").version) == same.version
    assert str(client.get_model_version_by_alias("gate-test", "challenger").version) == worse.version
    tags = client.get_model_version("gate-test", worse.version).tags
    assert float(tags["tatoeba_mean"]) == pytest.approx(worse.primary, abs=1e-6)
    assert float(tags["champion_tatoeba_mean"]) == pytest.approx(same.primary, abs=1e-6)
    assert float(tags["eval_acc"]) == pytest.approx(worse.accuracy, abs=1e-6)
    assert float(tags["champion_eval_acc"]) == pytest.approx(same.accuracy, abs=1e-6)
    assert tags["gate_decision"] == "lower primary metric" and tags["champion_version_compared"] == same.version


def constant_model(like: str, tmp_path):
    """A degenerate model: the same embedding for every sentence (retrieval at chance). (A merely
    untrained one is not a safe loser: on gettext data, shared subwords alone retrieve many pairs.)"""
    from labse_core.export import export_model, load_encoder
    from labse_core.finetune.train import build_encoder

    out = tmp_path / "constant"
    if out.exists():
        return out
    _, tokenizer = load_encoder(like)
    encoder = build_encoder(finetune.tiny_cpu(vocab_size=len(tokenizer), seed=123))
    with torch.no_grad():
        encoder.pooler_dense.weight.zero_()
        encoder.pooler_dense.bias.fill_(0.5)
    return export_model(encoder, Layout.from_env().vocab / "hf", out)


def held_out_pairs():
    from labse_core.finetune.data import scan_pairs

    cfg = finetune.tiny_cpu()
    scan = scan_pairs(shard_files(Layout.from_env().dataset_dir(SHARD_PAIRS.relpath)), cfg.eval_fraction, cfg.eval_max_pairs)
    return [(r["src_text"], r["tgt_text"]) for r in scan.eval_rows]


def test_a_worse_model_does_not_take_the_champion_alias(summary, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from labse_core.mlflow_model import register_and_promote

    fine = stage(summary, "finetune")
    champion_before = str(MlflowClient().get_model_version_by_alias("labse", "champion").version)
    untrained = constant_model(fine.path, tmp_path)
    pairs = held_out_pairs()
    with mlflow.start_run(run_name="constant-candidate"):  # no primary metric given: held-out accuracy decides
        promo = register_and_promote(untrained, pairs, name="labse")
    assert not promo.promoted and promo.champion_version == champion_before
    assert promo.accuracy < promo.champion_accuracy and promo.reason == "lower primary metric"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("labse", "champion").version) == champion_before
    assert str(client.get_model_version_by_alias("labse", "challenger").version) == promo.version
    with pytest.raises(ValueError, match="held-out pairs"):
        register_and_promote(untrained, [], name="labse")


def test_scheduled_retrain_that_loses_keeps_the_champion_and_says_why(summary):
    """scheduled-retrain's other branch: the new version is worse, so it is registered but not promoted, and
    the version and the run say why."""
    from flows.stage_flows import RetrainConfig, retrain_flow

    client = MlflowClient()
    before = client.get_model_version_by_alias("labse", "champion")
    # lr 0.05 is 50x the tiny preset's: six steps wreck the warm-started champion. Without the step-0
    # evaluation the run's best/ is the wrecked step 6 (with it, best/ would be the champion itself: a tie).
    bad = finetune.tiny_cpu(max_steps=6, warmup_steps=1, lr=0.05, eval_at_start=False, eval_every=6,
                            checkpoint_every=1000, progress=False, run_name="retrain-too-hot")
    out = retrain_flow(RetrainConfig(shard=ShardConfig(beam=BeamConfig(num_workers=2)), finetune=bad,
                                     evaluate=EvaluateStageConfig(bucc=False)))
    assert out["warm_start"] == "models:/labse@champion" and out["inbox_files"] == []
    assert out["promoted"] is False and out["champion_version_before"] == str(before.version), out
    assert out["reason"] in ("lower primary metric", "primary tie, lower held-out accuracy"), out
    assert str(client.get_model_version_by_alias("labse", "champion").version) == str(before.version)
    why = client.get_model_version("labse", out["new_version"]).tags["not_promoted_reason"]
    assert why.startswith(f"not promoted: {out['reason']}") and f"version {before.version}" in why
    tags = client.get_run(out["mlflow_run_id"]).data.tags
    assert tags["retrain.promoted"] == "false" and tags["retrain.not_promoted_reason"] == why
    assert tags["retrain.new_version"] == str(out["new_version"])


def test_ablation_flow_compares_arms_in_mlflow(summary):
    from mlflow import MlflowClient

    from flows.ablation import AblationConfig, labse_ablation
    from labse_core.finetune.data import scan_pairs

    base = finetune.tiny_cpu(run_name="ablation", max_steps=20, warmup_steps=2, eval_every=10, log_every=10,
                             progress=False)
    result = labse_ablation(AblationConfig(base=base))
    pre = stage(summary, "pretrain")
    assert result.pretrained == str(Path(pre.path))  # found the pipeline's encoder by itself
    arms = {a.arm: a for a in result.arms}
    assert set(arms) == {f"margin={m},init={i}" for m in (0.0, 0.3) for i in ("random", "pretrained")}
    client = MlflowClient()
    parent = client.get_run(result.mlflow_run_id)
    shards = shard_files(Layout.from_env().dataset_dir(SHARD_PAIRS.relpath))
    full = sum(scan_pairs(shards, base.eval_fraction, base.eval_max_pairs).train_counts.values())
    first_loss = {}
    for name, a in arms.items():
        run = client.get_run(a.mlflow_run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["arm"] == name
        assert float(run.data.params["margin"]) == a.margin and run.data.params["train_fraction"] == "0.2"
        assert (run.data.params["init_from"] != "None") == (a.init == "pretrained")
        assert a.steps == 20 and 0.0 <= a.final_accuracy <= 1.0
        assert parent.data.metrics[f"acc.margin_{a.margin}.{a.init}"] == pytest.approx(a.final_accuracy)
        assert 0.15 * full < a.train_pairs < 0.25 * full  # 20% of the training pairs
        first_loss[name] = client.get_metric_history(a.mlflow_run_id, "loss")[0].value
    for init in ("random", "pretrained"):  # the margin is really applied: same weights, higher loss
        assert first_loss[f"margin=0.3,init={init}"] > first_loss[f"margin=0.0,init={init}"] + 1.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ablation.png", "ablation.json"} <= artifacts
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "ablation.json")).read_text())
    assert [r["arm"] for r in table["arms"]] == [a.arm for a in result.arms]


def test_a_pipeline_killed_in_finetune_resumes_it_from_its_newest_checkpoint(summary, monkeypatch):
    """The data stages are the fixture's (cached); a fine-tuning run of its own dies after step 25 (its
    checkpoints: 10, 20), the pipeline is run again with the same settings: fine-tuning continues from
    step 20 in the same MLflow run, now a child of the new pipeline run."""
    import labse_core.training.checkpoint as checkpoint

    fine = finetune.tiny_cpu(run_name="killed", max_steps=30, warmup_steps=5, eval_every=10, checkpoint_every=10,
                             progress=False)
    cfg = _config(pretrain=None, finetune=fine, evaluate=None, mine=None, registered_model=None)
    steps = []

    def die_after_25(point: str) -> None:
        steps.append(point)
        if point == "train.step" and steps.count(point) == 25:
            raise RuntimeError("killed at step 25")

    monkeypatch.setattr(checkpoint, "maybe_die", die_after_25)
    with pytest.raises(RuntimeError, match="killed at step 25"):
        labse_pipeline(cfg)
    monkeypatch.undo()

    again = labse_pipeline(cfg)
    fine_run = stage(again, "finetune")
    assert fine_run.stats["resumed_from_step"] == 20 and fine_run.rows == 30
    assert {"ingest", "prepare", "vocab", "shard"} <= set(again.cached)
    run = MlflowClient().get_run(fine_run.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == again.mlflow_run_id
    steps_logged = [m.step for m in MlflowClient().get_metric_history(fine_run.mlflow_run_id, "loss")]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 30  # each step logged once
    marker = json.loads((Layout.from_env().checkpoints("finetune", "killed") / ATTEMPT_FILE).read_text())
    assert marker["finished"] is True  # a later attempt with this key starts over (test_stage_cache.py)
