"""Evaluation results as rows of the ``eval_results`` dataset, appended run after run.

Every evaluator returns plain rows (scope, language, direction, metric, value, n, split); ``publish_rows``
adds the run's columns (run id, time, model URI and registry version) and appends them to
``eval_results`` (partition ``eval_set=...``) through ``storage.append``: earlier runs' rows stay.

    labse sql "SELECT model_uri, model_version, language, value FROM eval_results
               WHERE eval_set = 'tatoeba-v1' AND scope = 'group' AND direction = 'both'"
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from labse_core.export import read_export_metadata
from storage.append import append_tables, rewrite_run_files
from storage.layout import Layout
from storage.manifest import Manifest, read_manifest
from storage.schemas import CLEAN_PAIRS, EVAL_RESULTS

ROW_KEYS = ("split", "scope", "language", "direction", "metric", "value", "n")


def results_table(
    rows: Sequence[dict], *, run_id: str, model_uri: str, model_version: str | None, created_at: dt.datetime,
    precision: str | None = None,
) -> pa.Table:
    """The rows of one evaluation run in ``eval_results``' file schema (``eval_set`` is the partition)."""
    for i, r in enumerate(rows):
        if missing := [k for k in ROW_KEYS if k not in r]:
            raise ValueError(f"result row {i} lacks {missing}")
    n = len(rows)
    cols = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "created_at": pa.array([created_at] * n, pa.timestamp("us", tz="UTC")),
        "model_uri": pa.array([model_uri] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "precision": pa.array([precision] * n, pa.string()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "scope": pa.array([r["scope"] for r in rows], pa.string()),
        "language": pa.array([r["language"] for r in rows], pa.string()),
        "direction": pa.array([r["direction"] for r in rows], pa.string()),
        "metric": pa.array([r["metric"] for r in rows], pa.string()),
        "value": pa.array([float(r["value"]) for r in rows], pa.float64()),
        "n": pa.array([int(r["n"]) for r in rows], pa.int64()),
    }
    return pa.table(cols, schema=EVAL_RESULTS.file_schema)


def publish_rows(
    layout: Layout,
    eval_set: str,
    rows: Sequence[dict],
    *,
    run_id: str,
    model_uri: str,
    model_version: str | None,
    producer: dict | None = None,
    created_at: dt.datetime | None = None,
    precision: str | None = None,
) -> Manifest:
    """Append one run's rows to ``eval_results`` (partition ``eval_set``); returns the new manifest.
    ``precision``: the encoder precision the scores were measured in (fp32, bf16, int8)."""
    created_at = created_at or dt.datetime.now(dt.UTC)
    table = results_table(rows, run_id=run_id, model_uri=model_uri, model_version=model_version, created_at=created_at,
                          precision=precision)
    return append_tables(
        layout, EVAL_RESULTS, [({"eval_set": eval_set}, table)], run_id,
        producer={"stage": "evaluate", "eval_set": eval_set, "run_id": run_id, **(producer or {})},
    )


def attach_registry_version(layout: Layout, run_ids: Iterable[str | None], *, model_uri: str, name: str,
                            version: str) -> int:
    """Label evaluation runs of a model folder with the registry version that folder became.

    A pipeline evaluates its fine-tuned folder *before* the registry gate (the gate needs the scores), so
    those rows are first written with the folder as ``model_uri`` and no version; once registered, this
    rewrites them to ``models:/<name>/<version>`` so that "accuracy by model version" and ``labse mine``'s
    tuned-threshold lookup (by name and version) find them. Only rows of ``run_ids`` whose ``model_uri`` is
    the folder change. Returns the rows of those runs that were rewritten."""
    import pyarrow.compute as pc

    new_uri = f"models:/{name}/{version}"

    def relabel(t: pa.Table) -> pa.Table:
        hit = pc.equal(t["model_uri"], model_uri)
        uri = pc.if_else(hit, pa.scalar(new_uri), t["model_uri"])
        ver = pc.if_else(hit, pa.scalar(str(version)), t["model_version"])
        t = t.set_column(t.schema.get_field_index("model_uri"), "model_uri", uri)
        return t.set_column(t.schema.get_field_index("model_version"), "model_version", ver)

    done = 0
    for run_id in dict.fromkeys(r for r in run_ids if r):
        done += rewrite_run_files(layout, EVAL_RESULTS, run_id, relabel,
                                  producer={"stage": "register", "relabel_run_id": run_id, "model_uri": new_uri})
    return done


def trained_languages(model_folder: str | os.PathLike[str], layout: Layout | None = None) -> tuple[list[str] | None, str]:
    """The languages a model was trained on, and where that came from: the model card's ``languages``
    (``labse_export.json``), else the lake's clean corpus (its ``lang`` partitions plus English, the
    source side of every gettext pair), else ``(None, "unknown")``."""
    meta = read_export_metadata(Path(model_folder)) or {}
    card_langs = (meta.get("model_card") or {}).get("languages") or []
    if card_langs:
        return sorted(set(card_langs)), "model card"
    if layout is not None and (langs := corpus_languages(layout)):
        return langs, "lake corpus_clean"
    return None, "unknown"


def corpus_languages(layout: Layout) -> list[str] | None:
    """The clean corpus's languages (its ``lang`` partitions) plus English, the other side of its pairs;
    None when there is no clean corpus."""
    manifest = read_manifest(layout.dataset_dir(CLEAN_PAIRS.relpath))
    if manifest is None or not manifest.partitions:
        return None
    return sorted({key.split("=", 1)[1] for key in manifest.partitions} | {"en"})


def split_langs(values: Iterable[str] | None) -> list[str] | None:
    """``["de,fr", "ja"]`` -> ``["de", "fr", "ja"]`` (options given repeatedly or comma-separated)."""
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def tuned_threshold(
    layout: Layout, *, model_uri: str, model_name: str | None, model_version: str | None,
    langs: Iterable[str] = (), eval_set: str = "bucc-gettext",
) -> tuple[float, str] | None:
    """The ratio-margin threshold that ``labse evaluate bucc`` tuned on its dev split for this model, and a
    note saying where it came from; None when the model was never evaluated there.

    A registry model matches on name and version (an alias moves, the version does not), a folder on its
    path. The latest evaluation run of the model wins; within it the threshold of one of ``langs`` (the
    pair's non-English side) when that language was evaluated, else the median over its languages
    (thresholds differ little across languages for one model, and much across models: e5's best is
    ~1.02, a from-scratch encoder's ~1.1)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = layout.dataset_dir(EVAL_RESULTS.relpath)
    manifest = read_manifest(root)
    if manifest is None:
        return None
    files = [root / f.path for f in manifest.files if f"eval_set={eval_set}" in Path(f.path).parts]
    if not files:
        return None
    cols = ["run_id", "created_at", "model_uri", "model_version", "split", "scope", "language", "metric", "value"]
    t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    t = t.filter(pc.and_(pc.equal(t["metric"], "threshold"),
                         pc.and_(pc.equal(t["split"], "dev"), pc.equal(t["scope"], "language"))))
    if model_name is not None and model_version is not None:
        same = [u.startswith(f"models:/{model_name}@") or u.startswith(f"models:/{model_name}/")
                for u in t["model_uri"].to_pylist()]
        t = t.filter(pc.and_(pa.array(same), pc.equal(t["model_version"], model_version)))
    else:
        t = t.filter(pc.equal(t["model_uri"], model_uri))
    if t.num_rows == 0:
        return None
    rows = t.to_pylist()
    latest = max(rows, key=lambda r: r["created_at"])["run_id"]
    by_lang = {r["language"]: r["value"] for r in rows if r["run_id"] == latest}
    for lang in langs:
        if lang in by_lang:
            return by_lang[lang], f"tuned on bucc dev for {lang} (evaluation run {latest})"
    values = sorted(by_lang.values())
    median = (values[(len(values) - 1) // 2] + values[len(values) // 2]) / 2
    return median, f"median of bucc dev thresholds over {sorted(by_lang)} (evaluation run {latest})"
