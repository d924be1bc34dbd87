"""One Prefect flow per stage, and ``scheduled-retrain``: what ``labse serve`` deploys.

Each stage flow runs the same task as ``labse-pipeline`` (``flows.pipeline``), with the same cache key
(``flows.stage_cache``: a stage whose config, inputs and code are unchanged is skipped, in a stage flow as
in the pipeline), under its own parent MLflow run. Parameters are pydantic models: the Prefect UI renders
them as a form with each field's description.

``scheduled-retrain`` (cron + the "new data landed" event): prepares the files waiting in the inbox
incrementally (``mode=append``), re-shards, fine-tunes warm-started from ``models:/labse@champion``,
evaluates, and registers; the registry gate (``labse_core.mlflow_model.gate_decision``) moves
``@champion`` only when the new version is better on the primary metric (Tatoeba over the run's
languages); otherwise why not is recorded on the version (``not_promoted_reason``) and in the run.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows import stage_cache as sc
from flows.pipeline import (
    _SHARDS,
    EvaluateStageConfig,
    MineStageConfig,
    StageSummary,
    _stage_inputs,
    evaluate_stage,
    finetune_stage,
    held_out_for,
    ingest_stage,
    mine_stage,
    prepare_stage,
    pretrain_stage,
    register_stage,
    shard_stage,
    vocab_stage,
)
from flows.reporting import publish_markdown
from labse_core.finetune import config as finetune
from labse_core.finetune.config import FinetuneConfig
from labse_core.logfmt import num
from labse_core.pretrain import config as pretrain_presets
from labse_core.pretrain.config import PretrainConfig
from storage import tracking
from storage.layout import Layout
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS

DATA_LANDED = "labse.data.landed"
"""The "new data landed" event: emitted by ``labse prepare --append`` and by a file dropped into the inbox."""


def data_resource(layout: Layout) -> dict[str, str]:
    """The event's resource: this platform home (two homes on one Prefect server do not trigger each other)."""
    digest = hashlib.sha256(str(layout.home).encode()).hexdigest()[:12]
    return {"prefect.resource.id": f"labse.home.{digest}", "prefect.resource.name": str(layout.home)}


def inbox_dir(layout: Layout) -> Path:
    """Where new corpus files are dropped (``labse serve`` watches it; scheduled-retrain consumes it)."""
    return layout.home / "inbox"


def _parent(name: str):
    layout = Layout.from_env().ensure()
    tracking.configure(layout)
    run = mlflow.start_run(run_name=name)
    mlflow.set_tags({"pipeline": name, "prefect_flow_run_id": str(flow_run.get_id())})
    return layout, run


def mlflow_run_link(run_id: str) -> str:
    """A link to the run in the MLflow UI when tracking goes to a server, else its id and store."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        exp = mlflow.get_run(run_id).info.experiment_id
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"
    return f"`{run_id}` ({uri})"


def _summary(name: str, stages: list[StageSummary], cached: list[str], run_id: str, extra: list[str] = ()) -> None:
    """The run's Prefect artifacts: a markdown summary with the MLflow run link, and a table of its stages."""
    table = [{"stage": s.stage, "dataset": s.dataset, "rows": s.rows, "seconds": round(s.seconds, 1),
              "cached": s.stage in cached, "path": s.path} for s in stages]
    publish_markdown(name, [f"### {name}", "| stage | dataset | rows | seconds | cached |", "|---|---|---:|---:|---|",
                            *[f"| {s.stage} | {s.dataset} | {s.rows:,} | {s.seconds:.1f} | "
                              f"{'yes' if s.stage in cached else ''} |" for s in stages],
                            f"- MLflow run: {mlflow_run_link(run_id)}", *extra], table=table)


def _one(task, stage: str, cfg: Any, inputs: dict, outputs, *args, cache: bool = True):
    result, cached = sc.run_stage(task, stage, cfg, inputs, outputs, *args, use_cache=cache)
    return result, [stage] if cached else []


@flow(name="labse-ingest", log_prints=True)
def ingest_flow(config: GettextIngestConfig = GettextIngestConfig(), cache: bool = True) -> StageSummary:  # noqa: B008
    """gettext catalogs -> corpus_raw."""
    layout, run = _parent("labse-ingest")
    with run:
        s, cached = _one(ingest_stage, "ingest", config,
                         {"files": sc.files_signature([*config.locale_roots, *config.paths], ("*.mo", "*.po"))},
                         lambda r: [sc.dataset(RAW_PAIRS.name)], config, run.info.run_id, cache=cache)
        _summary("labse-ingest", [s], cached, run.info.run_id)
    return s


@flow(name="labse-prepare", log_prints=True)
def prepare_flow(config: PrepareConfig = PrepareConfig(), cache: bool = True) -> list[StageSummary]:  # noqa: B008
    """corpus_raw and corpus files -> corpus_clean + corpus_rejects."""
    layout, run = _parent("labse-prepare")
    with run:
        out, cached = _one(prepare_stage, "prepare", config, _prepare_inputs(layout, config),
                           lambda r: [sc.dataset(CLEAN_PAIRS.name), sc.dataset(REJECTS.name)], config, run.info.run_id,
                           cache=cache)
        _summary("labse-prepare", out, cached, run.info.run_id)
    return out


def _prepare_inputs(layout: Layout, config: PrepareConfig) -> dict[str, Any]:
    items = [sc.dataset(RAW_PAIRS.name)] if config.from_raw_corpus else []
    if config.mode == "append":
        items.append(sc.dataset(CLEAN_PAIRS.name))  # appends to it: a new clean corpus is a new input
    return _stage_inputs(layout, *items, files=sc.files_signature([i.path for i in config.inputs]),
                         eval_sets=sc.files_signature(config.eval_sets))


@flow(name="labse-vocab", log_prints=True)
def vocab_flow(config: VocabStageConfig = VocabStageConfig(), cache: bool = True) -> StageSummary:  # noqa: B008
    """corpus_clean -> sentencepiece + Hugging Face tokenizer."""
    layout, run = _parent("labse-vocab")
    with run:
        s, cached = _one(vocab_stage, "vocab", config, _stage_inputs(layout, sc.dataset(CLEAN_PAIRS.name)),
                         lambda r: [sc.VOCAB], config, run.info.run_id, cache=cache)
        _summary("labse-vocab", [s], cached, run.info.run_id)
    return s


@flow(name="labse-shard", log_prints=True)
def shard_flow(config: ShardConfig = ShardConfig(), cache: bool = True) -> list[StageSummary]:  # noqa: B008
    """corpus_clean + vocabulary -> pair/TLM/MLM shards."""
    layout, run = _parent("labse-shard")
    with run:
        out, cached = _one(shard_stage, "shard", config, _stage_inputs(layout, sc.dataset(CLEAN_PAIRS.name), sc.VOCAB),
                           lambda r: list(_SHARDS), config, run.info.run_id, cache=cache)
        _summary("labse-shard", out, cached, run.info.run_id)
    return out


@flow(name="labse-pretrain", log_prints=True)
def pretrain_flow(config: PretrainConfig = pretrain_presets.tiny_cpu(time_budget_s=180),  # noqa: B008
                  cache: bool = True) -> StageSummary:
    """MLM + TLM pretraining on the shards (one training run at a time per home)."""
    layout, run = _parent("labse-pretrain")
    with run:
        s, cached = _one(pretrain_stage, "pretrain", config, _stage_inputs(layout, *_SHARDS, sc.VOCAB),
                         lambda r: [sc.folder(r.path)], config, run.info.run_id, cache=cache)
        _summary("labse-pretrain", [s], cached, run.info.run_id)
    return s


def resolve_init(init_from: str | None, layout: Layout) -> str | None:
    """A folder, or a registry URI (``models:/labse@champion``) downloaded into the model cache."""
    if not init_from:
        return None
    from labse_core.mlflow_model import resolve_model_source

    return str(resolve_model_source(init_from, layout.model_cache).folder)


@flow(name="labse-finetune", log_prints=True)
def finetune_flow(config: FinetuneConfig = finetune.tiny_cpu(max_steps=300, time_budget_s=180),  # noqa: B008
                  init_from: str | None = None, cache: bool = True) -> StageSummary:
    """Dual-encoder fine-tuning on the pair shards, warm-started from ``init_from`` (a folder or
    ``models:/labse@champion``; one training run at a time per home)."""
    layout, run = _parent("labse-finetune")
    with run:
        init = resolve_init(init_from, layout)
        (s, _), cached = _one(finetune_stage, "finetune", config,
                              _stage_inputs(layout, *_SHARDS, sc.VOCAB, *([sc.folder(init)] if init else []), init_from=init),
                              lambda r: [sc.folder(r[0].path)], config, run.info.run_id, init, cache=cache)
        _summary("labse-finetune", [s], cached, run.info.run_id)
    return s


def _model_inputs(layout: Layout, model_dir: str, fraction: float) -> dict[str, Any]:
    return _stage_inputs(layout, sc.folder(model_dir), sc.dataset(CLEAN_PAIRS.name), model=model_dir, fraction=fraction)


@flow(name="labse-evaluate", log_prints=True)
def evaluate_flow(model: str = "models:/labse@champion",
                  config: EvaluateStageConfig = EvaluateStageConfig(),  # noqa: B008
                  held_out_fraction: float = 0.01, cache: bool = True) -> StageSummary:
    """Tatoeba + BUCC-style evaluation of a model folder or registered model (results -> eval_results, with the
    registry version when ``model`` is a ``models:/`` URI; the cache key uses the folder it resolves to)."""
    layout, run = _parent("labse-evaluate")
    with run:
        model_dir = resolve_init(model, layout)
        s, cached = _one(evaluate_stage, "evaluate", config,
                         _model_inputs(layout, model_dir, held_out_fraction) | {"tatoeba": sc.files_signature([config.tatoeba_data])},
                         lambda r: [], model, config, run.info.run_id, held_out_fraction, cache=cache)
        _summary("labse-evaluate", [s], cached, run.info.run_id)
    return s


@flow(name="labse-mine", log_prints=True)
def mine_flow(model: str = "models:/labse@champion", config: MineStageConfig = MineStageConfig(),  # noqa: B008
              held_out_fraction: float = 0.01, threshold: float | None = None, cache: bool = True) -> StageSummary:
    """Mine a BUCC-style set of held-out pairs with a model (-> the mined dataset), scored against the gold."""
    layout, run = _parent("labse-mine")
    with run:
        model_dir = resolve_init(model, layout)
        s, cached = _one(mine_stage, "mine", config, _model_inputs(layout, model_dir, held_out_fraction) | {"threshold": threshold},
                         lambda r: [sc.dataset("mined")] if r.rows else [], model, config, run.info.run_id,
                         held_out_fraction, threshold, cache=cache)
        _summary("labse-mine", [s], cached, run.info.run_id)
    return s


def held_out_pairs(layout: Layout, cfg: FinetuneConfig) -> list[tuple[str, str]]:
    """The fine-tuning held-out pairs of the shards in the lake (the registry gate's secondary metric)."""
    from labse_core.data.shards import shard_files
    from labse_core.finetune.data import scan_pairs
    from storage.schemas import SHARD_PAIRS

    scan = scan_pairs(shard_files(layout.dataset_dir(SHARD_PAIRS.relpath)), cfg.eval_fraction, cfg.eval_max_pairs)
    return [(r["src_text"], r["tgt_text"]) for r in scan.eval_rows]


@flow(name="labse-register", log_prints=True)
def register_flow(model_dir: str, registered_model: str = "labse", tatoeba_langs: list[str] | None = None,
                  preset: str = "manual", cache: bool = True) -> StageSummary:
    """Register a model folder as a new version; ``@champion`` moves only when it beats the holder (Tatoeba
    over ``tatoeba_langs`` when given, else held-out pair accuracy on the lake's shards)."""
    from flows.evaluate import default_tatoeba_dir

    layout, run = _parent("labse-register")
    with run:
        pairs = held_out_pairs(layout, finetune.tiny_cpu())
        evaluation: dict[str, Any] = {"tatoeba_langs": tatoeba_langs, "tatoeba_mean": None} if tatoeba_langs else {}
        with mlflow.start_run(run_name="register", nested=True) as child:  # the run the model is logged into
            mlflow.log_param("model_dir", model_dir)
        s, cached = _one(register_stage, "register", {"name": registered_model, "preset": preset},
                         _model_inputs(layout, model_dir, 0.01) | {"langs": tatoeba_langs, "pairs": len(pairs)},
                         lambda r: [], model_dir, child.info.run_id, pairs, registered_model, evaluation,
                         default_tatoeba_dir(), None, preset, run.info.run_id, cache=cache)
        _summary("labse-register", [s], cached, run.info.run_id)
    return s


# ---------------------------------------------------------------------------------------------------
# scheduled-retrain


class RetrainConfig(BaseModel):
    """Parameters of ``scheduled-retrain`` (a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inbox: Path | None = Field(None, description="Folder of new corpus files (None: LABSE_HOME/inbox); each file is "
                                                 "moved to inbox/processed/ once it is in corpus_clean.")
    langs: tuple[str, str] | None = Field(None, description="(src, tgt) languages of TSV/Moses inbox files (None: "
                                                            "detected from the files).")
    prepare: PrepareConfig = Field(
        default_factory=lambda: PrepareConfig(from_raw_corpus=False, mode="append"),
        description="Incremental prepare of the inbox files (mode append: deduped against and added to corpus_clean).")
    shard: ShardConfig = Field(default_factory=ShardConfig, description="Re-shard corpus_clean (the vocabulary is kept).")
    finetune: FinetuneConfig = Field(
        default_factory=lambda: finetune.tiny_cpu(max_steps=300, warmup_steps=10, eval_every=100, time_budget_s=180),
        description="Fine-tuning, warm-started from the champion (its init_from is set by the flow).")
    evaluate: EvaluateStageConfig = Field(default_factory=EvaluateStageConfig,
                                          description="Evaluation of the new model (the gate's primary metric).")
    registered_model: str = Field("labse", description="Registered model whose @champion is warm-started from and gated.")
    alias: str = Field("champion", description="The alias the new version must win.")


def _drop_returned_failure_traceback(record: logging.LogRecord) -> bool:
    """Prefect's engine logs a traceback into its own internals ("Engine execution exited with unexpected
    exception", ``FailedRun``) after a flow *returns* a Failed state; that failure is already said in one line
    (the state's message). Tracebacks of exceptions a flow raises are kept."""
    from prefect.exceptions import FailedRun

    return not (record.exc_info and isinstance(record.exc_info[1], FailedRun))


def _retrain_failed(reason: str):
    """A scheduled-retrain run that cannot start: one error line in its log, the reason as its Prefect state
    message and on its MLflow run (FAILED), no traceback and no retry (the next scheduled run checks again)."""
    from prefect.states import Failed

    logging.getLogger("prefect.flow_runs").addFilter(_drop_returned_failure_traceback)
    get_run_logger().error("scheduled-retrain: %s", reason)
    mlflow.set_tag("retrain.failed_reason", reason)
    mlflow.end_run(status="FAILED")
    return Failed(message=f"scheduled-retrain: {reason}")


@flow(name="scheduled-retrain", log_prints=True)
def retrain_flow(config: RetrainConfig = RetrainConfig()) -> dict[str, Any]:  # noqa: B008
    """Incremental prepare of new data, fine-tune from the champion, evaluate, promote only if better."""
    from labse_core.prepare import InputSpec

    logger = get_run_logger()
    t0 = time.perf_counter()
    layout, run = _parent("scheduled-retrain")
    pid = run.info.run_id
    stages: list[StageSummary] = []
    cached: list[str] = []
    with run:
        champion_uri = f"models:/{config.registered_model}@{config.alias}"
        inbox = config.inbox or inbox_dir(layout)
        files = sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")) if inbox.is_dir() else []
        try:
            init = resolve_init(champion_uri, layout)
        except ValueError as e:
            return _retrain_failed(f"nothing to warm-start from: {e}; make a champion first (labse demo, or labse "
                                   f"pipeline with registered_model={config.registered_model!r})")
        if not files and not layout.dataset_dir(CLEAN_PAIRS.relpath).is_dir():
            return _retrain_failed(f"nothing to train on: no corpus_clean in {layout.lake} and no file in {inbox}")
        if files:
            prep = config.prepare.model_copy(update={"inputs": [InputSpec(path=p, langs=config.langs) for p in files],
                                                     "mode": "append"})
            out, c = _one(prepare_stage, "prepare", prep, _prepare_inputs(layout, prep),
                          lambda r: [sc.dataset(CLEAN_PAIRS.name), sc.dataset(REJECTS.name)], prep, pid)
            stages += out
            cached += c
            done = inbox / "processed" / str(flow_run.get_id() or pid)
            done.mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.move(str(p), done / p.name)
            logger.info("prepared %d inbox file(s) into corpus_clean; moved to %s", len(files), done)
        shard_cfg = held_out_for(config.shard, config.finetune)
        out, c = _one(shard_stage, "shard", shard_cfg, _stage_inputs(layout, sc.dataset(CLEAN_PAIRS.name), sc.VOCAB),
                      lambda r: list(_SHARDS), shard_cfg, pid)
        stages += out
        cached += c
        (fine, eval_pairs), c = _one(finetune_stage, "finetune", config.finetune,
                                     _stage_inputs(layout, *_SHARDS, sc.VOCAB, sc.folder(init), init_from=init),
                                     lambda r: [sc.folder(r[0].path)], config.finetune, pid, init)
        stages.append(fine)
        cached += c
        fraction = config.finetune.eval_fraction
        ev, c = _one(evaluate_stage, "evaluate", config.evaluate,
                     _model_inputs(layout, fine.path, fraction) | {"tatoeba": sc.files_signature([config.evaluate.tatoeba_data])},
                     lambda r: [], fine.path, config.evaluate, pid, fraction)
        stages.append(ev)
        cached += c
        reg, c = _one(register_stage, "register", {"name": config.registered_model, "preset": "scheduled-retrain"},
                      _model_inputs(layout, fine.path, fraction) | {"evaluation": {k: v for k, v in ev.stats.items()
                                                                                  if not k.endswith("run_id")}},
                      lambda r: [], fine.path, fine.mlflow_run_id, eval_pairs, config.registered_model, ev.stats,
                      config.evaluate.tatoeba_data, None, "scheduled-retrain", pid)
        stages.append(reg)
        cached += c
        st = reg.stats
        outcome = {"warm_start": champion_uri, "champion_version_before": st.get("champion_version"),
                   "new_version": st.get("registered_version"), "promoted": st.get("promoted"),
                   "reason": st.get("reason"), "primary_name": st.get("primary_name"), "primary": st.get("primary"),
                   "champion_primary": st.get("champion_primary"), "inbox_files": [p.name for p in files],
                   "seconds": time.perf_counter() - t0, "mlflow_run_id": pid, "cached": cached}
        mlflow.set_tags({"retrain.promoted": str(bool(st.get("promoted"))).lower(), "retrain.reason": str(st.get("reason")),
                         "retrain.new_version": str(st.get("registered_version"))})
        if not st.get("promoted") and st.get("registered_version") and "register" not in cached:
            why = (f"not promoted: {st.get('reason')} ({st.get('primary_name')} {num(st.get('primary'), '.4f')} vs "
                   f"{config.alias} version {st.get('champion_version')} {num(st.get('champion_primary'), '.4f')})")
            mlflow.MlflowClient().set_model_version_tag(config.registered_model, str(st["registered_version"]),
                                                        "not_promoted_reason", why)
            mlflow.set_tag("retrain.not_promoted_reason", why)
            logger.info("scheduled-retrain: %s", why)
        _summary("scheduled-retrain", stages, cached, pid,
                 [f"- warm start: `{champion_uri}` (version {st.get('champion_version')})",
                  f"- new version {st.get('registered_version')}: "
                  + ("**promoted**" if st.get("promoted") else f"not promoted ({st.get('reason')})")])
    return outcome


STAGE_FLOWS = {"labse-ingest": ingest_flow, "labse-prepare": prepare_flow, "labse-vocab": vocab_flow,
               "labse-shard": shard_flow, "labse-pretrain": pretrain_flow, "labse-finetune": finetune_flow,
               "labse-evaluate": evaluate_flow, "labse-mine": mine_flow, "labse-register": register_flow}
"""Deployment name -> flow, one per stage (``labse serve``)."""
