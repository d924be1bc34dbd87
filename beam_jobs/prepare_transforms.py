"""The steps of stage ``prepare`` as composite transforms, each usable and tested on its own.

    ReadPairs        corpus_raw files + input files -> batches of pairs      (+ tagged ``errors``: unreadable inputs)
    ReadLakeTables   a published dataset's files -> tables in a given schema (append mode: the kept corpus)
    NormalizeFilter  batches -> kept rows                                    (+ tagged ``rejects``: filters, eval overlap)
    ReadNormalizeFilter  the two above as one step (what the stage runs: no runner holds the read batches)
    Dedupe           kept rows -> one row per normalized pair and language   (+ tagged ``rejects``: duplicates)
    CapPerSource     kept rows -> at most ``cap`` translations per source    (+ tagged ``rejects``: source_cap)

Elements are Arrow tables of up to ``batch_size`` rows (kept rows in ``labse_core.prepare.KEPT_SCHEMA``,
rejects in ``REJECT_SCHEMA``), or lists of row dicts straight from a reader, not one element per pair:
the runner moves a few hundred elements per language, and each step works on columns. Large TSV inputs
are read in spans (work items), the dedupe and the cap group rows through spill files (``beam_jobs.spill``). The decisions
are the per-record functions of ``labse_core.prepare`` (``process_batch``, ``resolve_duplicates``,
``cap_translations``); ``tests/beam_jobs/test_prepare_transforms.py`` checks each composite against them.

Every step counts what it saw in the ``prepare`` namespace (``input_pairs``, ``rejected.<reason>``,
``inputs_read``, ``inputs_unreadable``); the stage checks those counters against the files it writes.
"""

from __future__ import annotations

import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs import progress
from beam_jobs.io import ReadParquetTables
from beam_jobs.spill import SpillGroup, read_bucket
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


# -- read ----------------------------------------------------------------------------------------
class _ReadFn(beam.DoFn):
    """A work item -> batches: ``("raw", path)`` a corpus_raw Parquet file -> Arrow tables (partition
    columns added); ``("input", spec, span)`` an input file, or one span of a large TSV file -> lists of
    ``batch_size`` row dicts (``labse_core.prepare.iter_input``). An input no reader can read -> one
    message on the ``errors`` output (every span of it says the same; the input is counted once)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.parquet = ReadParquetTables(batch_size)

    def process(self, item):
        if item[0] == "raw":
            yield from self.parquet.process(item[1])
            return
        _, spec, span = item
        first = span is None or span[0] == 0
        batch: list[dict] = []
        try:
            for row in core.iter_input(spec, span):
                batch.append(row)
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
        except (ValueError, OSError) as e:  # ReaderError, CatalogError, PrepareError, UnknownLanguage
            if first:
                _count("inputs_unreadable")
            yield beam.pvalue.TaggedOutput(ERRORS, f"{e}")
        if batch:
            yield batch
        if first:
            _count("inputs_read")


def work_items(raw_files: list[str], inputs: list[core.InputSpec], span_bytes: int = core.SPAN_BYTES) -> list[tuple]:
    """What ``ReadPairs`` hands its workers: every corpus_raw file, every input (large TSV files in
    spans of ``span_bytes``). Planned on the driver: spans number the lines (one pass over the file)."""
    items: list[tuple] = [("raw", f) for f in raw_files]
    for spec in inputs:
        try:
            spans = core.input_spans(spec, span_bytes)
        except (ValueError, OSError):
            spans = [None]  # the reader reports it, as an unreadable input
        items += [("input", spec, span) for span in spans]
    return items


class ReadPairs(beam.PTransform):
    """Pipeline start -> ``{"batches": ..., "errors": ...}``: the pairs of the corpus_raw files (Arrow
    tables, partition columns added) and of the input files (lists of row dicts), and one message per
    unreadable input file and span (empty when there are none). One collection of work items, read by
    one step: nothing is flattened (a flatten of data from two stages is held in the runner's memory)."""

    def __init__(self, raw_files: list[str], inputs: list[core.InputSpec], batch_size: int,
                 span_bytes: int = core.SPAN_BYTES):
        super().__init__()
        if not raw_files and not inputs:
            raise ValueError("ReadPairs: no corpus_raw files and no input files to read")
        self.items, self.batch_size = work_items(raw_files, inputs, span_bytes), batch_size

    def expand(self, pbegin):
        read = (pbegin | "WorkItems" >> beam.Create(self.items, reshuffle=True)
                | "ReadItems" >> beam.ParDo(_ReadFn(self.batch_size)).with_outputs(ERRORS, main="batches"))
        return {"batches": read.batches, "errors": read[ERRORS]}


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

    def __init__(self, rules: core.PrepareRules, eval_sets: list[str], progress_dir: str | None = None):
        self.rules = rules
        self.eval_sets = eval_sets
        self.progress_dir = progress_dir

    def setup(self):
        # Every worker builds the evaluation keys once (Tatoeba: ~220k sentences, a few seconds).
        self.preparer = core.TablePreparer(self.rules, core.load_eval_keys(self.eval_sets, self.rules.normalize))

    def process(self, batch):
        _count("input_pairs", batch.num_rows if isinstance(batch, pa.Table) else len(batch))
        kept, rejects = self.preparer.process(batch)
        _count_reasons(rejects)
        progress.count(self.progress_dir, read=kept.num_rows + rejects.num_rows, kept=kept.num_rows,
                       rejected=rejects.num_rows)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if kept.num_rows:
            yield kept


class NormalizeFilter(beam.PTransform):
    """Batches -> ``.kept`` (normalized rows that pass every filter and share no sentence with an
    evaluation set) and ``.rejects`` (the others, with their reason)."""

    def __init__(self, rules: core.PrepareRules, eval_sets: list[str], progress_dir: str | None = None):
        super().__init__()
        self.rules, self.eval_sets, self.progress_dir = rules, eval_sets, progress_dir

    def expand(self, batches):
        fn = _ProcessBatchFn(self.rules, self.eval_sets, self.progress_dir)
        return batches | "Process" >> beam.ParDo(fn).with_outputs(REJECTS, main="kept")


# -- read + normalize + filter in one step ---------------------------------------------------------
class _ReadNormalizeFn(beam.DoFn):
    """``_ReadFn`` then ``_ProcessBatchFn`` on each batch, in one step: a batch of read pairs is
    normalized and filtered as soon as it is read, so no runner holds the read pairs between two steps
    (the Dask runner keeps a step's whole output per work item). Outputs: kept (main), ``rejects``,
    ``errors``."""

    def __init__(self, batch_size: int, rules: core.PrepareRules, eval_sets: list[str], progress_dir: str | None):
        self.read = _ReadFn(batch_size)
        self.normalize = _ProcessBatchFn(rules, eval_sets, progress_dir)

    def setup(self):
        self.normalize.setup()

    def process(self, item):
        for batch in self.read.process(item):
            if isinstance(batch, beam.pvalue.TaggedOutput):
                yield batch
            else:
                yield from self.normalize.process(batch)


class ReadNormalizeFilter(beam.PTransform):
    """``ReadPairs | NormalizeFilter`` as one step: pipeline start -> ``.kept``, ``.rejects``, ``.errors``."""

    def __init__(self, raw_files: list[str], inputs: list[core.InputSpec], batch_size: int,
                 rules: core.PrepareRules, eval_sets: list[str], span_bytes: int = core.SPAN_BYTES,
                 progress_dir: str | None = None):
        super().__init__()
        if not raw_files and not inputs:
            raise ValueError("ReadNormalizeFilter: no corpus_raw files and no input files to read")
        self.items = work_items(raw_files, inputs, span_bytes)
        self.fn = _ReadNormalizeFn(batch_size, rules, eval_sets, progress_dir)

    def expand(self, pbegin):
        return (pbegin | "WorkItems" >> beam.Create(self.items, reshuffle=True)
                | "ReadNormalize" >> beam.ParDo(self.fn).with_outputs(REJECTS, ERRORS, main="kept"))


# -- dedupe and cap: a shuffle through spill files (beam_jobs.spill), then the table function per bucket ---
SRC_KEY = "src_key"  # the cap's bucket column: ``sentence_key`` of the source, added before the spill


class _DedupeFn(beam.DoFn):
    def process(self, element):
        _, files = element
        winners, rejects = core.dedupe_table(read_bucket(files, core.KEPT_SCHEMA))
        _count_reasons(rejects)
        if rejects.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if winners.num_rows:
            yield winners


class Dedupe(beam.PTransform):
    """Kept rows (one PCollection of tables, or a tuple of them) -> ``.kept`` (one row per normalized
    (language, source, target): the best by ``labse_core.prepare.order_key``) and ``.rejects`` (the
    others: ``duplicate``, or ``duplicate_existing`` when the append mode's kept corpus already holds
    the pair). Rows are grouped on disk in ``folder`` by the first ``digits`` hex digits of the pair
    digest (``16**digits`` buckets; a worker holds one bucket at a time)."""

    def __init__(self, folder: str | os.PathLike[str], digits: int, needed: int = 0):
        super().__init__()
        self.folder, self.digits, self.needed = str(folder), digits, needed

    def expand(self, kept):
        return (kept | "SpillByPair" >> SpillGroup(os.path.join(self.folder, "dedupe"), "pair_key", self.digits,
                                                  self.needed)
                | "KeepFirst" >> beam.ParDo(_DedupeFn()).with_outputs(REJECTS, main="kept"))


def with_source_key(table: pa.Table) -> pa.Table:
    """``table`` with ``SRC_KEY``: the ``sentence_key`` of each source text (the cap's bucket)."""
    return table.append_column(SRC_KEY, pa.array([sentence_key(s) for s in table.column("src_text").to_pylist()],
                                                 pa.string()))


class _CapFn(beam.DoFn):
    def __init__(self, cap: int):
        self.cap = cap

    def process(self, element):
        _, files = element
        table = read_bucket(files, core.KEPT_SCHEMA)
        if SRC_KEY in table.column_names:
            table = table.drop_columns([SRC_KEY])
        kept, dropped = core.cap_table(table, self.cap)
        _count_reasons(dropped)
        if dropped.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTS, dropped)
        if kept.num_rows:
            yield kept


class CapPerSource(beam.PTransform):
    """Kept rows -> ``.kept`` (at most ``cap`` translations of one source sentence per language, the
    best by ``order_key``) and ``.rejects`` (the others, reason ``source_cap``); grouped on disk in
    ``folder`` by a prefix of the source's sentence key, as ``Dedupe`` groups by the pair's."""

    def __init__(self, cap: int, folder: str | os.PathLike[str], digits: int, needed: int = 0):
        super().__init__()
        self.cap, self.folder, self.digits, self.needed = cap, str(folder), digits, needed

    def expand(self, kept):
        parts = list(kept) if isinstance(kept, tuple | list) else [kept]
        keyed = tuple(pc | f"KeyBySource{i or ''}" >> beam.Map(with_source_key) for i, pc in enumerate(parts))
        return (keyed | "SpillBySource" >> SpillGroup(os.path.join(self.folder, "cap"), SRC_KEY, self.digits, self.needed)
                | "Cap" >> beam.ParDo(_CapFn(self.cap)).with_outputs(REJECTS, main="kept"))


def count_clean(table: pa.Table) -> pa.Table:
    """Count a table of final clean rows as ``clean_existing`` (kept from the lake) / ``clean_new``."""
    existing = pc.sum(table.column("existing")).as_py() or 0
    if existing:
        _count("clean_existing", existing)
    if table.num_rows - existing:
        _count("clean_new", table.num_rows - existing)
    return table
