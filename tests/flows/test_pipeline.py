"""labse-pipeline under the Prefect test harness, tracked in the session's MLflow (sqlite)."""

import pytest
from mlflow.tracking import MlflowClient

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows.pipeline import PipelineConfig, labse_pipeline, preset
from labse_core.pretrain.train import tiny_cpu
from labse_core.vocab import VocabConfig
from storage import catalog, tracking
from storage.layout import Layout


@pytest.fixture(scope="module")
def summary(prefect_harness, real_catalogs):
    beam = BeamConfig(num_workers=2)
    cfg = PipelineConfig(preset="test", ingest=GettextIngestConfig(languages=["de", "uk"], beam=beam),
                         prepare=PrepareConfig(beam=beam),
                         vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=2000, sample_size=10_000), beam=beam),
                         shard=ShardConfig(beam=beam),
                         pretrain=tiny_cpu(max_steps=40, warmup_steps=5, checkpoint_every=20, progress=False))
    return labse_pipeline(cfg)


def test_flow_writes_corpus_and_catalog(summary):
    stage, clean, rejects, vocab, pairs, tlm, mlm, pre = summary.stages
    assert pre.stage == "pretrain" and pre.rows == 40 and pre.stats["loss_last"] < pre.stats["loss_first"]
    assert (vocab.stage, pairs.dataset, tlm.dataset, mlm.dataset) == ("vocab", "shards_pairs", "shards_tlm", "shards_mlm")
    assert pairs.rows == tlm.rows == clean.rows and vocab.rows == 10_000
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
    assert {r.info.run_name for r in children} == {"ingest", "prepare", "vocab", "shard", "tiny-cpu"}


def test_presets():
    assert preset("demo").ingest.languages is None  # the demo reads every catalog
    assert len(preset("demo").prepare.raw_languages) == 30
    with pytest.raises(ValueError, match="known presets"):
        preset("nope")
