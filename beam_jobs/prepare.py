"""Stage ``prepare``: corpora -> ``corpus_clean`` + ``corpus_rejects``, every pair accounted for.

    Prepare (PreparePairs, the composites of beam_jobs.prepare_transforms):
      ReadNormalizeFilter (one step: ReadPairs, then NormalizeFilter on each batch)
        read           corpus_raw and/or files: gettext, Moses, TSV, TMX   -> batches (+ errors: unreadable inputs)
        normalize      normalize -> eval_overlap -> filters                 -> kept (+ rejects)
      Dedupe           one row per normalized pair and language             -> kept (+ rejects: duplicate)
      CapPerSource     optional cap on translations per source              -> kept (+ rejects: source_cap)
    WriteClean / WriteRejects   clean rows by language, rejects by reason   (beam_jobs.io.WritePartitionedTables)
    WriteErrors                 the unreadable inputs, for the driver       (beam_jobs.io.WriteValue)

Nothing the size of the corpus passes through the runner's memory: the dedupe and the cap group rows
through spill files (``beam_jobs.spill``, under ``$LABSE_SPILL_DIR`` or the lake's staging area, removed
at the end), rejects are written in the stage that makes them, a large TSV input is read in spans by
every worker; on a terminal, ``beam_jobs.progress`` shows pairs read per second, kept and rejected.

The driver then checks the counters (``input pairs == clean + rejected``; each dataset's files hold
exactly what was counted), writes both manifests (they record the counters) and publishes both
datasets together, or nothing. ``mode="append"`` dedupes new input against the clean corpus already
in the lake (the new version holds the old rows plus the new ones). Run it::

    labse prepare                                    # corpus_raw (from `labse ingest`) -> clean corpus
    labse prepare --input corpus.de --input opus.de-en.tmx --input data.tsv --langs de,en
    labse prepare --runner dask --workers 4          # on a dask.distributed cluster (beam_jobs/runners/dask)
    labse prepare --runner FlinkRunner --beam-arg=--flink_master=host:8081
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs import prepare_transforms as steps
from beam_jobs import progress
from beam_jobs.counters import counters
from beam_jobs.failures import stage_failures
from beam_jobs.io import WritePartitionedTables, WriteValue, sorted_lines
from beam_jobs.options import BeamConfig
from beam_jobs.prepare_transforms import NAMESPACE
from beam_jobs.spill import spill_folder
from labse_core import prepare as core
from labse_core.langcodes import normalize
from storage.datasets import DatasetWriter, check_replace, current_manifest, publish_together
from storage.layout import Layout, default_eval_sets
from storage.locks import lake_lock
from storage.manifest import Manifest
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, DatasetSpec


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
    shuffle_digits: int | None = Field(
        None, ge=0, le=4,
        description="Hex digits of the pair digest that bucket the corpus for the dedupe (and cap), which "
        "groups it on disk: 16**n buckets, one held by a worker at a time. None: from the input's size "
        "(2 up to ~6 GiB of input, then 3, 4).",
    )
    span_bytes: int = Field(
        core.SPAN_BYTES, ge=1 << 16,
        description="A TSV input larger than this is read in spans of about this many bytes, by all workers at once.",
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
    spill_bytes: int = Field(0, description="Largest size of the dedupe's (and cap's) spill files on disk.")

    @property
    def input_pairs(self) -> int:
        return self.stats.get("input_pairs", 0)


class PrepareError(RuntimeError):
    """The stage stopped; nothing was published."""


class PreparePairs(beam.PTransform):
    """The stage's whole graph: pipeline start -> ``{"clean": ..., "rejects": ..., "errors": ...}``.

    ``ReadNormalizeFilter`` (+ the lake's clean corpus in append mode) ``| Dedupe | CapPerSource``;
    the rejects of every step (+ the lake's rejects in append mode), and the unreadable inputs' messages.
    ``raw_files``/``existing_clean``/``existing_rejects``: Parquet files to read; ``spill``: the folder
    of the dedupe's and the cap's spill files (``beam_jobs.spill``). "clean" and "rejects" are tuples of
    collections, for ``WritePartitionedTables``: nothing the size of the corpus passes through the
    runner's memory.
    """

    def __init__(self, cfg: PrepareConfig, raw_files: Sequence[str], spill: str | Path,
                 existing_clean: Sequence[str] = (), existing_rejects: Sequence[str] = ()):
        super().__init__()
        self.cfg, self.raw_files, self.spill = cfg, list(raw_files), spill
        self.existing_clean, self.existing_rejects = list(existing_clean), list(existing_rejects)
        size = input_bytes(cfg, [*self.raw_files, *self.existing_clean])
        self.digits = cfg.shuffle_digits if cfg.shuffle_digits is not None else auto_digits(size)
        self.spill_bytes = size  # about what the spill takes on disk (for the message of a full disk)

    def expand(self, pbegin):
        cfg, folder, digits, needed = self.cfg, str(self.spill), self.digits, self.spill_bytes
        processed = pbegin | "ReadNormalizeFilter" >> steps.ReadNormalizeFilter(
            self.raw_files, cfg.inputs, cfg.batch_size, cfg.rules, [str(x) for x in cfg.eval_sets], cfg.span_bytes,
            folder)
        kept, rejects = [processed.kept], [processed[steps.REJECTS]]
        if self.existing_clean:
            kept.append(pbegin | "ReadOldClean" >> steps.ReadLakeTables(self.existing_clean, cfg.batch_size,
                                                                        core.KEPT_SCHEMA, {"existing": True}))
        if cfg.dedupe:
            deduped = tuple(kept) | "Dedupe" >> steps.Dedupe(folder, digits, needed)
            kept = [deduped.kept]
            rejects.append(deduped[steps.REJECTS])
        if cfg.max_translations_per_source:
            capped = tuple(kept) | "CapPerSource" >> steps.CapPerSource(cfg.max_translations_per_source, folder,
                                                                         digits, needed)
            kept = [capped.kept]
            rejects.append(capped[steps.REJECTS])
        if self.existing_rejects:
            rejects.append(pbegin | "ReadOldRejects" >> steps.ReadLakeTables(self.existing_rejects, cfg.batch_size,
                                                                             core.REJECT_SCHEMA))
        # Tuples, not flattened: each part is written in the stage that makes it.
        return {"clean": tuple(pc | f"CountClean{i or ''}" >> beam.Map(steps.count_clean) for i, pc in enumerate(kept)),
                "rejects": tuple(rejects),
                "errors": processed[steps.ERRORS]}


def input_bytes(cfg: PrepareConfig, parquet_files: Sequence[str]) -> int:
    """Bytes of everything the run reads (for the bucket count and the spill's expected size)."""
    total = 0
    for f in [*parquet_files, *(str(spec.path) for spec in cfg.inputs)]:
        with contextlib.suppress(OSError):
            total += os.path.getsize(f) if os.path.isfile(f) else sum(
                p.stat().st_size for p in Path(f).rglob("*") if p.is_file())
    return total


def auto_digits(size: int, rows_per_bucket: int = 400_000) -> int:
    """Hex digits for ``size`` input bytes: 16**n buckets of at most ~``rows_per_bucket`` pairs each
    (a pair takes >= ~60 bytes of input), at least 2 digits (256 buckets)."""
    digits = 2
    while digits < 4 and size / 60 / 16**digits > rows_per_bucket:
        digits += 1
    return digits


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
    with DatasetWriter(layout, CLEAN_PAIRS, run_id) as clean_w, DatasetWriter(layout, REJECTS, clean_w.run_id) as rejects_w:
        errors_path = layout.staging / f".errors-{clean_w.run_id}.txt"
        try:
            with spill_folder(layout.staging, clean_w.run_id) as spill, progress.watch(spill, "prepare") as seen:
                with cfg.beam.pipeline() as p:
                    out = p | "Prepare" >> PreparePairs(cfg, raw_files, spill, existing_clean, existing_rejects)
                    _ = out["clean"] | "WriteClean" >> WritePartitionedTables(
                        CLEAN_PAIRS, clean_w.staging, cfg.rows_per_file, fault_point="prepare.part_written")
                    _ = out["rejects"] | "WriteRejects" >> WritePartitionedTables(
                        REJECTS, rejects_w.staging, cfg.rows_per_file, fault_point="prepare.part_written")
                    _ = (out["errors"] | "CollectErrors" >> beam.combiners.ToList()
                         | "WriteErrors" >> WriteValue(errors_path, sorted_lines))
            # every span of an unreadable TSV input says the same: one message per input
            errors = sorted({e for e in errors_path.read_text().splitlines() if e}) if errors_path.exists() else []
        finally:
            errors_path.unlink(missing_ok=True)
        stats, rejected = _account(cfg, counters(p.result, NAMESPACE), errors, raw_files)
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
        publish_together(layout, [clean_w, rejects_w])  # both or (after a crash) neither
    return PrepareResult(clean=clean_m, rejects=rejects_m, stats=stats, errors=errors, skipped=skipped,
                         seconds=time.perf_counter() - t0, spill_bytes=seen.peak_bytes,
                         replaced={CLEAN_PAIRS.name: clean_w.replaced_rows, REJECTS.name: rejects_w.replaced_rows})


def _account(cfg: PrepareConfig, stats: dict[str, int], errors: list[str], raw_files: list[str]) -> tuple[dict, Counter]:
    """The run's counters, completed (``rejected``, zeros), and its rejects by reason; raises
    ``PrepareError`` for unreadable inputs (unless skipped) and when ``input pairs != clean + rejected``."""
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
    if stats["input_pairs"] != stats["clean_new"] + stats["rejected"]:
        raise PrepareError(
            f"accounting failed: {stats['input_pairs']} input pairs != {stats['clean_new']} clean + "
            f"{stats['rejected']} rejected; nothing published"
        )
    return stats, rejected
