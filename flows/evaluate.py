"""Evaluation and mining runs with their records: the shell that `labse evaluate ...`, `labse mine` and the
pipeline's ``evaluate``/``mine`` stages share.

Each run resolves the model (a folder, or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` downloaded
from the registry into ``LABSE_HOME/cache/models``), calls the pure core in ``labse_core.evaluation`` /
``labse_core.mining``, and records the outcome everywhere people look:

- rows appended to the ``eval_results`` dataset (or ``mined``) with the model URI and version and the run id,
- a JSON summary and a bar chart under ``LABSE_HOME/runs/<run id>/``,
- an MLflow run (metrics, ``mlflow.log_table``, the JSON and the PNG as artifacts), nested under the
  pipeline's parent run when there is one,
- Prefect table + markdown artifacts when called inside a flow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flows.reporting import _pyplot, _save, publish_markdown
from labse_core.evaluation import tatoeba as tat
from labse_core.evaluation.results import publish_rows, trained_languages
from labse_core.mining.calibrate import ThresholdChoice
from labse_core.mining.miner import MineConfig
from labse_core.mlflow_model import ModelSource, resolve_model_source
from storage import catalog, tracking
from storage.io import write_json_atomic
from storage.layout import Layout, default_tatoeba_dir

log = logging.getLogger(__name__)


class TatoebaEvalConfig(BaseModel):
    """``labse evaluate tatoeba`` / the pipeline's evaluate stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="Exported model folder, or models:/NAME@ALIAS, models:/NAME/VERSION.")
    data: Path = Field(default_factory=default_tatoeba_dir, description="Tatoeba v1 folder (tatoeba.xxx-eng.*).")
    langs: list[str] | None = Field(None, description="Languages to evaluate (file codes or any spelling); None: all.")
    trained_langs: list[str] | None = Field(
        None, description="Languages the model was trained on (default: its model card, else the lake's corpus)."
    )
    batch_size: int = Field(64, ge=1, description="Sentences per encoder batch.")
    sample: int | None = Field(None, ge=2, description="Evaluate the fixed sample of this many pairs per language "
                                                       "(the registry gate's: 300); None: every pair.")
    precision: str = Field("auto", description="Encoding precision: fp32, bf16, or auto (bf16 where the hardware "
                                               "multiplies bf16, else fp32); the one used is recorded.")
    parent_run_id: str | None = Field(None, description="MLflow parent run (the pipeline's); None: a top-level run.")
    prefect_artifacts: bool = Field(False, description="Publish Prefect artifacts (inside a flow run).")


@dataclass
class EvalReport:
    """What one evaluation run produced."""

    run_id: str
    model: ModelSource
    metrics: dict[str, float]
    """Headline numbers (also logged to MLflow), e.g. ``tatoeba/xtreme36``."""
    summary: dict[str, Any]
    summary_path: Path
    plot_path: Path | None
    rows: int
    """Rows appended to ``eval_results``."""
    result: Any = None
    """The evaluator's own result object."""


@dataclass
class Embedder:
    """Sentences -> unit embeddings through ``labse_core.embed`` (the folder's pooling and input prefix),
    the model loaded once for one precision; ``precision`` is what runs (``auto`` resolved), recorded
    with every result."""

    model: Any
    """labse_core.embed.InferenceModel"""
    batch_size: int

    @property
    def precision(self) -> str:
        return self.model.precision

    def __call__(self, texts: list[str]) -> np.ndarray:
        from labse_core.embed import encode

        return encode(texts, self.model, batch_size=self.batch_size, progress=False)


def embedder(folder: Path, batch_size: int = 64, precision: str = "fp32") -> Embedder:
    """An ``Embedder`` for ``folder`` in ``precision`` (fp32, bf16, int8 or auto); raises
    ``PrecisionError`` (one line) for a precision this machine or folder cannot run."""
    from labse_core.embed import load_for_inference

    model = load_for_inference(folder, precision)
    return Embedder(model, batch_size)


def resolve(model: str, layout: Layout) -> ModelSource:
    tracking.configure(layout)  # models:/ URIs resolve against this home's registry
    return resolve_model_source(model, layout.model_cache)


def plot_tatoeba(result: tat.TatoebaResult, path: Path, title: str) -> Path:
    """Accuracy (mean of both directions) per language, best first, XTREME languages in the darker
    colour, with the group means as vertical lines."""
    plt = _pyplot()
    scores = sorted(result.languages, key=lambda s: s.acc)
    xtreme = set(tat.XTREME_36)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.16 * len(scores) + 1.2)))
    ax.barh([s.code for s in scores], [s.acc for s in scores],
            color=["#3b6ea5" if s.code in xtreme else "#9bb7d4" for s in scores])
    for g, style in zip(result.groups, ("--", ":", "-.", "-", (0, (1, 3)), (0, (5, 1))), strict=False):
        ax.axvline(g.acc, color="#c0504d", linestyle=style, linewidth=1,
                   label=f"{g.label}: {g.acc:.3f}")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("retrieval accuracy (mean of xx->en and en->xx); dark: XTREME-36")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=7, loc="lower right")
    out = _save(fig, path)
    plt.close(fig)
    return out


def _start_run(name: str, parent_run_id: str | None, resume_run_id: str | None = None):
    """A new MLflow run, or ``resume_run_id`` reopened (an interrupted attempt of the same run) if it exists."""
    if resume_run_id and _live_run(resume_run_id):
        parent = {"nested": True, "parent_run_id": parent_run_id} if parent_run_id else {}
        return mlflow.start_run(run_id=resume_run_id, **parent)
    if parent_run_id:
        return mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id)
    return mlflow.start_run(run_name=name)


def _live_run(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.tracking.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _log_table(rows: list[dict], artifact_file: str) -> None:
    import pandas as pd

    mlflow.log_table(data=pd.DataFrame(rows), artifact_file=artifact_file)


def run_tatoeba(cfg: TatoebaEvalConfig, layout: Layout | None = None) -> EvalReport:
    """Evaluate ``cfg.model`` on Tatoeba and record it (module docstring)."""
    layout = (layout or Layout.from_env()).ensure()
    source = resolve(cfg.model, layout)
    trained, trained_from = (cfg.trained_langs, "given") if cfg.trained_langs else trained_languages(source.folder, layout)
    embed = embedder(source.folder, cfg.batch_size, cfg.precision)
    precision = embed.precision
    with _start_run("evaluate-tatoeba", cfg.parent_run_id) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"stage": "evaluate", "eval_set": tat.EVAL_SET, "model_uri": source.uri,
                         "model_version": str(source.version), "trained_langs_from": trained_from,
                         "precision": precision})
        mlflow.log_params({"data": str(cfg.data), "langs": ",".join(cfg.langs or []) or "all",
                           "batch_size": cfg.batch_size, "sample": cfg.sample or "all", "precision": precision})
        result = tat.evaluate_tatoeba(embed, cfg.data, cfg.langs, trained, cfg.sample)
        rows = tat.result_rows(result)
        publish_rows(layout, tat.EVAL_SET, rows, run_id=run_id, model_uri=source.uri, model_version=source.version,
                     producer={"model_folder": str(source.folder)}, precision=precision)
        # A partial group under its own name (tatoeba/all112-partial-14of112), never as tatoeba/all112.
        prefix = "tatoeba" if cfg.sample is None else f"tatoeba-{result.split}"
        metrics = {f"{prefix}/{g.metric_key}": g.acc for g in result.groups}
        metrics |= {f"{prefix}/{g.metric_key}/xx-en": g.acc_xx_en for g in result.groups}
        metrics |= {f"{prefix}/{g.metric_key}/en-xx": g.acc_en_xx for g in result.groups}
        mlflow.log_metrics(metrics)
        out_dir = layout.run_dir(run_id)
        summary = result.summary() | {"run_id": run_id, "model_uri": source.uri, "model_version": source.version,
                                      "model_folder": str(source.folder), "trained_langs": trained,
                                      "trained_langs_from": trained_from, "data": str(cfg.data),
                                      "precision": precision,
                                      "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        summary_path = out_dir / "tatoeba.json"
        write_json_atomic(summary_path, summary)
        plot = plot_tatoeba(result, out_dir / "tatoeba.png", f"Tatoeba v1: {source.uri}"
                            + (f" (v{source.version})" if source.version else ""))
        table = [{k: r[k] for k in ("scope", "language", "direction", "value", "n")} for r in rows]
        _log_table(table, "tatoeba_results.json")
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(plot))
    catalog.refresh(layout)
    if cfg.prefect_artifacts:
        lines = [f"### Tatoeba v1: `{source.uri}`" + (f" version {source.version}" if source.version else "")]
        lines += [f"- {g.label}: **{g.acc:.4f}** "
                  f"(xx->en {g.acc_xx_en:.4f}, en->xx {g.acc_en_xx:.4f})" for g in result.groups]
        publish_markdown("evaluate-tatoeba", lines + [f"- MLflow run: `{run_id}`"], plot,
                         [{"language": s.code, "n": s.n, "xx->en": round(s.acc_xx_en, 4), "en->xx": round(s.acc_en_xx, 4),
                           "both": round(s.acc, 4)} for s in result.languages])
    log.info("tatoeba: %s", json.dumps({k: round(v, 4) for k, v in metrics.items() if k.count("/") == 1}))
    return EvalReport(run_id, source, metrics, summary, summary_path, plot, len(rows), result)


# ---------------------------------------------------------------------------------------------------
# Mining


class MineRunConfig(BaseModel):
    """``labse mine`` / the pipeline's mine stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    src: str = Field(description="Source sentences: a text file, Parquet, DATASET:COLUMN[:LANG], or precomputed .npy.")
    tgt: str = Field(description="Target sentences, as src.")
    src_lang: str = Field(description="Language of src (partition of `mined`, and the filters' expectation).")
    tgt_lang: str = Field(description="Language of tgt.")
    model: str | None = Field(None, description="Model folder or models:/NAME@ALIAS (not needed when both sides are .npy).")
    src_text: Path | None = Field(None, description=".npy src: its sentences (default: <stem>.txt).")
    tgt_text: Path | None = Field(None, description=".npy tgt: its sentences (default: <stem>.txt).")
    column: str | None = Field(None, description="Parquet inputs: the sentence column (default: text).")
    mine: MineConfig = Field(default_factory=MineConfig, description="Margin, mode, threshold, index.")
    threshold_from: Literal["calibration", "bucc"] = Field(
        "calibration", description="Without mine.threshold: calibrate it from the run's own margins (mine.calibration), "
        "or use the model's threshold tuned by `labse evaluate bucc` on gettext pairs (calibrated when it has none).")
    batch_size: int = Field(64, ge=1, description="Sentences per encoder batch.")
    precision: str = Field("auto", description="Encoder precision: fp32, bf16, int8 or auto (labse_core.model."
                                               "precision); the one used is recorded with the pairs.")
    keep_embeddings: bool = Field(False, description="Keep the spilled embedding shards under the run folder.")
    parent_run_id: str | None = Field(None, description="MLflow parent run (the pipeline's).")
    prefect_artifacts: bool = Field(False, description="Publish Prefect artifacts (inside a flow run).")


@dataclass
class MineReport:
    run_id: str
    model: ModelSource | None
    result: Any
    """labse_core.mining.miner.MineResult"""
    summary: dict[str, Any]
    summary_path: Path
    rows: int


def mined_table(rows, *, src_lang: str, tgt_lang: str, mode: str, src_origin: str, tgt_origin: str,
                model_uri: str, model_version: str | None, run_id: str, created_at: dt.datetime,
                precision: str | None = None):
    """``MinedRow``s in the ``mined`` file schema (the language pair is the partition)."""
    import pyarrow as pa

    from storage.schemas import MINED

    n = len(rows)
    return pa.table({
        "src_text": pa.array([r.src_text for r in rows], pa.string()),
        "tgt_text": pa.array([r.tgt_text for r in rows], pa.string()),
        "src_index": pa.array([r.src_index for r in rows], pa.int64()),
        "tgt_index": pa.array([r.tgt_index for r in rows], pa.int64()),
        "cosine": pa.array([r.cosine for r in rows], pa.float32()),
        "margin": pa.array([r.margin for r in rows], pa.float32()),
        "mode": pa.array([mode] * n, pa.string()),
        "pair_key": pa.array([r.pair_key for r in rows], pa.string()),
        "src_origin": pa.array([src_origin] * n, pa.string()),
        "tgt_origin": pa.array([tgt_origin] * n, pa.string()),
        "model_uri": pa.array([model_uri] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "precision": pa.array([precision] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "created_at": pa.array([created_at] * n, pa.timestamp("us", tz="UTC")),
        "src_doc": pa.array([r.src_doc for r in rows], pa.string()),
        "src_pos": pa.array([r.src_pos for r in rows], pa.int32()),
        "tgt_doc": pa.array([r.tgt_doc for r in rows], pa.string()),
        "tgt_pos": pa.array([r.tgt_pos for r in rows], pa.int32()),
    }, schema=MINED.file_schema)


def _bucc_tuned(cfg: MineRunConfig, layout: Layout, source: ModelSource | None, src_lang: str,
                tgt_lang: str) -> tuple[MineRunConfig, ThresholdChoice | None]:
    """``threshold_from="bucc"``: the model's gettext-tuned threshold as the run's threshold, and the
    choice that records where it came from; otherwise (or when the model has none) the config as it is."""
    if cfg.threshold_from != "bucc" or cfg.mine.threshold is not None or cfg.mine.margin != "ratio" or source is None:
        return cfg, None
    from labse_core.evaluation.results import tuned_threshold

    tuned = tuned_threshold(layout, model_uri=source.uri, model_name=source.name, model_version=source.version,
                            langs=[lang for lang in (src_lang, tgt_lang) if lang != "en"])
    if tuned is None:
        log.warning("mine: %s has no threshold tuned by `labse evaluate bucc`: calibrating it", source.uri)
        return cfg, None
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"threshold": tuned[0]})})
    return cfg, ThresholdChoice(tuned[0], "bucc-tuned", {"source": tuned[1]})


def describe_threshold(choice: ThresholdChoice) -> str:
    """One line saying how a run's threshold was chosen (the summary's ``threshold_source``)."""
    d = choice.detail
    if choice.method == "given":
        return "given (--threshold)"
    if choice.method == "bucc-tuned":
        return d["source"]
    if choice.method == "fallback":
        return f"fallback {choice.value:g}: {d.get('why', '')}"
    if choice.method == "mixture":
        return (f"calibrated: two-component mixture over {d['candidates']:,} candidate margins (means "
                f"{d['means'][0]:.4f} / {d['means'][1]:.4f}, weights {d['weights'][0]:.2f} / {d['weights'][1]:.2f}, "
                f"separation {d['separation']:.2f})")
    if choice.method == "otsu":
        return (f"calibrated: Otsu split of {d['candidates']:,} candidate margins (the upper class, kept: "
                f"{d['upper_share']:.1%})")
    return f"calibrated: {choice.method} over {d['candidates']:,} candidate margins"


def run_mine(cfg: MineRunConfig, layout: Layout | None = None) -> MineReport:
    """Mine ``cfg.src`` x ``cfg.tgt`` and append the pairs to ``mined`` (module docstring). Killed, the same
    command resumes: same MLflow run, embedding chunks reused, pairs appended once (labse_core.mining.resume)."""
    from labse_core import langcodes
    from labse_core.mining.miner import document_pairs, mine_inputs, open_input
    from labse_core.mining.resume import MiningWork, work_key
    from storage.append import append_tables, run_files_published
    from storage.faults import maybe_die
    from storage.schemas import DATASETS, MINED

    layout = (layout or Layout.from_env()).ensure()
    src_lang, tgt_lang = langcodes.normalize(cfg.src_lang), langcodes.normalize(cfg.tgt_lang)
    dirs = {name: layout.dataset_dir(spec.relpath) for name, spec in DATASETS.items()}
    src = open_input(cfg.src, dataset_dirs=dirs, column=cfg.column, text_path=cfg.src_text, lang=src_lang)
    tgt = open_input(cfg.tgt, dataset_dirs=dirs, column=cfg.column, text_path=cfg.tgt_text, lang=tgt_lang)
    document_pairs(src, tgt, cfg.mine)  # folders without a document pair fail before a model loads
    source = resolve(cfg.model, layout) if cfg.model else None
    if source is None and (src.embeddings is None or tgt.embeddings is None):
        raise ValueError("--model is needed: an input has sentences without precomputed embeddings")
    tracking.configure(layout)
    cfg, tuned = _bucc_tuned(cfg, layout, source, src_lang, tgt_lang)
    embed = embedder(source.folder, cfg.batch_size, cfg.precision) if source else None
    precision = embed.precision if embed else None  # None: both sides precomputed
    model_uri = source.uri if source else "precomputed"
    settings = cfg.model_dump(mode="json", exclude={"keep_embeddings", "parent_run_id", "prefect_artifacts"})
    # What ran, not what was asked ("auto"): a resumed run never mixes embeddings of two precisions.
    settings["precision"] = precision
    work = MiningWork.open(layout, work_key(src, tgt, source.folder if source else None,
                                            settings | {"src_lang": src_lang, "tgt_lang": tgt_lang}))
    with _start_run("mine", cfg.parent_run_id, work.run_id) as run:
        run_id = run.info.run_id
        work.record_run(run_id)
        mlflow.set_tags({"stage": "mine", "model_uri": model_uri, "model_version": str(source.version if source else None),
                         "pair": f"{src_lang}-{tgt_lang}", "precision": str(precision)})
        mlflow.log_params({"src": cfg.src, "tgt": cfg.tgt, "threshold_from": cfg.threshold_from, "precision": str(precision),
                           **{k: str(v) for k, v in cfg.mine.model_dump().items() if k != "rules"}})
        try:
            result = mine_inputs(src, tgt, src_lang, tgt_lang, embed, work.path, cfg.mine)
        except Exception:
            work.finish()  # an error, not a crash: a rerun would fail the same way
            raise
        choice = tuned or result.threshold  # how the threshold was chosen, recorded with the pairs
        mlflow.set_tags({"threshold_method": choice.method, "threshold_source": describe_threshold(choice)[:5000]})
        created = dt.datetime.now(dt.UTC)
        table = mined_table(result.rows, src_lang=src_lang, tgt_lang=tgt_lang, mode=cfg.mine.mode, src_origin=cfg.src,
                            tgt_origin=cfg.tgt, model_uri=model_uri, model_version=source.version if source else None,
                            run_id=run_id, created_at=created, precision=precision)
        stats = {"src_sentences": result.src_total, "tgt_sentences": result.tgt_total,
                 "src_distinct": result.src_distinct, "tgt_distinct": result.tgt_distinct,
                 "candidates": len(result.pairs), "kept": len(result.rows), "index": result.index_kind,
                 **choice.as_record(), "threshold_source": describe_threshold(choice),
                 "dropped": dict(result.dropped), "embedding_chunks": result.chunks, "precision": precision,
                 **({"documents": result.documents} if result.documents else {})}
        if not run_files_published(layout, MINED, run_id):  # else an interrupted attempt of this run appended them
            append_tables(layout, MINED, [({"src_lang": src_lang, "tgt_lang": tgt_lang}, table)], run_id,
                          producer={"stage": "mine", "run_id": run_id, "model_uri": model_uri}, stats=stats)
        maybe_die("mine.published")
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if isinstance(v, int | float)}
                           | {f"dropped.{k}": float(v) for k, v in result.dropped.items()})
        summary = stats | {"run_id": run_id, "model_uri": model_uri, "model_version": source.version if source else None,
                           "src": cfg.src, "tgt": cfg.tgt, "src_lang": src_lang, "tgt_lang": tgt_lang,
                           "config": cfg.mine.model_dump(mode="json", exclude={"rules"})}
        summary_path = layout.run_dir(run_id) / "mine.json"
        write_json_atomic(summary_path, summary)
        mlflow.log_artifact(str(summary_path))
        if result.rows:
            _log_table([{"src_text": r.src_text, "tgt_text": r.tgt_text, "margin": r.margin, "cosine": r.cosine}
                        for r in result.rows[:1000]], "mined_top.json")
        work.finish(layout.run_dir(run_id) / "embeddings" if cfg.keep_embeddings else None)
    catalog.refresh(layout)
    if cfg.prefect_artifacts:
        publish_markdown("mine", [f"### mine {src_lang}-{tgt_lang}: {len(result.rows):,} pairs",
                                  f"- {result.src_total:,} x {result.tgt_total:,} sentences, {len(result.pairs):,} "
                                  f"over the threshold {choice.value:.4f} ({describe_threshold(choice)}), dropped {dict(result.dropped)}",
                                  f"- MLflow run: `{run_id}`"])
    return MineReport(run_id, source, result, summary, summary_path, len(result.rows))


# ---------------------------------------------------------------------------------------------------
# BUCC-style mining F1 and xSIM


class BuccEvalConfig(BaseModel):
    """``labse evaluate bucc`` / the pipeline's evaluate stage (the demo's F1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="Exported model folder, or models:/NAME@ALIAS, models:/NAME/VERSION.")
    langs: list[str] | None = Field(None, description="Languages (xx of en-xx) from the clean corpus; None: every one.")
    held_out_fraction: float = Field(0.05, gt=0, lt=1, description="The fine-tuning held-out fraction (tiny_cpu: 0.05): "
                                     "only pairs on that side of the split are used.")
    gold: int = Field(100, ge=1, description="Hidden translation pairs per split (dev and test).")
    distractors: int = Field(200, ge=0, description="Distractor sentences per side and split.")
    mine: MineConfig = Field(default_factory=lambda: MineConfig(mode="max", index="flat"),
                             description="Miner settings (threshold ignored: tuned on dev).")
    seed: int = Field(0, description="Order of the pairs (which become gold, which distractors).")
    batch_size: int = Field(64, ge=1, description="Sentences per encoder batch.")
    precision: str = Field("auto", description="Encoder precision: fp32, bf16, int8 or auto; the one used is recorded.")
    parent_run_id: str | None = Field(None, description="MLflow parent run (the pipeline's).")
    prefect_artifacts: bool = Field(False, description="Publish Prefect artifacts (inside a flow run).")


def run_bucc(cfg: BuccEvalConfig, layout: Layout | None = None) -> EvalReport:
    """BUCC-style F1 (dev-tuned threshold applied to test) and xSIM per language, recorded like Tatoeba."""
    from labse_core.evaluation import bucc
    from storage.schemas import CLEAN_PAIRS

    layout = (layout or Layout.from_env()).ensure()
    clean = layout.dataset_dir(CLEAN_PAIRS.relpath)
    if not clean.is_dir():
        raise ValueError(f"no clean corpus at {clean}: run `labse prepare` (or `labse demo`) first")
    langs = cfg.langs or sorted(p.name.split("=", 1)[1] for p in clean.glob("lang=*"))
    source = resolve(cfg.model, layout)
    embed = embedder(source.folder, cfg.batch_size, cfg.precision)
    results, skipped = [], {}
    for lang in langs:
        pairs = bucc.held_out_pairs(clean, lang, cfg.held_out_fraction)
        try:
            sets = bucc.build_sets(pairs, cfg.gold, cfg.distractors, cfg.seed)
        except ValueError as e:
            skipped[lang] = str(e)
            continue
        results.append(bucc.evaluate_language(lang, sets, embed, cfg.mine))
    if not results:
        raise ValueError(f"no language has enough held-out pairs for a BUCC-style set: {skipped}")
    with _start_run("evaluate-bucc", cfg.parent_run_id) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"stage": "evaluate", "eval_set": bucc.EVAL_SET, "model_uri": source.uri,
                         "model_version": str(source.version), "precision": embed.precision})
        mlflow.log_params({"langs": ",".join(r.lang for r in results), "gold": cfg.gold, "distractors": cfg.distractors,
                           "held_out_fraction": cfg.held_out_fraction, "k": cfg.mine.k, "mode": cfg.mine.mode,
                           "margin": cfg.mine.margin, "precision": embed.precision})
        rows = bucc.result_rows(results)
        publish_rows(layout, bucc.EVAL_SET, rows, run_id=run_id, model_uri=source.uri, model_version=source.version,
                     producer={"model_folder": str(source.folder)}, precision=embed.precision)
        f1 = float(np.mean([r.test.f1 for r in results]))
        xsim = float(np.mean([(r.xsim_xx_en + r.xsim_en_xx) / 2 for r in results]))
        metrics = {"bucc/f1": f1, "bucc/precision": float(np.mean([r.test.precision for r in results])),
                   "bucc/recall": float(np.mean([r.test.recall for r in results])), "xsim/error": xsim}
        metrics |= {f"bucc/f1/{r.lang}": r.test.f1 for r in results}
        mlflow.log_metrics(metrics)
        summary = {"eval_set": bucc.EVAL_SET, "run_id": run_id, "model_uri": source.uri, "model_version": source.version,
                   "precision": embed.precision, "metrics": metrics, "skipped": skipped, "languages": {
                       r.lang: {"dev": vars(r.dev), "test": vars(r.test), "test_oracle": vars(r.test_oracle),
                                "xsim_xx_en": r.xsim_xx_en, "xsim_en_xx": r.xsim_en_xx, "sizes": r.sizes}
                       for r in results}}
        summary_path = layout.run_dir(run_id) / "bucc.json"
        write_json_atomic(summary_path, summary)
        plot = plot_bucc(results, layout.run_dir(run_id) / "bucc.png", f"BUCC-style F1 (test): {source.uri}")
        _log_table([{k: r[k] for k in ("split", "language", "direction", "metric", "value", "n")} for r in rows],
                   "bucc_results.json")
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(plot))
    catalog.refresh(layout)
    if cfg.prefect_artifacts:
        publish_markdown("evaluate-bucc", [f"### BUCC-style mining on held-out pairs: `{source.uri}`",
                                           f"- F1 (test, dev-tuned threshold): **{f1:.4f}** over {len(results)} languages",
                                           f"- xSIM error: {xsim:.4f}", f"- MLflow run: `{run_id}`"], plot,
                         [{"language": r.lang, "f1": round(r.test.f1, 4), "precision": round(r.test.precision, 4),
                           "recall": round(r.test.recall, 4), "threshold": round(r.dev.threshold, 4),
                           "xsim_xx_en": round(r.xsim_xx_en, 4), "xsim_en_xx": round(r.xsim_en_xx, 4)} for r in results])
    return EvalReport(run_id, source, metrics, summary, summary_path, plot, len(rows), results)


def plot_bucc(results, path: Path, title: str) -> Path:
    """Test F1 per language (bars) with precision and recall marks."""
    plt = _pyplot()
    rs = sorted(results, key=lambda r: r.test.f1)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(rs) + 1.2)))
    labels = [r.lang for r in rs]
    ax.barh(labels, [r.test.f1 for r in rs], color="#3b6ea5", label="F1")
    ax.plot([r.test.precision for r in rs], labels, "o", color="#c0504d", label="precision")
    ax.plot([r.test.recall for r in rs], labels, "s", color="#9bbb59", label="recall")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("test split, threshold tuned on dev")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    out = _save(fig, path)
    plt.close(fig)
    return out
