"""Stage caching: an unchanged rerun of labse-pipeline skips every stage (Prefect returns the cached result,
nothing is rewritten), a changed stage config reruns exactly that stage and the ones downstream of it, a
stage flow shares the pipeline's cache, and deleted or replaced outputs are never trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows import stage_cache
from flows.pipeline import labse_pipeline
from flows.presets import PipelineConfig
from flows.stages import STAGES
from labse_core.vocab import VocabConfig
from storage.layout import Layout
from storage.manifest import MANIFEST_NAME

BEAM = BeamConfig(num_workers=1, running_mode="in_memory")


def config(vocab_size: int = 500) -> PipelineConfig:
    """The data stages only, on one small German catalog."""
    return PipelineConfig(
        preset="cache-test",
        ingest=GettextIngestConfig(languages=["de"], domains=["coreutils"], beam=BEAM),
        prepare=PrepareConfig(beam=BEAM),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=vocab_size, sample_size=3_000), beam=BEAM),
        shard=ShardConfig(beam=BEAM, tfrecord=False),
        pretrain=None, finetune=None, evaluate=None, mine=None, registered_model=None,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory, prefect_harness, real_catalogs):
    """A home of its own (the session's belongs to the pipeline tests); MLflow's URI is restored after."""
    import mlflow

    previous_uri, previous_home = mlflow.get_tracking_uri(), os.environ["LABSE_HOME"]
    home = tmp_path_factory.mktemp("cachehome")
    os.environ["LABSE_HOME"] = str(home)
    yield Layout.from_env().ensure()
    os.environ["LABSE_HOME"] = previous_home
    mlflow.set_tracking_uri(previous_uri)


def mtimes(layout: Layout) -> dict[str, int]:
    return {p: (layout.lake / p / MANIFEST_NAME).stat().st_mtime_ns
            for p in ("corpus/raw", "corpus/clean", "corpus/rejects", "shards/pairs")}


DATA_STAGES = ["ingest", "prepare", "vocab", "shard"]


def test_unchanged_rerun_skips_every_stage_and_a_change_reruns_downstream(home):
    from mlflow import MlflowClient

    first = labse_pipeline(config())
    assert first.cached == [] and [s.stage for s in first.stages][:2] == ["ingest", "prepare"]
    written = mtimes(home)
    vocab_before = (home.vocab / "spm.model").read_bytes()

    again = labse_pipeline(config())
    assert again.cached == DATA_STAGES
    assert mtimes(home) == written  # nothing was rewritten
    # the cached summaries are the first run's (same MLflow child runs), not new ones
    assert [s.mlflow_run_id for s in again.stages] == [s.mlflow_run_id for s in first.stages]
    client = MlflowClient()
    parent = client.get_run(again.mlflow_run_id)
    assert parent.data.tags["cached_stages"] == ",".join(DATA_STAGES)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{again.mlflow_run_id}'")
    assert children == []  # no stage ran

    changed = labse_pipeline(config(vocab_size=450))  # the vocabulary's config: vocab and shard rerun
    assert changed.cached == ["ingest", "prepare"]
    now = mtimes(home)
    assert {k: now[k] == written[k] for k in now} == {"corpus/raw": True, "corpus/clean": True,
                                                      "corpus/rejects": True, "shards/pairs": False}
    assert (home.vocab / "spm.model").read_bytes() != vocab_before


def test_a_stage_flow_shares_the_pipeline_cache(home):
    from flows.stage_flows import vocab_flow

    cfg = config(vocab_size=450)
    before = (home.vocab / "spm.model").stat().st_mtime_ns
    s = vocab_flow(cfg.vocab)
    assert (home.vocab / "spm.model").stat().st_mtime_ns == before and s.stage == "vocab"
    stage_cache.ledger_path(home, "vocab").unlink()  # no record of what the stage wrote: run it again
    vocab_flow(cfg.vocab)
    assert (home.vocab / "spm.model").stat().st_mtime_ns != before


def test_keys_follow_inputs_code_and_outputs(home, tmp_path):
    cfg = config()
    vocab = STAGES["vocab"]
    base = stage_cache.stage_key(home, "vocab", cfg.vocab, vocab.inputs(home, cfg.vocab), vocab.code)
    assert vocab.inputs(home, cfg.vocab) == stage_cache.signatures(home, [stage_cache.dataset("corpus_clean")])
    assert base == stage_cache.stage_key(home, "vocab", cfg.vocab, vocab.inputs(home, cfg.vocab), vocab.code)
    assert base != stage_cache.stage_key(home, "vocab", config(vocab_size=451).vocab, {}, vocab.code)
    assert base != stage_cache.stage_key(home, "shard", cfg.vocab, vocab.inputs(home, cfg.vocab), STAGES["shard"].code)
    # a file that ingest reads: its signature changes with its content
    f = tmp_path / "x.po"
    f.write_text("a")
    sig = stage_cache.files_signature([tmp_path], ("*.po",))
    f.write_text("ab")
    assert stage_cache.files_signature([tmp_path], ("*.po",)) != sig
    # the ledger: valid only while the recorded outputs are unchanged
    stage_cache.record(home, "probe", "k1", [stage_cache.dataset("corpus_clean")])
    assert stage_cache.still_valid(home, "probe", "k1") and not stage_cache.still_valid(home, "probe", "k2")
    manifest = home.lake / "corpus/clean" / MANIFEST_NAME
    text = manifest.read_text()
    manifest.write_text(text.replace('"rows"', '"rows" ', 1))  # republished (different bytes)
    try:
        assert not stage_cache.still_valid(home, "probe", "k1")
    finally:
        manifest.write_text(text)
    assert stage_cache.still_valid(home, "probe", "k1")
    Path(stage_cache.ledger_path(home, "probe")).unlink()


def test_stage_code_version_covers_the_helpers_a_stage_calls():
    from flows.lineage import REPO_ROOT, module_closure

    files = {p.relative_to(REPO_ROOT).as_posix() for p in module_closure(STAGES["ingest"].code)}
    # the helpers ingest calls (what Prefect's TASK_SOURCE would miss) ...
    assert {"beam_jobs/gettext_ingest.py", "labse_core/gettext_catalog.py", "storage/manifest.py"} <= files
    # ... and nothing it does not run: the CLI, the trainers
    assert not {"flows/cli.py", "labse_core/finetune/train.py"} & files
    prepare = {p.relative_to(REPO_ROOT).as_posix() for p in module_closure(STAGES["prepare"].code)}
    assert "labse_core/text/filters.py" in prepare and "labse_core/text/filters.py" not in files
    assert stage_cache.stage_code_version(STAGES["ingest"].code) != stage_cache.stage_code_version(STAGES["prepare"].code)
    imported = STAGES["evaluate"].variant("imported")  # its own ledger, the same code
    assert imported.name == "evaluate-imported" and imported.code == STAGES["evaluate"].code


def test_every_flow_keys_a_stage_by_its_one_record(home):
    """The pipeline, the stage flows and scheduled-retrain read a stage's inputs from its record
    (flows.stages), so no copy can drift: prepare in append mode reads the clean corpus it adds to, and
    the registry gate is keyed by the held-out pairs it scores, however they were picked."""
    clean = stage_cache.dataset("corpus_clean")
    assert clean in STAGES["prepare"].inputs(home, PrepareConfig(from_raw_corpus=False, mode="append", beam=BEAM))
    assert clean not in STAGES["prepare"].inputs(home, PrepareConfig(from_raw_corpus=False, beam=BEAM))
    register = STAGES["register"]
    given = {"model_dir": str(home.home), "finetune_run_id": "run", "evaluation": {"tatoeba_mean": 0.5}}
    key = register.inputs(home, None, eval_pairs=[("Hallo", "Hello")], **given)
    assert key == register.inputs(home, None, eval_pairs=[["Hallo", "Hello"]],  # as a cached result gives them back
                                  **given | {"evaluation": {"tatoeba_mean": 0.5, "tatoeba_run_id": "another"}})
    assert key != register.inputs(home, None, eval_pairs=[("Hallo", "Hi")], **given)


def test_a_training_stage_resumes_only_its_own_unfinished_attempt(tmp_path):
    root = tmp_path / "checkpoints" / "finetune" / "run"
    assert stage_cache.resume_attempt(root, "k1") is False  # nothing before: a fresh run
    assert stage_cache.resume_attempt(root, "k1") is True  # the same key, never finished: killed, continue
    assert stage_cache.resume_attempt(root, "k2") is False  # other config, inputs or code: start over
    stage_cache.attempt_finished(root, "k2")
    assert stage_cache.resume_attempt(root, "k2") is False  # finished (a rerun with the cache off): start over
    (root / stage_cache.ATTEMPT_FILE).write_text("{not json")
    assert stage_cache.resume_attempt(root, "k2") is False  # unreadable: start over, never guess


def test_the_runs_a_killed_training_attempt_left_running_are_closed(tmp_path, prefect_harness):
    """A SIGKILLed training attempt leaves its MLflow run and the flow's run above it RUNNING. The next
    attempt (flows.tasks._close_killed_runs, inside the training stage's task) marks the old flow run
    KILLED, and the training run too unless it resumes it (the trainer then reopens and finishes it); runs
    that ended (a training run that raised is FAILED) are left as they are."""
    import json

    from mlflow import MlflowClient
    from prefect import flow

    from flows.tasks import _close_killed_runs
    from labse_core.training.tracking import RUN_RECORD
    from storage import tracking

    tracking.configure(Layout.from_env())
    client = MlflowClient()
    experiment = client.create_experiment(f"killed-attempts-{tmp_path.name}")

    def killed_attempt(root: Path) -> tuple[str, str]:
        parent = client.create_run(experiment).info.run_id
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        root.mkdir()
        (root / RUN_RECORD).write_text(json.dumps({"mlflow_run_id": run}))
        return parent, run

    @flow
    def next_attempt(root: Path, resume: bool) -> None:
        _close_killed_runs(root, "the-new-flow-run", resume)

    def status(*run_ids: str) -> tuple[str, ...]:
        return tuple(client.get_run(r).info.status for r in run_ids)

    resumed = killed_attempt(tmp_path / "resumed")
    next_attempt(tmp_path / "resumed", True)
    assert status(*resumed) == ("KILLED", "RUNNING")
    restarted = killed_attempt(tmp_path / "restarted")
    next_attempt(tmp_path / "restarted", False)
    assert status(*restarted) == ("KILLED", "KILLED")
    failed = killed_attempt(tmp_path / "failed")
    for run_id in failed:
        client.set_terminated(run_id, "FAILED")
    next_attempt(tmp_path / "failed", False)
    assert status(*failed) == ("FAILED", "FAILED")
    next_attempt(tmp_path / "none", False)  # no record: nothing to close, no error
