"""One Prefect flow per stage, and ``scheduled-retrain``: what ``labse serve`` deploys.

Each stage flow runs its stage's record (``flows.stages``) as ``labse-pipeline`` does: the same task and
the same cache key (a stage whose config, inputs and code are unchanged is skipped, in a stage flow as in
the pipeline), under its own parent MLflow run. Parameters are pydantic models: the Prefect UI renders
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
from flows import stages
from flows.nmt_check import NmtCheckConfig
from flows.presets import EvaluateStageConfig, MineStageConfig, RegisterStageConfig, demo
from flows.reporting import mlflow_run_link, publish_markdown
from flows.stages import Stage, held_out_for, resolve_init
from flows.tasks import StageSummary
from labse_core.finetune import config as finetune
from labse_core.finetune.config import FinetuneConfig
from labse_core.logfmt import num
from labse_core.pretrain import config as pretrain_presets
from labse_core.pretrain.config import PretrainConfig
from storage import tracking
from storage.layout import Layout
from storage.schemas import CLEAN_PAIRS

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


def _summary(name: str, summaries: list[StageSummary], cached: list[str], run_id: str, extra: list[str] = ()) -> None:
    """The run's Prefect artifacts: a markdown summary with the MLflow run link, and a table of its stages."""
    table = [{"stage": s.stage, "dataset": s.dataset, "rows": s.rows, "seconds": round(s.seconds, 1),
              "cached": s.stage in cached, "path": s.path} for s in summaries]
    publish_markdown(name, [f"### {name}", "| stage | dataset | rows | seconds | cached |", "|---|---|---:|---:|---|",
                            *[f"| {s.stage} | {s.dataset} | {s.rows:,} | {s.seconds:.1f} | "
                              f"{'yes' if s.stage in cached else ''} |" for s in summaries],
                            f"- MLflow run: {mlflow_run_link(run_id)}", *extra], table=table)


def _one(stage: Stage, cfg: Any, parent_run_id: str, cache: bool = True, **args: Any) -> tuple[Any, list[str]]:
    """Run one stage through its record: (result, [its name] when it came from the cache)."""
    result, cached = stage.run(cfg, parent_run_id, use_cache=cache, **args)
    return result, [stage.name] if cached else []


def _stage_flow(name: str, stage: Stage, cfg: Any, cache: bool, **args: Any) -> Any:
    """A stage flow's body: the stage under the flow's own parent MLflow run, then its summary artifacts."""
    _, run = _parent(name)
    with run:
        result, cached = _one(stage, cfg, run.info.run_id, cache, **args)
        _summary(name, result if isinstance(result, list) else [result], cached, run.info.run_id)
    return result


@flow(name="labse-ingest", log_prints=True)
def ingest_flow(config: GettextIngestConfig = GettextIngestConfig(), cache: bool = True) -> StageSummary:  # noqa: B008
    """gettext catalogs -> corpus_raw."""
    return _stage_flow("labse-ingest", stages.INGEST, config, cache)


@flow(name="labse-prepare", log_prints=True)
def prepare_flow(config: PrepareConfig = PrepareConfig(), cache: bool = True) -> list[StageSummary]:  # noqa: B008
    """corpus_raw and corpus files -> corpus_clean + corpus_rejects."""
    return _stage_flow("labse-prepare", stages.PREPARE, config, cache)


@flow(name="labse-vocab", log_prints=True)
def vocab_flow(config: VocabStageConfig = VocabStageConfig(), cache: bool = True) -> StageSummary:  # noqa: B008
    """corpus_clean -> sentencepiece + Hugging Face tokenizer."""
    return _stage_flow("labse-vocab", stages.VOCAB, config, cache)


@flow(name="labse-shard", log_prints=True)
def shard_flow(config: ShardConfig = ShardConfig(), cache: bool = True) -> list[StageSummary]:  # noqa: B008
    """corpus_clean + vocabulary -> pair/TLM/MLM shards."""
    return _stage_flow("labse-shard", stages.SHARD, config, cache)


@flow(name="labse-pretrain", log_prints=True)
def pretrain_flow(config: PretrainConfig = pretrain_presets.tiny_cpu(time_budget_s=180),  # noqa: B008
                  cache: bool = True) -> StageSummary:
    """MLM + TLM pretraining on the shards (one training run at a time per home)."""
    return _stage_flow("labse-pretrain", stages.PRETRAIN, config, cache)


@flow(name="labse-finetune", log_prints=True)
def finetune_flow(config: FinetuneConfig = finetune.tiny_cpu(max_steps=300, time_budget_s=180),  # noqa: B008
                  init_from: str | None = None, cache: bool = True) -> StageSummary:
    """Dual-encoder fine-tuning on the pair shards, warm-started from ``init_from`` (a folder or
    ``models:/labse@champion``; one training run at a time per home)."""
    layout, run = _parent("labse-finetune")
    with run:
        (s, _), cached = _one(stages.FINETUNE, config, run.info.run_id, cache, init_from=resolve_init(init_from, layout))
        _summary("labse-finetune", [s], cached, run.info.run_id)
    return s


@flow(name="labse-evaluate", log_prints=True)
def evaluate_flow(model: str = "models:/labse@champion",
                  config: EvaluateStageConfig = EvaluateStageConfig(),  # noqa: B008
                  held_out_fraction: float = 0.01, cache: bool = True) -> StageSummary:
    """Tatoeba + BUCC-style evaluation of a model folder or registered model (results -> eval_results, with the
    registry version when ``model`` is a ``models:/`` URI; the cache key uses the folder it resolves to)."""
    return _stage_flow("labse-evaluate", stages.EVALUATE, config, cache, model_dir=model,
                       held_out_fraction=held_out_fraction)


@flow(name="labse-mine", log_prints=True)
def mine_flow(model: str = "models:/labse@champion", config: MineStageConfig = MineStageConfig(),  # noqa: B008
              held_out_fraction: float = 0.01, threshold: float | None = None, cache: bool = True) -> StageSummary:
    """Mine a BUCC-style set of held-out pairs with a model (-> the mined dataset), scored against the gold."""
    return _stage_flow("labse-mine", stages.MINE, config, cache, model_dir=model, held_out_fraction=held_out_fraction,
                       threshold=threshold)


@flow(name="labse-nmt-check", log_prints=True)
def nmt_check_flow(config: NmtCheckConfig = NmtCheckConfig()) -> dict[str, Any]:  # noqa: B008
    """Train a small translation model on mined, gold and unfiltered man-page pairs (same size, budget, seed)
    and compare chrF/BLEU on held-out gold pairs (-> eval_results nmt-<arm>, MLflow, a plot artifact)."""
    from flows.nmt_check import run_nmt_check

    report = run_nmt_check(config.model_copy(update={"prefect_artifacts": True}))
    return {k: report.summary[k] for k in ("run_id", "pair", "train_pairs", "mined_over_gold_chrf",
                                           "mined_minus_unfiltered_chrf")} | {
        "chrf": {arm: r["chrf"] for arm, r in report.summary["arms"].items()}}


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
    over ``tatoeba_langs`` when given, else held-out pair accuracy on the lake's shards, held out as the
    tiny_cpu fine-tuning preset holds them out)."""
    layout, run = _parent("labse-register")
    with run:
        pairs = held_out_pairs(layout, finetune.tiny_cpu())
        evaluation: dict[str, Any] = {"tatoeba_langs": tatoeba_langs} if tatoeba_langs else {}
        with mlflow.start_run(run_name="register", nested=True) as child:  # the run the model is logged into
            mlflow.log_param("model_dir", model_dir)
        s, cached = _one(stages.REGISTER, RegisterStageConfig(name=registered_model, preset=preset), run.info.run_id,
                         cache, model_dir=model_dir, finetune_run_id=child.info.run_id, eval_pairs=pairs,
                         evaluation=evaluation)
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
    shard: ShardConfig = Field(default_factory=lambda: demo().shard,
                               description="Re-shard corpus_clean (the vocabulary is kept); default: the demo's.")
    finetune: FinetuneConfig = Field(
        default_factory=lambda: demo().finetune,
        description="Fine-tuning, warm-started from the champion (its init_from is set by the flow); default: the "
                    "demo's recipe for its imported multilingual-e5-small (a champion from the scratch preset wants "
                    "tiny_cpu's).")
    evaluate: EvaluateStageConfig = Field(
        default_factory=lambda: EvaluateStageConfig(tatoeba_langs="all", tatoeba_sample=300),
        description="Evaluation of the new model (the gate's primary metric: as the demo's, the all-112 mean "
                    "on the fixed 300-pair sample).")
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
    summaries: list[StageSummary] = []
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
            out, c = _one(stages.PREPARE, prep, pid)
            summaries += out
            cached += c
            done = inbox / "processed" / str(flow_run.get_id() or pid)
            done.mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.move(str(p), done / p.name)
            logger.info("prepared %d inbox file(s) into corpus_clean; moved to %s", len(files), done)
        out, c = _one(stages.SHARD, held_out_for(config.shard, config.finetune), pid)
        summaries += out
        cached += c
        (fine, eval_pairs), c = _one(stages.FINETUNE, config.finetune, pid, init_from=init)
        summaries.append(fine)
        cached += c
        ev, c = _one(stages.EVALUATE, config.evaluate, pid, model_dir=fine.path,
                     held_out_fraction=config.finetune.eval_fraction)
        summaries.append(ev)
        cached += c
        reg, c = _one(stages.REGISTER, RegisterStageConfig(name=config.registered_model, preset="scheduled-retrain",
                                                           tatoeba_data=config.evaluate.tatoeba_data),
                      pid, model_dir=fine.path, finetune_run_id=fine.mlflow_run_id, eval_pairs=eval_pairs,
                      evaluation=ev.stats)
        summaries.append(reg)
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
        _summary("scheduled-retrain", summaries, cached, pid,
                 [f"- warm start: `{champion_uri}` (version {st.get('champion_version')})",
                  f"- new version {st.get('registered_version')}: "
                  + ("**promoted**" if st.get("promoted") else f"not promoted ({st.get('reason')})")])
    return outcome


STAGE_FLOWS = {"labse-ingest": ingest_flow, "labse-prepare": prepare_flow, "labse-vocab": vocab_flow,
               "labse-shard": shard_flow, "labse-pretrain": pretrain_flow, "labse-finetune": finetune_flow,
               "labse-evaluate": evaluate_flow, "labse-mine": mine_flow, "labse-register": register_flow,
               "labse-nmt-check": nmt_check_flow}
"""Deployment name -> flow, one per stage (``labse serve``)."""
