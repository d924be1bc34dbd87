"""Each composite of ``beam_jobs.prepare_transforms`` on its own, with Beam's ``TestPipeline`` and
``assert_that``, against the per-record functions of ``labse_core.prepare`` on real gettext catalogs
(German and French GNU tools: they share many messages, and translate one English source differently).

The runner is named: ``FnApiRunner`` runs in this process and never downloads Prism."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import prepare_transforms as steps
from beam_jobs.counters import counters
from beam_jobs.io import ReadParquetTables, WriteValue, sorted_lines
from labse_core import prepare as core
from labse_core.prepare import InputSpec
from labse_core.text.normalize import sentence_key
from storage.io import write_parquet
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS
from tests.conftest import LOCALE_ROOT

CATALOGS = [f"{lang}/LC_MESSAGES/{name}.mo" for lang in ("de", "fr") for name in ("coreutils", "grep", "findutils", "diffutils")]
KEPT = [f.name for f in CLEAN_PAIRS.schema]  # what the clean corpus stores of a kept row
REJECT = [f.name for f in REJECTS.schema]


def pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner=FnApiRunner())


def project(rows, fields) -> list[str]:
    """Rows as short digests of their ``fields``: sortable (``equal_to`` compares in n log n) and small
    (the expected list is pickled into the pipeline)."""
    return [hashlib.blake2b(repr(tuple(r.get(c) for c in fields)).encode(), digest_size=8).hexdigest() for r in rows]


def rows_of(element) -> list[dict]:
    """An element between the steps (an Arrow table, or a reader's list of row dicts) -> row dicts."""
    return element.to_pylist() if isinstance(element, pa.Table) else list(element)


def projected(fields):
    def f(element):
        return project(rows_of(element), fields)
    return f


@pytest.fixture(scope="module")
def catalog_rows(real_catalogs) -> list[dict]:
    paths = [LOCALE_ROOT / c for c in CATALOGS if (LOCALE_ROOT / c).exists()]
    if len(paths) < 4:
        pytest.skip("not enough GNU tool catalogs under /usr/share/locale")
    rows = [r for p in paths for r in core.iter_input(InputSpec(path=p))]
    assert len(rows) > 3000
    return rows


@pytest.fixture(scope="module")
def eval_file(catalog_rows, tmp_path_factory) -> Path:
    """An evaluation set holding some of the catalogs' own sentences, on either side."""
    path = tmp_path_factory.mktemp("eval") / "eval.txt"
    texts = [r["tgt_text"] for r in catalog_rows[::97]] + [r["src_text"] for r in catalog_rows[::131]]
    path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def processed(catalog_rows, eval_file):
    """The per-record reference: ``process_batch`` over all rows."""
    return core.process_batch(catalog_rows, core.PrepareRules(), core.load_eval_keys([str(eval_file)]))


def kept_files(rows: list[dict], where: Path, n: int = 3) -> list[str]:
    """Rows in ``KEPT_SCHEMA`` as ``n`` Parquet files, for ``read_kept`` (a pipeline reads its input
    instead of carrying it pickled)."""
    table = core.conform(pa.Table.from_pylist([r | {"existing": bool(r.get("existing"))} for r in rows]), core.KEPT_SCHEMA)
    size = -(-table.num_rows // n)
    where.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(0, table.num_rows, size):
        files.append(str(where / f"part-{i}.parquet"))
        pq.write_table(table.slice(i, size), files[-1])
    return files


def read_kept(p, files: list[str], label: str = "Kept"):
    """The tables between the steps (``KEPT_SCHEMA``), read from ``files``."""
    return (p | f"{label}Files" >> beam.Create(files, reshuffle=False)
            | f"Read{label}" >> beam.ParDo(ReadParquetTables(700)) | f"Conform{label}" >> beam.Map(core.conform, core.KEPT_SCHEMA))


def batches_of(spec: InputSpec) -> list[list[dict]]:
    rows = list(core.iter_input(spec))
    return [rows[i:i + 500] for i in range(0, len(rows), 500)]


def test_read_pairs_reads_raw_files_and_inputs_and_names_the_unreadable(tmp_path, catalog_rows):
    raw = core.conform(pa.table({
        "src_lang": ["en"] * 3, "src_text": ["File", "Open", "Save"], "tgt_text": ["Datei", "Öffnen", "Speichern"],
        "locale": ["de"] * 3, "source": ["gettext-po"] * 3, "domain": [None] * 3, "origin": ["x.po"] * 3,
        "line": pa.array([1, 2, 3], pa.int64()), "context": [None] * 3, "plural_form": pa.nulls(3, pa.int64()),
    }), RAW_PAIRS.file_schema)
    raw_file = tmp_path / "raw" / "lang=de" / "part-00000.parquet"
    write_parquet(RAW_PAIRS, raw, raw_file)
    tsv = tmp_path / "ui.tsv"
    pairs = [(r["src_text"], r["tgt_text"]) for r in catalog_rows if "\n" not in r["src_text"] + r["tgt_text"]
             and "\t" not in r["src_text"] + r["tgt_text"]][:30]
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs) + "only one field\n")
    bad = tmp_path / "bad.tmx"
    bad.write_text('<tmx><body><tu><tuv xml:lang="en"><seg>Hi</seg></tuv>\n</body></tmx>')
    inputs = [InputSpec(path=tsv, langs=("en", "de")), InputSpec(path=bad, langs=("en", "de"))]
    want = [{"src_lang": "en", "lang": "de", "src_text": s, "tgt_text": t}
            for s, t in [("File", "Datei"), ("Open", "Öffnen"), ("Save", "Speichern"), *pairs]]
    want.append({"tgt_text": "only one field"})  # a reader reject travels with the batch
    fields = ("src_lang", "lang", "src_text", "tgt_text")
    with pipeline() as p:
        out = p | steps.ReadPairs([str(raw_file)], inputs, batch_size=7)
        assert_that(out["batches"] | beam.FlatMap(projected(fields)), equal_to(project(want, fields)), label="Pairs")
        # batches of at most 7 rows: the raw file's 3, then the TSV's 31 rows (a reject included) in 7s
        assert_that(out["batches"] | beam.Map(lambda b: len(rows_of(b))), equal_to([3, 7, 7, 7, 7, 3]), label="Batches")
        assert_that(out["errors"] | beam.Map(lambda e: "bad.tmx" in e), equal_to([True]), label="Errors")
    assert counters(p.result, steps.NAMESPACE) == {"inputs_read": 2, "inputs_unreadable": 1}


def test_normalize_filter_decides_as_process_batch(catalog_rows, eval_file, processed):
    kept, rejects = processed
    assert {"copy", "eval_overlap"} <= {r["reason"] for r in rejects}
    specs = [InputSpec(path=LOCALE_ROOT / c) for c in CATALOGS if (LOCALE_ROOT / c).exists()]
    with pipeline() as p:
        out = (p | beam.Create(specs, reshuffle=False) | beam.FlatMap(batches_of)  # batches as ReadPairs makes them
               | steps.NormalizeFilter(core.PrepareRules(), [str(eval_file)]))
        assert_that(out.kept | "KeptRows" >> beam.FlatMap(projected(KEPT)), equal_to(project(kept, KEPT)), label="Kept")
        assert_that(out[steps.REJECTS] | "RejectRows" >> beam.FlatMap(projected(REJECT)),
                    equal_to(project(rejects, REJECT)), label="Rejects")
    stats = counters(p.result, steps.NAMESPACE)
    assert stats.pop("input_pairs") == len(catalog_rows)
    assert stats == {f"rejected.{k}": v for k, v in Counter(r["reason"] for r in rejects).items()}


def _resolve_all(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["pair_key"], []).append(r)
    winners, losers = [], []
    for g in groups.values():
        w, lost = core.resolve_duplicates(g)
        winners.append(w)
        losers += lost
    return winners, losers


@pytest.mark.parametrize("digits", [0, 2])
def test_dedupe_keeps_what_resolve_duplicates_keeps(processed, digits, tmp_path):
    kept, _ = processed
    winners, losers = _resolve_all(kept)
    assert len(losers) > 100  # the GNU tools share many messages
    with pipeline() as p:
        out = read_kept(p, kept_files(kept, tmp_path)) | steps.Dedupe(tmp_path / "spill", digits)
        assert_that(out.kept | "KeptRows" >> beam.FlatMap(projected(KEPT)), equal_to(project(winners, KEPT)), label="Kept")
        assert_that(out[steps.REJECTS] | "RejectRows" >> beam.FlatMap(projected(REJECT)),
                    equal_to(project(losers, REJECT)), label="Rejects")
    assert counters(p.result, steps.NAMESPACE) == {"rejected.duplicate": len(losers)}


def test_dedupe_prefers_the_published_row_of_a_pair(processed, tmp_path):
    """Append mode: rows of the published corpus (``existing``) win, new copies are ``duplicate_existing``."""
    kept, _ = processed
    published = [r | {"existing": True} for r in {r["pair_key"]: r for r in kept[:300]}.values()]
    new = [r | {"existing": False} for r in kept[200:600]]  # overlaps the published rows
    winners, losers = _resolve_all(published + new)
    assert {"duplicate", "duplicate_existing"} <= {r["reason"] for r in losers}
    fields = [*KEPT, "existing"]
    with pipeline() as p:
        both = (read_kept(p, kept_files(published, tmp_path / "old"), "Old"), read_kept(p, kept_files(new, tmp_path / "new")))
        out = both | steps.Dedupe(tmp_path / "spill", 1)  # a tuple: each part spills in its own stage
        assert_that(out.kept | "KeptRows" >> beam.FlatMap(projected(fields)), equal_to(project(winners, fields)),
                    label="Kept")
        assert_that(out[steps.REJECTS] | "RejectRows" >> beam.FlatMap(projected(REJECT)),
                    equal_to(project(losers, REJECT)), label="Rejects")


def test_cap_per_source_keeps_what_cap_translations_keeps(processed, tmp_path):
    kept, _ = processed
    deduped = list({r["pair_key"]: r for r in sorted(kept, key=core.order_key, reverse=True)}.values())
    # Rows whose order_key ties inside a group (plural forms of one entry) may be capped either way: left out.
    seen = Counter((r["lang"], sentence_key(r["src_text"]), core.order_key(r)) for r in deduped)
    rows = [r for r in deduped if seen[(r["lang"], sentence_key(r["src_text"]), core.order_key(r))] == 1]
    by_source: dict[tuple, list[dict]] = {}
    for r in rows:
        by_source.setdefault((r["lang"], sentence_key(r["src_text"])), []).append(r)
    capped, dropped = [], []
    for g in by_source.values():
        k, d = core.cap_translations(g, 1)
        capped += k
        dropped += d
    assert len(dropped) > 20  # one English source, several translations across the catalogs
    with pipeline() as p:
        out = read_kept(p, kept_files(rows, tmp_path)) | steps.CapPerSource(1, tmp_path / "spill", digits=1)
        assert_that(out.kept | "KeptRows" >> beam.FlatMap(projected(KEPT)), equal_to(project(capped, KEPT)), label="Kept")
        assert_that(out[steps.REJECTS] | "RejectRows" >> beam.FlatMap(projected(REJECT)),
                    equal_to(project(dropped, REJECT)), label="Rejects")
    assert counters(p.result, steps.NAMESPACE) == {"rejected.source_cap": len(dropped)}


def test_write_value_writes_one_file_for_the_driver(tmp_path):
    with pipeline() as p:
        errors = p | "Errors" >> beam.Create(["b: broken", "a: unreadable"])
        _ = errors | beam.combiners.ToList() | WriteValue(tmp_path / "errors.txt", sorted_lines)
        _ = p | "None" >> beam.Create([]) | "Empty" >> beam.combiners.ToList() | "WriteEmpty" >> WriteValue(
            tmp_path / "none.txt", sorted_lines)
    assert (tmp_path / "errors.txt").read_text() == "a: unreadable\nb: broken"
    assert (tmp_path / "none.txt").read_text() == ""


def test_read_normalize_filter_in_one_step_equals_the_two_steps(tmp_path, eval_file):
    """The stage's fused step gives what ReadPairs | NormalizeFilter give: kept rows, rejects (reader
    rejects included), the unreadable input's message, the same counters."""
    specs = [InputSpec(path=LOCALE_ROOT / c) for c in CATALOGS if (LOCALE_ROOT / c).exists()]
    tsv = tmp_path / "ui.tsv"
    tsv.write_text("Open file\tDatei öffnen\n" * 3 + "only one field\n")
    bad = tmp_path / "bad.tmx"
    bad.write_text('<tmx><body><tu><tuv xml:lang="en"><seg>Hi</seg></tuv>\n</body></tmx>')
    inputs = [*specs, InputSpec(path=tsv, langs=("en", "de")), InputSpec(path=bad, langs=("en", "de"))]
    rules, sets = core.PrepareRules(), [str(eval_file)]
    results = []
    for fused in (False, True):
        with pipeline() as p:
            if fused:
                out = p | steps.ReadNormalizeFilter([], inputs, 300, rules, sets)
                kept, rejects, errors = out.kept, out[steps.REJECTS], out[steps.ERRORS]
            else:
                read = p | steps.ReadPairs([], inputs, 300)
                processed = read["batches"] | steps.NormalizeFilter(rules, sets)
                kept, rejects, errors = processed.kept, processed[steps.REJECTS], read["errors"]
            _ = (kept | "K" >> beam.FlatMap(projected(KEPT)) | "KL" >> beam.combiners.ToList()
                 | "KW" >> WriteValue(tmp_path / f"kept-{fused}.txt", sorted_lines))
            _ = (rejects | "R" >> beam.FlatMap(projected(REJECT)) | "RL" >> beam.combiners.ToList()
                 | "RW" >> WriteValue(tmp_path / f"rejects-{fused}.txt", sorted_lines))
            _ = errors | "EL" >> beam.combiners.ToList() | "EW" >> WriteValue(tmp_path / f"errors-{fused}.txt", sorted_lines)
        results.append(([(tmp_path / f"{n}-{fused}.txt").read_text() for n in ("kept", "rejects", "errors")],
                        counters(p.result, steps.NAMESPACE)))
    assert results[0] == results[1]
    (kept, rejects, errors), stats = results[1]
    assert kept and rejects and "bad.tmx" in errors
    assert stats["inputs_unreadable"] == 1 and stats["rejected.malformed_record"] == 1
