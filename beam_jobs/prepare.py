"""Stage ``prepare``: corpora -> ``corpus_clean`` + ``corpus_rejects``, every pair accounted for.

    read (corpus_raw and/or files: gettext, Moses, TSV, TMX)
      -> normalize -> eval_overlap -> filters            (batches; labse_core.prepare.TablePreparer)
      -> dedupe on the normalized pair, per language     (GroupByKey on language + digest prefix; dedupe_table)
      -> optional cap on translations per source         (GroupByKey on language + source key prefix)
      -> write clean rows by language, rejects by reason (beam_jobs.io.WritePartitionedTables)

Between the steps, rows travel as Arrow tables of up to ``batch_size`` rows (kept rows, rejects), not
one pickled dict per row: the runner moves a few hundred elements per language instead of one per
pair, and each step works on columns. The decisions are the per-record functions of
``labse_core.prepare`` (``process_batch``, ``resolve_duplicates``, ``cap_translations``); the tests
check that the table forms decide exactly as they do.

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
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.counters import counters
from beam_jobs.failures import stage_failures
from beam_jobs.io import ReadParquetTables, WritePartitionedTables
from beam_jobs.options import BeamConfig
from labse_core import prepare as core
from labse_core.langcodes import normalize
from labse_core.text.normalize import sentence_key
from storage.datasets import DatasetWriter, check_replace, commit, current_manifest
from storage.layout import Layout, default_eval_sets
from storage.locks import lake_lock
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
    shuffle_digits: int = Field(
        1, ge=0, le=8,
        description="Hex digits of the pair digest that shard a language for the dedupe (and cap) shuffle: "
        "16**n shards per language. More shards bound what one worker holds for one huge language; "
        "fewer mean fewer, larger groups (cheaper for many small languages).",
    )
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


def _count_reasons(rejects: pa.Table) -> None:
    if rejects.num_rows:
        for item in pc.value_counts(rejects.column("reason")).to_pylist():
            _count(f"rejected.{item['values']}", item["counts"])


class _ProcessBatchFn(beam.DoFn):
    """A batch (Arrow table from corpus_raw, or row dicts from a reader) -> a table of kept rows
    (main output) and a table of rejects; one ``TablePreparer`` per worker keeps its caches."""

    REJECTS = "rejects"

    def __init__(self, rules: core.PrepareRules, eval_sets: list[str]):
        self.rules = rules
        self.eval_sets = eval_sets

    def setup(self):
        # Every worker builds the evaluation keys once (Tatoeba: ~220k sentences, a few seconds).
        self.preparer = core.TablePreparer(self.rules, core.load_eval_keys(self.eval_sets, self.rules.normalize))

    def process(self, batch):
        _count("input_pairs", batch.num_rows if isinstance(batch, pa.Table) else len(batch))
        kept, rejects = self.preparer.process(batch)
        _count_reasons(rejects)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(self.REJECTS, rejects)
        if kept.num_rows:
            yield kept


def _group_rows(table: pa.Table, keys: list[str]):
    """``(key, rows of table with that key)`` for each distinct key (one row per key in ``keys``)."""
    if keys and all(k == keys[0] for k in keys):
        yield keys[0], table
        return
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    for k, idx in groups.items():
        # take copies the rows: a zero-copy slice would pickle its whole parent table
        yield k, table.take(pa.array(idx, type=pa.int64()))


def _key_by_pair(table: pa.Table, digits: int):
    """Kept rows keyed for the dedupe shuffle: the language plus the first ``digits`` hex digits of
    the pair digest. Every group of equal pair keys lands in one shard, and a shard holds about
    1/16**digits of a language, which bounds what one worker holds for one huge language."""
    keys = [f"{lang}:{pk[len(lang) + 1 : len(lang) + 1 + digits]}" for lang, pk in zip(
        table.column("lang").to_pylist(), table.column("pair_key").to_pylist(), strict=True)]
    yield from _group_rows(table, keys)


def _key_by_source(table: pa.Table, digits: int):
    """Kept rows keyed for the cap on translations: language plus a prefix of the source's key."""
    keys = [f"{lang}:{sentence_key(src)[:digits]}" for lang, src in zip(
        table.column("lang").to_pylist(), table.column("src_text").to_pylist(), strict=True)]
    yield from _group_rows(table, keys)


class _DedupeFn(beam.DoFn):
    REJECTS = "rejects"

    def process(self, element):
        _, tables = element
        winners, rejects = core.dedupe_table(pa.concat_tables(list(tables)))
        _count_reasons(rejects)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(self.REJECTS, rejects)
        yield winners


class _CapFn(beam.DoFn):
    REJECTS = "rejects"

    def __init__(self, cap: int):
        self.cap = cap

    def process(self, element):
        _, tables = element
        kept, dropped = core.cap_table(pa.concat_tables(list(tables)), self.cap)
        _count_reasons(dropped)
        if dropped.num_rows:
            yield beam.pvalue.TaggedOutput(self.REJECTS, dropped)
        yield kept


def _count_clean(table: pa.Table) -> pa.Table:
    existing = pc.sum(table.column("existing")).as_py() or 0
    if existing:
        _count("clean_existing", existing)
    if table.num_rows - existing:
        _count("clean_new", table.num_rows - existing)
    return table


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
    layout.ensure()
    with lake_lock(layout, "prepare"), stage_failures("prepare", layout):
        return _run(cfg, layout, run_id, producer)


def _run(cfg: PrepareConfig, layout: Layout, run_id: str | None, producer: dict | None) -> PrepareResult:
    t0 = time.perf_counter()
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
                               | "ReadRaw" >> beam.ParDo(ReadParquetTables(cfg.batch_size)))
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
                       | "ReadOldClean" >> beam.ParDo(ReadParquetTables(cfg.batch_size, {"existing": True}))
                       | "OldCleanKept" >> beam.Map(core.conform, core.KEPT_SCHEMA))
                kept = (kept, old) | "WithOldClean" >> beam.Flatten()
            if cfg.dedupe:
                deduped = (
                    kept | "KeyByPair" >> beam.FlatMap(_key_by_pair, cfg.shuffle_digits)
                    | "GroupDuplicates" >> beam.GroupByKey()
                    | "KeepFirst" >> beam.ParDo(_DedupeFn()).with_outputs(_DedupeFn.REJECTS, main="kept")
                )
                rejects.append(deduped[_DedupeFn.REJECTS])
                kept = deduped.kept
            if cfg.max_translations_per_source:
                capped = (
                    kept | "KeyBySource" >> beam.FlatMap(_key_by_source, cfg.shuffle_digits)
                    | "GroupBySource" >> beam.GroupByKey()
                    | "Cap" >> beam.ParDo(_CapFn(cfg.max_translations_per_source)).with_outputs(_CapFn.REJECTS, main="kept")
                )
                rejects.append(capped[_CapFn.REJECTS])
                kept = capped.kept
            _ = (kept | "CountClean" >> beam.Map(_count_clean)
                 | "WriteClean" >> WritePartitionedTables(CLEAN_PAIRS, clean_w.staging, cfg.rows_per_file,
                                                         fault_point="prepare.part_written"))
            if existing_rejects:
                rejects.append(p | "OldRejectFiles" >> beam.Create(existing_rejects, reshuffle=True)
                               | "ReadOldRejects" >> beam.ParDo(ReadParquetTables(cfg.batch_size))
                               | "OldRejectRows" >> beam.Map(core.conform, core.REJECT_SCHEMA))
            _ = (rejects | "AllRejects" >> beam.Flatten()
                 | "WriteRejects" >> WritePartitionedTables(REJECTS, rejects_w.staging, cfg.rows_per_file,
                                                          fault_point="prepare.part_written"))
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
        clean_m = clean_w.stage(producer=info, stats=run_stats, expected_rows=clean_rows,
                                replace_empty=cfg.replace_empty)
        rejects_m = rejects_w.stage(producer=info, stats=run_stats, expected_rows=stats["rejected"] + old_rejects,
                                    replace_empty=rejects_may_empty)
        commit(layout, [clean_w.move, rejects_w.move])  # both or (after a crash) neither
        clean_w.done()
        rejects_w.done()
    except BaseException:
        clean_w.abort()
        rejects_w.abort()
        raise
    finally:
        errors_path.unlink(missing_ok=True)
    return PrepareResult(clean=clean_m, rejects=rejects_m, stats={k: v for k, v in stats.items()},
                         errors=errors, skipped=skipped, seconds=time.perf_counter() - t0,
                         replaced={CLEAN_PAIRS.name: clean_w.replaced_rows, REJECTS.name: rejects_w.replaced_rows})
