"""Stage ``ingest``: gettext catalogs -> ``corpus_raw`` (Parquet, partitioned by language).

Reads every ``<locale>/LC_MESSAGES/<domain>.mo`` under the configured locale roots (default
``/usr/share/locale``: about 1.8 M human translations of English UI strings on a Debian machine)
plus any ``.po``/``.mo`` files or folders given, and turns each translated entry into an
(English source, language, translation) row, following the pairing policy documented in
``labse_core.gettext_catalog`` (plurals, contexts, fuzzy and untranslated entries).

One Beam element is one catalog file, parsed into one Arrow table, so the per-row cost is that of
the parser, not of Beam. Run it::

    labse ingest                                  # all catalogs of this machine
    labse ingest --path my.po --path po/ --no-system   # only given files
    labse ingest --runner FlinkRunner --beam-arg=--flink_master=host:8081   # on a cluster

Writes ``lake/corpus/raw/lang=xx/part-NNNNN.parquet`` and its ``_manifest.json``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import apache_beam as beam
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.counters import counters
from beam_jobs.failures import stage_failures
from beam_jobs.io import WriteValue, sorted_lines
from beam_jobs.options import BeamConfig
from labse_core import langcodes
from labse_core.gettext_catalog import CatalogError, catalog_pairs, locale_from_path, read_catalog
from storage.datasets import DatasetWriter, current_manifest, part_file_name, partition_path
from storage.io import write_parquet
from storage.layout import Layout
from storage.locks import lake_lock
from storage.manifest import Manifest
from storage.schemas import RAW_PAIRS

NAMESPACE = "ingest"
CATALOG_SUFFIXES = (".mo", ".gmo", ".po")


class GettextIngestConfig(BaseModel):
    """What to read and how; every field has a default that reads this machine's catalogs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    locale_roots: list[Path] = Field(
        default_factory=lambda: [Path("/usr/share/locale")],
        description="Folders laid out as <locale>/LC_MESSAGES/<domain>.mo (system catalogs).",
    )
    paths: list[Path] = Field(
        default_factory=list, description="Extra .po/.mo files, or folders searched recursively for them."
    )
    languages: list[str] | None = Field(
        None, description="Keep only these languages (any code or locale; normalized). None keeps all."
    )
    domains: list[str] | None = Field(None, description="Keep only these text domains (gtk30, coreutils ...).")
    max_catalogs: int | None = Field(None, ge=1, description="Read at most this many catalogs (small presets).")
    include_fuzzy: bool = Field(False, description="Keep entries flagged fuzzy (unchecked translations).")
    skip_bad_catalogs: bool = Field(
        False, description="Count malformed catalogs and go on, instead of failing the stage on the first one."
    )
    source_language: str = Field("en", description="Language of msgid (gettext convention: English).")
    rows_per_file: int = Field(250_000, ge=1, description="Target rows per Parquet file within a partition.")
    mode: Literal["overwrite", "append", "create"] = Field(
        "overwrite",
        description="What happens to a corpus_raw already published: overwrite replaces it, append keeps its rows "
        "and adds the new ones, create refuses to touch it (what `labse ingest` does without --replace/--append).",
    )
    replace_empty: bool = Field(False, description="Publish an empty corpus_raw over a non-empty one (refused by default).")
    beam: BeamConfig = Field(default_factory=BeamConfig)


class CatalogRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    locale: str
    lang: str
    domain: str | None
    bytes: int


class FileGroup(BaseModel):
    """Catalogs of one language that go into one Parquet file."""

    model_config = ConfigDict(frozen=True)
    lang: str
    index: int
    refs: list[CatalogRef]


class IngestResult(BaseModel):
    manifest: Manifest
    stats: dict[str, int | list[str]]
    errors: list[str]
    seconds: float
    catalogs: int
    replaced_rows: int = Field(0, description="Rows of the version this run replaced (append: kept in the new one).")


class IngestError(RuntimeError):
    """The stage stopped; the message names the file and line."""


def discover_catalogs(cfg: GettextIngestConfig, stats: Counter | None = None) -> list[CatalogRef]:
    """List catalog files and their language (paths and headers only: the entries are read by the
    workers), applying the language and domain filters."""
    stats = stats if stats is not None else Counter()
    found: list[Path] = []
    for root in cfg.locale_roots:
        if not root.is_dir():
            raise FileNotFoundError(f"locale root {root} does not exist or is not a folder")
        found += sorted(p for p in root.glob("*/LC_MESSAGES/*") if p.suffix in CATALOG_SUFFIXES)
    for p in cfg.paths:
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix in CATALOG_SUFFIXES and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"catalog path {p} does not exist")
    wanted = {langcodes.normalize(x) for x in cfg.languages} if cfg.languages else None
    source = langcodes.base_language(cfg.source_language)
    refs = []
    for p in found:
        locale, domain = locale_from_path(p)
        if cfg.domains and domain not in cfg.domains:
            continue
        if locale is None or p.parent.name != "LC_MESSAGES":
            # A loose file (po/de.po): its header is authoritative. Parsing it here also reports a
            # malformed user file before any work starts.
            locale = read_catalog(p).language or locale
            if not locale:
                raise CatalogError(p, "no language: not under <locale>/LC_MESSAGES/ and no 'Language:' header")
        try:
            lang = langcodes.normalize(locale)
        except langcodes.UnknownLanguage as e:
            if p.parent.name == "LC_MESSAGES":
                stats["catalogs_unknown_locale"] += 1  # a system folder we cannot name: counted, skipped
                continue
            raise CatalogError(p, f"unknown language {locale!r}: {e}") from None
        if langcodes.base_language(lang) == source:
            stats["catalogs_source_language"] += 1  # en_GB, en@quot: English -> English
            continue
        if wanted is not None and lang not in wanted:
            continue
        refs.append(CatalogRef(path=str(p), locale=locale, lang=lang, domain=domain, bytes=p.stat().st_size))
        if cfg.max_catalogs and len(refs) >= cfg.max_catalogs:
            break
    return refs


# Compiled catalogs hold ~90 bytes per entry on this machine; used only to size files.
BYTES_PER_ROW_ESTIMATE = 100


def plan_files(refs: list[CatalogRef], rows_per_file: int) -> list[FileGroup]:
    """Split each language's catalogs into ~equal-size groups, one output file each (greedy by size).

    Planning on the driver from file sizes means the workers exchange only file names: the parsed
    rows never travel through a shuffle, and each worker holds one file's rows at a time.
    """
    by_lang: dict[str, list[CatalogRef]] = {}
    for r in refs:
        by_lang.setdefault(r.lang, []).append(r)
    groups = []
    for lang, items in sorted(by_lang.items()):
        total = sum(r.bytes for r in items)
        n = max(1, math.ceil(total / (rows_per_file * BYTES_PER_ROW_ESTIMATE)))
        bins: list[list[CatalogRef]] = [[] for _ in range(n)]
        sizes = [0] * n
        for r in sorted(items, key=lambda r: (-r.bytes, r.path)):
            i = sizes.index(min(sizes))
            bins[i].append(r)
            sizes[i] += r.bytes
        groups += [FileGroup(lang=lang, index=i, refs=sorted(b, key=lambda r: r.path)) for i, b in enumerate(bins) if b]
    return groups


def catalog_table(ref: CatalogRef, cfg: GettextIngestConfig, stats: Counter) -> pa.Table:
    """Parse one catalog into a table in ``corpus_raw``'s file schema."""
    catalog = read_catalog(ref.path)
    rows = list(catalog_pairs(catalog, include_fuzzy=cfg.include_fuzzy, stats=stats))
    stats["catalogs_read"] += 1
    n = len(rows)
    return pa.Table.from_pydict(
        {
            "src_lang": [langcodes.normalize(cfg.source_language)] * n,
            "src_text": [r.src_text for r in rows],
            "tgt_text": [r.tgt_text for r in rows],
            "locale": [ref.locale] * n,
            "source": [f"gettext-{catalog.format}"] * n,
            "domain": [ref.domain] * n,
            "origin": [ref.path] * n,
            "line": [r.line for r in rows],
            "context": [r.context for r in rows],
            "plural_form": [r.plural_form for r in rows],
        },
        schema=RAW_PAIRS.file_schema,
    )


class _ParseAndWriteFn(beam.DoFn):
    """One element = one planned output file: parse its catalogs, write one Parquet file."""

    ERRORS = "errors"

    def __init__(self, cfg: GettextIngestConfig, staging: str, tag: str = ""):
        self.cfg = cfg
        self.staging = staging
        self.tag = tag  # appended runs name their files apart from the kept ones

    def process(self, group: FileGroup):
        stats: Counter = Counter()
        tables = []
        for ref in group.refs:
            try:
                tables.append(catalog_table(ref, self.cfg, stats))
            except (CatalogError, OSError) as e:
                stats["catalogs_malformed"] += 1
                yield beam.pvalue.TaggedOutput(self.ERRORS, str(e))
        rows = 0
        if tables:
            table = pa.concat_tables(tables)
            path = Path(self.staging) / partition_path(RAW_PAIRS, {"lang": group.lang}) / part_file_name(group.index, self.tag)
            rows = write_parquet(RAW_PAIRS, table, path) if table.num_rows else 0
        stats["rows_written"] += rows
        for key, value in stats.items():
            beam.metrics.Metrics.counter(NAMESPACE, key).inc(value)
        yield {"lang": group.lang, "index": group.index, "rows": rows}


def run(cfg: GettextIngestConfig, layout: Layout, run_id: str | None = None, producer: dict | None = None) -> IngestResult:
    """Run the stage. A malformed catalog (unless ``skip_bad_catalogs``) raises ``CatalogError`` /
    ``IngestError`` naming the file and line, and leaves the published dataset untouched."""
    layout.ensure()
    with lake_lock(layout, "ingest"), stage_failures("ingest", layout):
        return _run(cfg, layout, run_id, producer)


def _run(cfg: GettextIngestConfig, layout: Layout, run_id: str | None, producer: dict | None) -> IngestResult:
    t0 = time.perf_counter()
    driver_stats: Counter = Counter()
    refs = discover_catalogs(cfg, driver_stats)
    if not refs:
        raise IngestError(no_catalogs_message(cfg, driver_stats))
    old = current_manifest(layout, RAW_PAIRS)
    old_rows = old.rows if old is not None else 0
    if cfg.mode == "create" and old_rows:
        raise IngestError(
            f"corpus_raw already holds {old_rows:,} pairs ({layout.dataset_dir(RAW_PAIRS.relpath)}); "
            "--replace replaces them with these catalogs, --append adds these catalogs to them"
        )
    if cfg.mode == "append" and old is not None and (again := already_ingested(layout, old, refs)):
        more = f" (and {len(again) - 1} more)" if len(again) > 1 else ""
        raise IngestError(f"catalog {again[0]}{more} is already in corpus_raw: appending it again would duplicate "
                          "its pairs; --replace reads everything anew")
    groups = plan_files(refs, cfg.rows_per_file)
    with DatasetWriter(layout, RAW_PAIRS, run_id) as writer:
        errors_path = writer.staging.parent / f".errors-{writer.run_id}.txt"
        kept_rows = _keep_old_files(layout, old, writer.staging) if cfg.mode == "append" and old is not None else 0
        tag = writer.run_id[:8] if kept_rows else ""
        try:
            with cfg.beam.pipeline() as p:
                out = (
                    p
                    | "PlannedFiles" >> beam.Create(groups, reshuffle=True)
                    | "ParseAndWrite"
                    >> beam.ParDo(_ParseAndWriteFn(cfg, str(writer.staging), tag)).with_outputs(_ParseAndWriteFn.ERRORS, main="files")
                )
                _ = (
                    out[_ParseAndWriteFn.ERRORS]
                    | "CollectErrors" >> beam.combiners.ToList()  # malformed files only: small
                    | "WriteErrors" >> WriteValue(errors_path, sorted_lines)
                )
            errors = [e for e in errors_path.read_text().splitlines() if e] if errors_path.exists() else []
        finally:
            errors_path.unlink(missing_ok=True)
        stats = dict(driver_stats) | counters(p.result, NAMESPACE)
        if errors and not cfg.skip_bad_catalogs:
            more = f" (and {len(errors) - 1} more malformed catalogs)" if len(errors) > 1 else ""
            raise IngestError(f"malformed catalog: {errors[0]}{more}")
        if errors and not stats.get("catalogs_read"):
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise IngestError(f"every catalog was malformed, nothing published: {errors[0]}{more}")
        stats["malformed_catalogs"] = len(errors)
        stats["rows_kept_from_previous_version"] = kept_rows
        manifest = writer.stage(
            producer={"stage": "ingest", "run_id": writer.run_id, **(producer or {}), "config": cfg.model_dump(mode="json")},
            stats=stats | {"malformed_catalog_errors": errors},
            expected_rows=stats.get("pairs", 0) + kept_rows,
            replace_empty=cfg.replace_empty,
        )
    # published when the `with` block ends
    return IngestResult(
        manifest=manifest, stats=stats, errors=errors, seconds=time.perf_counter() - t0, catalogs=len(refs),
        replaced_rows=writer.replaced_rows,
    )


def no_catalogs_message(cfg: GettextIngestConfig, stats: Counter) -> str:
    where = ", ".join(map(str, [*cfg.locale_roots, *cfg.paths])) or "nowhere (no --path given, and --no-system)"
    skipped = [f"{n} {what}" for what, key in (("English-variant catalogs (en_GB, en@quot ...)", "catalogs_source_language"),
                                               ("catalogs of unknown locales", "catalogs_unknown_locale"))
               if (n := stats.get(key))]
    why = f" (skipped: {', '.join(skipped)})" if skipped else ""
    langs = f" for languages {', '.join(cfg.languages)}" if cfg.languages else ""
    return f"no gettext catalogs found{langs} in {where}{why}"


def already_ingested(layout: Layout, old: Manifest, refs: list[CatalogRef]) -> list[str]:
    """The catalogs of ``refs`` whose pairs the published corpus_raw already holds (by ``origin``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = layout.dataset_dir(RAW_PAIRS.relpath)
    seen: set[str] = set()
    for f in old.files:  # one column, dictionary-encoded in the files: cheap
        seen.update(pc.unique(pq.read_table(root / f.path, columns=["origin"]).column("origin")).to_pylist())
    return [r.path for r in refs if r.path in seen]


def _keep_old_files(layout: Layout, old: Manifest, staging: Path) -> int:
    """Append mode: the published files go into the new version unchanged (hard links where the
    filesystem allows, so nothing is copied; files are never modified in place)."""
    root = layout.dataset_dir(RAW_PAIRS.relpath)
    for f in old.files:
        dst = staging / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / f.path, dst)
        except OSError:
            shutil.copy2(root / f.path, dst)
    return old.rows
