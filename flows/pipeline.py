"""The end-to-end Prefect flow ``labse-pipeline``.

Stages that exist today: ``ingest`` (gettext catalogs -> ``corpus_raw``), ``prepare``
(``corpus_raw`` -> ``corpus_clean`` + ``corpus_rejects``), ``vocab`` (sentencepiece + HF tokenizer)
``shard`` (pair/TLM/MLM shards + TFRecord), ``pretrain`` (MLM + TLM, time-budgeted) and ``finetune``
(dual encoder with the additive margin softmax, warm-started from ``pretrain``, time-budgeted; its best
model is registered in the MLflow model registry as a new version of ``labse`` and becomes
``models:/labse@champion`` when it retrieves the held-out pairs at least as well as the current
champion). Each stage is a Prefect task that calls the stage's ``run(config)``, logs a child MLflow run
under the pipeline's parent run, refreshes the DuckDB catalog and publishes Prefect artifacts.

Run it::

    labse demo                       # preset "demo", embedded Prefect + MLflow under LABSE_HOME
    labse pipeline --preset full     # every named preset: see PRESETS
    python -m flows.pipeline         # same as `labse demo`

With ``PREFECT_API_URL`` set, runs are recorded by that Prefect server instead of the ephemeral one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs import gettext_ingest, prepare, shard, vocab
from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows.reporting import plot_partition_rows, plot_training, publish_markdown, publish_prefect_artifacts
from labse_core.finetune import train as finetune
from labse_core.finetune.train import FinetuneConfig
from labse_core.pretrain import train as pretrain
from labse_core.pretrain import train as pretrain_presets
from labse_core.pretrain.train import PretrainConfig
from labse_core.vocab import VocabConfig, vocab_size_of
from storage import catalog, tracking
from storage.layout import Layout
from storage.manifest import MANIFEST_NAME
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM


class PipelineConfig(BaseModel):
    """Parameters of ``labse-pipeline`` (a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("demo", description="Name of the preset these settings came from (for the record).")
    ingest: GettextIngestConfig = Field(default_factory=GettextIngestConfig, description="gettext ingest stage.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig, description="normalize/filter/dedupe stage.")
    vocab: VocabStageConfig = Field(default_factory=VocabStageConfig, description="sentencepiece vocabulary stage.")
    shard: ShardConfig = Field(default_factory=ShardConfig, description="tokenized shards stage.")
    pretrain: PretrainConfig | None = Field(
        default_factory=lambda: pretrain_presets.tiny_cpu(time_budget_s=180),
        description="MLM+TLM pretraining (None skips it); the demo gives it a 3-minute budget.",
    )
    finetune: FinetuneConfig | None = Field(
        default_factory=lambda: finetune.tiny_cpu(
            max_steps=3000, warmup_steps=100, eval_every=250, checkpoint_every=500, time_budget_s=180
        ),
        description="Dual-encoder fine-tuning (None skips it), warm-started from pretrain's final/ when that "
        "ran; the demo gives it a 3-minute budget.",
    )
    registered_model: str | None = Field(
        "labse", description="MLflow registered model for the fine-tuned encoder (None: do not register)."
    )
    time_budget_minutes: float = Field(
        20.0, gt=0, description="Wall-clock budget for the whole run; training stages size themselves to fit."
    )


# 30 languages in 14 scripts: what the demo carries past ingest (which reads all ~160).
DEMO_LANGUAGES = [
    "de", "fr", "es", "it", "pt", "nl", "pl", "cs", "sv", "fi", "hu", "tr", "vi", "id", "ro",
    "ru", "uk", "bg", "el", "ar", "fa", "he", "hi", "bn", "ta", "th", "ka", "ja", "zh", "ko",
]


def demo() -> PipelineConfig:
    """The default: ingest every gettext catalog of this machine (~1.8 M pairs, 160 languages), then
    prepare, vocabulary and shards for 30 languages in 14 scripts; fits the 20-minute budget on 2 cores."""
    return PipelineConfig(
        preset="demo",
        prepare=PrepareConfig(raw_languages=DEMO_LANGUAGES),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=8000, sample_size=200_000)),
        shard=ShardConfig(max_len=64),
    )


def full() -> PipelineConfig:
    """Every language through every stage (~1.8 M raw pairs; about 30 min of data stages on 2 cores)."""
    return PipelineConfig(preset="full", vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=32000)),
                          time_budget_minutes=120)


def smoke() -> PipelineConfig:
    """A few languages and catalogs: the fastest run that exercises every stage (tests, first look)."""
    langs = ["de", "ru", "ja", "ar", "hi"]
    return PipelineConfig(
        preset="smoke",
        ingest=GettextIngestConfig(languages=langs, domains=["coreutils", "glib20", "gtk30", "iso_3166-1"]),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=3000, sample_size=20_000)),
        pretrain=pretrain_presets.tiny_cpu(max_steps=30, warmup_steps=5),
        finetune=finetune.tiny_cpu(max_steps=40, warmup_steps=5, eval_every=20),
        time_budget_minutes=5,
    )


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"demo": demo, "smoke": smoke, "full": full}


def preset(name: str) -> PipelineConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


class StageSummary(BaseModel):
    stage: str
    dataset: str
    rows: int
    partitions: int
    files: int
    seconds: float
    path: str
    mlflow_run_id: str
    stats: dict[str, Any] = Field(default_factory=dict)


class PipelineSummary(BaseModel):
    preset: str
    home: str
    mlflow_run_id: str
    prefect_flow_run_id: str | None
    seconds: float
    stages: list[StageSummary]
    views: list[str]


def _flat_params(prefix: str, obj: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= _flat_params(f"{prefix}.{k}" if prefix else k, v)
    else:
        out[prefix] = str(obj)[:500]
    return out


def _log_dataset(stage: str, layout: Layout, spec, manifest, run_id: str, plot_title: str) -> Path:
    """Manifest + rows-per-partition plot to MLflow, catalog refresh, Prefect artifacts."""
    dataset_dir = layout.dataset_dir(spec.relpath)
    mlflow.log_artifact(str(dataset_dir / MANIFEST_NAME), artifact_path=f"{stage}/{spec.name}")
    plot = plot_partition_rows(manifest, layout.run_dir(run_id) / f"{spec.name}.png", plot_title)
    mlflow.log_artifact(str(plot), artifact_path=stage)
    publish_prefect_artifacts(f"{stage}-{spec.name}", manifest, plot, run_id)
    return dataset_dir


@task(name="ingest-gettext", task_run_name="ingest-gettext")
def ingest_stage(cfg: GettextIngestConfig, parent_run_id: str) -> StageSummary:
    logger = get_run_logger()
    layout = Layout.from_env()
    with mlflow.start_run(run_name="ingest", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(_flat_params("ingest", cfg.model_dump(mode="json")))
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


@task(name="prepare-corpus", task_run_name="prepare-corpus")
def prepare_stage(cfg: PrepareConfig, parent_run_id: str) -> list[StageSummary]:
    logger = get_run_logger()
    layout = Layout.from_env()
    with mlflow.start_run(run_name="prepare", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(_flat_params("prepare", cfg.model_dump(mode="json")))
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


@task(name="build-vocab", task_run_name="build-vocab")
def vocab_stage(cfg: VocabStageConfig, parent_run_id: str) -> StageSummary:
    layout = Layout.from_env()
    with mlflow.start_run(run_name="vocab", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(_flat_params("vocab", cfg.model_dump(mode="json")))
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


@task(name="shard", task_run_name="shard")
def shard_stage(cfg: ShardConfig, parent_run_id: str) -> list[StageSummary]:
    layout = Layout.from_env()
    with mlflow.start_run(run_name="shard", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params(_flat_params("shard", cfg.model_dump(mode="json")))
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


@task(name="pretrain", task_run_name="pretrain")
def pretrain_stage(cfg: PretrainConfig, parent_run_id: str) -> StageSummary:
    """MLM + TLM pretraining on the shards, sized to the vocabulary in the lake, within its time budget."""
    layout = Layout.from_env()
    cfg = cfg.model_copy(update={"vocab_size": vocab_size_of(layout.vocab), "mlflow_parent_run_id": parent_run_id, "resume": False})
    t0 = time.perf_counter()
    result = pretrain.run(cfg, layout)
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
                               "stopped_by": result.stopped_by})


@task(name="finetune", task_run_name="finetune")
def finetune_stage(
    cfg: FinetuneConfig, parent_run_id: str, init_from: str | None, registered_model: str | None
) -> StageSummary:
    """Dual-encoder fine-tuning on the pair shards (warm start from ``init_from``), within its time
    budget; the best checkpoint is logged as an MLflow pyfunc model and registered (module docstring)."""
    from labse_core.mlflow_model import register_and_promote

    logger = get_run_logger()
    layout = Layout.from_env()
    update: dict[str, Any] = {"vocab_size": vocab_size_of(layout.vocab), "mlflow_parent_run_id": parent_run_id, "resume": False,
                              "mlflow": True}
    if init_from is not None:
        update["init_from"] = init_from
    cfg = cfg.model_copy(update=update)
    t0 = time.perf_counter()
    result = finetune.run(FinetuneConfig(**cfg.model_dump()), layout)
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {"steps": result.step, "stopped_by": result.stopped_by, "pairs_per_s": result.pairs_per_s,
                             "best_accuracy": result.best_accuracy, "best_step": result.best_step,
                             "init_from": cfg.init_from, "held_out_pairs": len(result.eval_pairs)}
    plot = plot_training(result.losses, layout.run_dir(result.mlflow_run_id or "finetune") / "finetune.png",
                         "additive margin softmax loss", start_step=result.start_step, evals=result.evals)
    with mlflow.start_run(run_id=result.mlflow_run_id, nested=True):
        mlflow.log_artifact(str(plot), artifact_path="plots")
        if registered_model and result.best_dir is not None and result.eval_pairs:
            promo = register_and_promote(result.best_dir, result.eval_pairs, name=registered_model)
            stats |= {"registered_version": promo.version, "promoted": promo.promoted,
                      "champion_accuracy": promo.champion_accuracy}
            mlflow.set_tags({"registered_model": registered_model, "registered_version": promo.version,
                             "champion": str(promo.promoted).lower()})
    verdict = ""
    if "registered_version" in stats:
        verdict = (f"- registered `{registered_model}` version {stats['registered_version']}: "
                   + (f"**now `models:/{registered_model}@champion`**" if stats["promoted"]
                      else f"@challenger (champion scored {stats['champion_accuracy']:.3f} on these pairs)"))
    publish_markdown("finetune", [
        f"### finetune: {result.step} steps ({result.stopped_by}), {result.pairs_per_s:.0f} pairs/s",
        f"- held-out retrieval accuracy: best **{result.best_accuracy:.3f}** at step {result.best_step} "
        f"over {len(result.eval_pairs)} pairs (chance {1 / max(len(result.eval_pairs), 1):.4f})"
        if result.best_accuracy is not None else "",
        f"- init: `{cfg.init_from or 'random'}`", verdict, f"- MLflow run: `{result.mlflow_run_id}`"], plot)
    logger.info("finetune: %d steps (%s), best held-out accuracy %s at step %s; %s", result.step, result.stopped_by,
                result.best_accuracy, result.best_step, verdict.lstrip("- "))
    return StageSummary(stage="finetune", dataset="encoder", rows=result.step, partitions=0, files=0, seconds=seconds,
                        path=str(result.best_dir), mlflow_run_id=result.mlflow_run_id or "", stats=stats)


@flow(name="labse-pipeline", log_prints=True)
def labse_pipeline(config: PipelineConfig | None = None) -> PipelineSummary:
    """Raw corpora in; corpus, vocabulary, encoder, evaluation and mined bitext out (stages as they land)."""
    config = config or demo()
    t0 = time.perf_counter()
    layout = Layout.from_env().ensure()
    tracking.configure(layout)
    with mlflow.start_run(run_name=f"labse-pipeline-{config.preset}") as parent:
        mlflow.set_tags({"pipeline": "labse-pipeline", "preset": config.preset,
                         "prefect_flow_run_id": str(flow_run.get_id())})
        mlflow.log_params(_flat_params("", config.model_dump(mode="json")))
        stages = [ingest_stage(config.ingest, parent.info.run_id)]
        stages += prepare_stage(config.prepare, parent.info.run_id)
        stages.append(vocab_stage(config.vocab, parent.info.run_id))
        stages += shard_stage(config.shard, parent.info.run_id)
        init_from = None
        if config.pretrain is not None:
            stages.append(pretrain_stage(config.pretrain, parent.info.run_id))
            init_from = stages[-1].path
        if config.finetune is not None:
            stages.append(finetune_stage(config.finetune, parent.info.run_id, init_from, config.registered_model))
        seconds = time.perf_counter() - t0
        mlflow.log_metric("pipeline_seconds", seconds)
        if seconds > config.time_budget_minutes * 60:
            get_run_logger().warning("run took %.0fs, over its %.0f min budget", seconds, config.time_budget_minutes)
    return PipelineSummary(
        preset=config.preset, home=str(layout.home), mlflow_run_id=parent.info.run_id,
        prefect_flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None, seconds=seconds,
        stages=stages, views=catalog.refresh(layout),
    )


if __name__ == "__main__":
    from flows.env import bootstrap

    bootstrap()
    print(labse_pipeline(demo()).model_dump_json(indent=2))
