"""Stage ``prepare``: corpora -> ``corpus_clean`` + ``corpus_rejects``, every pair accounted for.

    read (corpus_raw and/or files: gettext, Moses, TSV, TMX)
      -> normalize -> eval_overlap -> filters            (batches; labse_core.prepare.process_batch)
      -> dedupe on the normalized pair, per language     (GroupByKey on pair_key)
      -> optional cap on translations per source         (GroupByKey on language + source key)
      -> write clean rows by language, rejects by reason (beam_jobs.io.WritePartitionedRows)

The manifest of each dataset records the stage counters; the stage refuses to publish unless
``input pairs == clean + rejected`` and each dataset's files hold exactly what was counted.
``mode="append"`` dedupes new input against the clean corpus already in the lake (the new version
holds the old rows plus the new ones). Run it::

    labse prepare                                    # corpus_raw (from `labse ingest`) -> clean corpus
    labse prepare --input corpus.de --input opus.de-en.tmx --input data.tsv --langs de,en
    labse prepare --runner FlinkRunner --beam-arg=--flink_master=host:8081
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.counters import counters
from beam_jobs.io import ReadParquetBatches, WritePartitionedRows
from beam_jobs.options import BeamConfig
from labse_core import prepare as core
from labse_core.langcodes import normalize
from labse_core.text.normalize import sentence_key
from storage.datasets import DatasetWriter, check_replace, current_manifest
from storage.layout import Layout, default_eval_sets
from storage.manifest import Manifest
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, DatasetSpec

NAMESPACE = "prepare"


class PrepareConfig(BaseModel):
    """Settings of ``labse prepare`` (also a section of the pipeline's parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: list[core.InputSpec] = Field(default_factory=list, description="Corpus files to read.")
    from_raw_corpus: bool = Field(True, description="Also read the lake's corpus_raw dataset (gettext ingest).")
    raw_languages: list[str] | None = Field(
        None, description="Read only these languages of corpus_raw (its lang partitions); None reads all."
    )
    eval_sets: list[Path] = Field(
        default_factory=default_eval_sets,
        description="Evaluation sets whose sentences must not be trained on (Tatoeba folder or text files).",
    )
    rules: core.PrepareRules = Field(default_factory=core.PrepareRules, description="Normalization and filters.")
    dedupe: bool = Field(True, description="Keep one pair per normalized (language, source, target).")
    max_translations_per_source: int | None = Field(
        None, ge=1, description="Keep at most this many translations of one source sentence per language."
    )
    mode: Literal["overwrite", "append"] = Field(
        "overwrite", description="append: dedupe against, and keep, the clean corpus already in the lake."
    )
    skip_bad_inputs: bool = Field(False, description="Count unreadable input files instead of failing.")
    replace_empty: bool = Field(
        False, description="Publish an empty clean corpus over a non-empty one (refused by default: nothing is lost silently)."
    )
    batch_size: int = Field(2000, ge=1, description="Pairs per batch inside the normalize/filter step.")
    rows_per_file: int = Field(250_000, ge=1, description="Most rows per Parquet file within a partition.")
    beam: BeamConfig = Field(default_factory=BeamConfig)


class PrepareResult(BaseModel):
    clean: Manifest
    rejects: Manifest
    stats: dict[str, int]
    errors: list[str]
    skipped: list[str] = Field(default_factory=list, description="Inputs skipped as a whole, with the reason.")
    seconds: float
    replaced: dict[str, int] = Field(default_factory=dict, description="Rows of each dataset's previous version.")

    @property
    def input_pairs(self) -> int:
        return self.stats.get("input_pairs", 0)


class PrepareError(RuntimeError):
    """The stage stopped; nothing was published."""


def _count(name: str, n: int = 1) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(n)


class _ReadInputFn(beam.DoFn):
    ERRORS = "errors"

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def process(self, spec: core.InputSpec):
        batch: list[dict] = []
        try:
            for row in core.iter_input(spec):
                batch.append(row)
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
        except (ValueError, OSError) as e:  # ReaderError, CatalogError, PrepareError, UnknownLanguage
            _count("inputs_unreadable")
            yield beam.pvalue.TaggedOutput(self.ERRORS, f"{e}")
        if batch:
            yield batch
        _count("inputs_read")


class _ProcessBatchFn(beam.DoFn):
    REJECTS = "rejects"

    def __init__(self, rules: core.PrepareRules, eval_sets: list[str]):
        self.rules = rules
        self.eval_sets = eval_sets

    def setup(self):
        # Every worker builds the evaluation keys once (Tatoeba: ~220k sentences, a few seconds).
        self.eval_keys = core.load_eval_keys(self.eval_sets, self.rules.normalize)

    def process(self, rows: list[dict]):
        _count("input_pairs", len(rows))
        kept, rejects = core.process_batch(rows, self.rules, self.eval_keys)
        for r in rejects:
            _count(f"rejected.{r['reason']}")
            yield beam.pvalue.TaggedOutput(self.REJECTS, r)
        for r in kept:
            yield r


# What travels through the dedupe shuffle: a tuple in this order, not a dict (a pickled dict repeats
# every key name in every row; on the direct runner the shuffle is held in the runner's memory).
SHUFFLE_FIELDS = (*core.ROW_FIELDS, "pair_key", "existing")


def _to_shuffle(row: dict) -> tuple[str, tuple]:
    return row["pair_key"], tuple(row.get(f) for f in SHUFFLE_FIELDS)


def _from_shuffle(values: tuple) -> dict:
    return dict(zip(SHUFFLE_FIELDS, values, strict=True))


class _DedupeFn(beam.DoFn):
    REJECTS = "rejects"

    def process(self, element):
        _, rows = element
        winner, losers = core.resolve_duplicates([_from_shuffle(r) for r in rows])
        for r in losers:
            _count(f"rejected.{r['reason']}")
            yield beam.pvalue.TaggedOutput(self.REJECTS, r)
        yield winner


class _CapFn(beam.DoFn):
    REJECTS = "rejects"

    def __init__(self, cap: int):
        self.cap = cap

    def process(self, element):
        _, rows = element
        kept, dropped = core.cap_translations(list(rows), self.cap)
        for r in dropped:
            _count(f"rejected.{r['reason']}")
            yield beam.pvalue.TaggedOutput(self.REJECTS, r)
        yield from kept


def _count_clean(row: dict) -> dict:
    _count("clean_existing" if row.get("existing") else "clean_new")
    return row


def _files(layout: Layout, spec: DatasetSpec, partitions: set[str] | None = None) -> list[str]:
    m = current_manifest(layout, spec)
    root = layout.dataset_dir(spec.relpath)
    if not m:
        return []
    return [str(root / f.path) for f in m.files if partitions is None or f.partition.get("lang") in partitions]


def check_inputs(cfg: PrepareConfig, layout: Layout, skipped: list[str] | None = None) -> list[str]:
    """Validate the configuration on the driver, before any work: every input readable by some
    reader, evaluation sets present and readable, language labels that match the text (side swaps
    are caught on a sample), something to read. Returns the corpus_raw files to read; inputs
    skipped as a whole (English-variant catalogs) are appended to ``skipped`` with the reason."""
    skipped = skipped if skipped is not None else []
    for spec in cfg.inputs:
        spec.resolved_format()  # raises PrepareError / ReaderError naming the file
    try:
        core.check_eval_sets(cfg.eval_sets)
    except core.PrepareError as e:
        raise PrepareError(str(e)) from None
    for spec in cfg.inputs:
        try:
            reason = core.skip_reason(spec)
            if reason:
                skipped.append(reason)
            else:
                core.refuse_swapped_sides(spec)
        except core.PrepareError as e:  # swapped sides
            raise PrepareError(str(e)) from None
        except (ValueError, OSError) as e:  # ReaderError, CatalogError: the input cannot be read
            if not cfg.skip_bad_inputs:
                raise PrepareError(f"unreadable input: {e}") from None
            # with skip_bad_inputs the workers count it as unreadable
    langs = {normalize(x) for x in cfg.raw_languages} if cfg.raw_languages else None
    raw_files = _files(layout, RAW_PAIRS, langs) if cfg.from_raw_corpus else []
    if not raw_files and not cfg.inputs:
        raise PrepareError("nothing to prepare: no input files given and no corpus_raw dataset (run `labse ingest`)")
    if not raw_files and cfg.inputs and len(skipped) == len(cfg.inputs):
        raise PrepareError(f"nothing to prepare: {skipped[0]}" + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
    return raw_files


def run(cfg: PrepareConfig, layout: Layout, run_id: str | None = None, producer: dict | None = None) -> PrepareResult:
    t0 = time.perf_counter()
    layout.ensure()
    skipped: list[str] = []
    raw_files = check_inputs(cfg, layout, skipped)
    existing_clean = _files(layout, CLEAN_PAIRS) if cfg.mode == "append" else []
    existing_rejects = _files(layout, REJECTS) if cfg.mode == "append" else []
    clean_w = DatasetWriter(layout, CLEAN_PAIRS, run_id).begin()
    rejects_w = DatasetWriter(layout, REJECTS, clean_w.run_id).begin()
    errors_path = layout.staging / f".errors-{clean_w.run_id}.txt"
    try:
        with cfg.beam.pipeline() as p:
            batches = []
            if raw_files:
                batches.append(p | "RawFiles" >> beam.Create(raw_files, reshuffle=True)
                               | "ReadRaw" >> beam.ParDo(ReadParquetBatches(cfg.batch_size)))
            if cfg.inputs:
                read = (p | "InputFiles" >> beam.Create(cfg.inputs, reshuffle=True)
                        | "ReadInputs" >> beam.ParDo(_ReadInputFn(cfg.batch_size)).with_outputs(_ReadInputFn.ERRORS, main="rows"))
                batches.append(read.rows)
                _ = (read[_ReadInputFn.ERRORS] | "CollectErrors" >> beam.combiners.ToList()
                     | "WriteErrors" >> beam.Map(lambda errs, path=str(errors_path): Path(path).write_text("\n".join(sorted(errs)))))
            processed = (
                batches | "AllBatches" >> beam.Flatten()
                | "NormalizeFilter" >> beam.ParDo(_ProcessBatchFn(cfg.rules, [str(x) for x in cfg.eval_sets]))
                .with_outputs(_ProcessBatchFn.REJECTS, main="kept")
            )
            rejects = [processed[_ProcessBatchFn.REJECTS]]
            kept = processed.kept
            if existing_clean:
                old = (p | "OldCleanFiles" >> beam.Create(existing_clean, reshuffle=True)
                       | "ReadOldClean" >> beam.ParDo(ReadParquetBatches(cfg.batch_size, {"existing": True}))
                       | "OldCleanRows" >> beam.FlatMap(lambda rows: rows))
                kept = (kept, old) | "WithOldClean" >> beam.Flatten()
            if cfg.dedupe:
                deduped = (
                    kept | "KeyByPair" >> beam.Map(_to_shuffle)
                    | "GroupDuplicates" >> beam.GroupByKey()
                    | "KeepFirst" >> beam.ParDo(_DedupeFn()).with_outputs(_DedupeFn.REJECTS, main="kept")
                )
                rejects.append(deduped[_DedupeFn.REJECTS])
                kept = deduped.kept
            if cfg.max_translations_per_source:
                capped = (
                    kept | "KeyBySource" >> beam.Map(lambda r: ((r["lang"], sentence_key(r["src_text"])), r))
                    | "GroupBySource" >> beam.GroupByKey()
                    | "Cap" >> beam.ParDo(_CapFn(cfg.max_translations_per_source)).with_outputs(_CapFn.REJECTS, main="kept")
                )
                rejects.append(capped[_CapFn.REJECTS])
                kept = capped.kept
            _ = (kept | "CountClean" >> beam.Map(_count_clean)
                 | "WriteClean" >> WritePartitionedRows(CLEAN_PAIRS, clean_w.staging, cfg.rows_per_file))
            if existing_rejects:
                rejects.append(p | "OldRejectFiles" >> beam.Create(existing_rejects, reshuffle=True)
                               | "ReadOldRejects" >> beam.ParDo(ReadParquetBatches(cfg.batch_size))
                               | "OldRejectRows" >> beam.FlatMap(lambda rows: rows))
            _ = (rejects | "AllRejects" >> beam.Flatten()
                 | "WriteRejects" >> WritePartitionedRows(REJECTS, rejects_w.staging, cfg.rows_per_file))
        stats = counters(p.result, NAMESPACE)
        errors = [e for e in errors_path.read_text().splitlines() if e] if errors_path.exists() else []
        if errors and not cfg.skip_bad_inputs:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PrepareError(f"unreadable input: {errors[0]}{more}")
        if errors and len(errors) >= len(cfg.inputs) and not raw_files:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise PrepareError(f"every input was unreadable, nothing published: {errors[0]}{more}")
        stats.setdefault("input_pairs", 0)
        rejected = Counter({k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("rejected.")})
        stats["rejected"] = sum(rejected.values())
        stats.setdefault("clean_new", 0)
        if stats.get("input_pairs", 0) != stats["clean_new"] + stats["rejected"]:
            raise PrepareError(
                f"accounting failed: {stats.get('input_pairs', 0)} input pairs != {stats['clean_new']} clean + "
                f"{stats['rejected']} rejected; nothing published"
            )
        old_rejects = current_manifest(layout, REJECTS).rows if existing_rejects else 0
        info = {"stage": "prepare", "run_id": clean_w.run_id, **(producer or {}), "config": cfg.model_dump(mode="json")}
        run_stats = stats | {"rejected_by_reason": dict(sorted(rejected.items())), "unreadable_inputs": errors,
                             "skipped_inputs": skipped}
        clean_rows = stats["clean_new"] + stats.get("clean_existing", 0)
        # Both datasets are checked before either is published. A run with clean pairs and no
        # rejects is a normal run: its empty rejects replace the old ones.
        rejects_may_empty = cfg.replace_empty or clean_rows > 0
        check_replace(layout, CLEAN_PAIRS, clean_rows, replace_empty=cfg.replace_empty)
        check_replace(layout, REJECTS, stats["rejected"] + old_rejects, replace_empty=rejects_may_empty)
        clean_m = clean_w.publish(producer=info, stats=run_stats, expected_rows=clean_rows,
                                  replace_empty=cfg.replace_empty)
        rejects_m = rejects_w.publish(producer=info, stats=run_stats, expected_rows=stats["rejected"] + old_rejects,
                                      replace_empty=rejects_may_empty)
    except BaseException:
        clean_w.abort()
        rejects_w.abort()
        raise
    finally:
        errors_path.unlink(missing_ok=True)
    return PrepareResult(clean=clean_m, rejects=rejects_m, stats={k: v for k, v in stats.items()},
                         errors=errors, skipped=skipped, seconds=time.perf_counter() - t0,
                         replaced={CLEAN_PAIRS.name: clean_w.replaced_rows, REJECTS.name: rejects_w.replaced_rows})
