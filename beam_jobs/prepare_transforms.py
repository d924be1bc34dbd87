"""The steps of stage ``prepare`` as composite transforms, each usable and tested on its own.

    ReadPairs        corpus_raw files + input files -> batches of pairs      (+ tagged ``errors``: unreadable inputs)
    ReadLakeTables   a published dataset's files -> tables in a given schema (append mode: the kept corpus)
    NormalizeFilter  batches -> kept rows                                    (+ tagged ``rejects``: filters, eval overlap)
    Dedupe           kept rows -> one row per normalized pair and language   (+ tagged ``rejects``: duplicates)
    CapPerSource     kept rows -> at most ``cap`` translations per source    (+ tagged ``rejects``: source_cap)

Elements are Arrow tables of up to ``batch_size`` rows (kept rows in ``labse_core.prepare.KEPT_SCHEMA``,
rejects in ``REJECT_SCHEMA``), or lists of row dicts straight from a reader, not one element per pair:
the runner moves a few hundred elements per language, and each step works on columns. The decisions
are the per-record functions of ``labse_core.prepare`` (``process_batch``, ``resolve_duplicates``,
``cap_translations``); ``tests/beam_jobs/test_prepare_transforms.py`` checks each composite against them.

Every step counts what it saw in the ``prepare`` namespace (``input_pairs``, ``rejected.<reason>``,
``inputs_read``, ``inputs_unreadable``); the stage checks those counters against the files it writes.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs.io import ReadParquetTables
from labse_core import prepare as core
from labse_core.text.normalize import sentence_key

NAMESPACE = "prepare"
REJECTS = "rejects"  # tag of the rejected rows, next to the kept ones (main output "kept")
ERRORS = "errors"  # tag of the unreadable inputs' messages, next to the batches


def _count(name: str, n: int = 1) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(n)


def _count_reasons(rejects: pa.Table) -> None:
    if rejects.num_rows:
        for item in pc.value_counts(rejects.column("reason")).to_pylist():
            _count(f"rejected.{item['values']}", item["counts"])


# -- read ------------------------------------------------------------------------------------------
class _ReadInputFn(beam.DoFn):
    """An input file -> lists of ``batch_size`` row dicts (``labse_core.prepare.iter_input``); a file
    no reader can read -> one message on the ``errors`` output, counted."""

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
            yield beam.pvalue.TaggedOutput(ERRORS, f"{e}")
        if batch:
            yield batch
        _count("inputs_read")


class ReadPairs(beam.PTransform):
    """Pipeline start -> ``{"batches": ..., "errors": ...}``: the pairs of the corpus_raw files (Arrow
    tables, partition columns added) and of the input files (lists of row dicts), and one message per
    unreadable input file (empty when there are none)."""

    def __init__(self, raw_files: list[str], inputs: list[core.InputSpec], batch_size: int):
        super().__init__()
        if not raw_files and not inputs:
            raise ValueError("ReadPairs: no corpus_raw files and no input files to read")
        self.raw_files, self.inputs, self.batch_size = raw_files, inputs, batch_size

    def expand(self, pbegin):
        batches = []
        if self.raw_files:
            batches.append(pbegin | "RawFiles" >> beam.Create(self.raw_files, reshuffle=True)
                           | "ReadRaw" >> beam.ParDo(ReadParquetTables(self.batch_size)))
        if self.inputs:
            read = (pbegin | "InputFiles" >> beam.Create(self.inputs, reshuffle=True)
                    | "ReadInputs" >> beam.ParDo(_ReadInputFn(self.batch_size)).with_outputs(ERRORS, main="batches"))
            batches.append(read.batches)
            errors = read[ERRORS]
        else:
            errors = pbegin | "NoInputFiles" >> beam.Create([])
        return {"batches": batches | "AllBatches" >> beam.Flatten(), "errors": errors}


class ReadLakeTables(beam.PTransform):
    """Pipeline start -> the rows of a published dataset's files as tables of ``schema`` (partition
    columns from the paths; ``extra`` constant columns, e.g. ``existing=True``, added first)."""

    def __init__(self, files: list[str], batch_size: int, schema: pa.Schema, extra: dict | None = None):
        super().__init__()
        self.files, self.batch_size, self.schema, self.extra = files, batch_size, schema, extra

    def expand(self, pbegin):
        return (pbegin | "Files" >> beam.Create(self.files, reshuffle=True)
                | "Read" >> beam.ParDo(ReadParquetTables(self.batch_size, self.extra))
                | "Conform" >> beam.Map(core.conform, self.schema))


# -- normalize + filter ----------------------------------------------------------------------------
class _ProcessBatchFn(beam.DoFn):
    """A batch (Arrow table from corpus_raw, or row dicts from a reader) -> a table of kept rows
    (main output) and a table of rejects; one ``TablePreparer`` per worker keeps its caches."""

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
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if kept.num_rows:
            yield kept


class NormalizeFilter(beam.PTransform):
    """Batches -> ``.kept`` (normalized rows that pass every filter and share no sentence with an
    evaluation set) and ``.rejects`` (the others, with their reason)."""

    def __init__(self, rules: core.PrepareRules, eval_sets: list[str]):
        super().__init__()
        self.rules, self.eval_sets = rules, eval_sets

    def expand(self, batches):
        return batches | "Process" >> beam.ParDo(_ProcessBatchFn(self.rules, self.eval_sets)).with_outputs(
            REJECTS, main="kept")


# -- dedupe and cap: a shuffle on a key prefix, then the table function per group -----------------------
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


def key_by_pair(table: pa.Table, digits: int):
    """Kept rows keyed for the dedupe shuffle: the language plus the first ``digits`` hex digits of
    the pair digest. Every group of equal pair keys lands in one shard, and a shard holds about
    1/16**digits of a language, which bounds what one worker holds for one huge language."""
    keys = [f"{lang}:{pk[len(lang) + 1 : len(lang) + 1 + digits]}" for lang, pk in zip(
        table.column("lang").to_pylist(), table.column("pair_key").to_pylist(), strict=True)]
    yield from _group_rows(table, keys)


def key_by_source(table: pa.Table, digits: int):
    """Kept rows keyed for the cap on translations: language plus a prefix of the source's key."""
    keys = [f"{lang}:{sentence_key(src)[:digits]}" for lang, src in zip(
        table.column("lang").to_pylist(), table.column("src_text").to_pylist(), strict=True)]
    yield from _group_rows(table, keys)


class _DedupeFn(beam.DoFn):
    def process(self, element):
        _, tables = element
        winners, rejects = core.dedupe_table(pa.concat_tables(list(tables)))
        _count_reasons(rejects)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        yield winners


class Dedupe(beam.PTransform):
    """Kept rows -> ``.kept`` (one row per normalized (language, source, target): the best by
    ``labse_core.prepare.order_key``) and ``.rejects`` (the others: ``duplicate``, or
    ``duplicate_existing`` when the append mode's kept corpus already holds the pair).
    ``digits``: hex digits of the pair digest that shard a language for the shuffle."""

    def __init__(self, digits: int):
        super().__init__()
        self.digits = digits

    def expand(self, kept):
        return (kept | "KeyByPair" >> beam.FlatMap(key_by_pair, self.digits)
                | "GroupDuplicates" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(_DedupeFn()).with_outputs(REJECTS, main="kept"))


class _CapFn(beam.DoFn):
    def __init__(self, cap: int):
        self.cap = cap

    def process(self, element):
        _, tables = element
        kept, dropped = core.cap_table(pa.concat_tables(list(tables)), self.cap)
        _count_reasons(dropped)
        if dropped.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, dropped)
        yield kept


class CapPerSource(beam.PTransform):
    """Kept rows -> ``.kept`` (at most ``cap`` translations of one source sentence per language, the
    best by ``order_key``) and ``.rejects`` (the others, reason ``source_cap``)."""

    def __init__(self, cap: int, digits: int):
        super().__init__()
        self.cap, self.digits = cap, digits

    def expand(self, kept):
        return (kept | "KeyBySource" >> beam.FlatMap(key_by_source, self.digits)
                | "GroupBySource" >> beam.GroupByKey()
                | "Cap" >> beam.ParDo(_CapFn(self.cap)).with_outputs(REJECTS, main="kept"))


def count_clean(table: pa.Table) -> pa.Table:
    """Count a table of final clean rows as ``clean_existing`` (kept from the lake) / ``clean_new``."""
    existing = pc.sum(table.column("existing")).as_py() or 0
    if existing:
        _count("clean_existing", existing)
    if table.num_rows - existing:
        _count("clean_new", table.num_rows - existing)
    return table
