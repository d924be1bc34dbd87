"""Pure logic of the ``prepare`` stage: read any supported input as rows, normalize, filter,
decontaminate and pick one pair per duplicate group. The Beam job (``beam_jobs/prepare.py``) only
moves these rows around; every decision is made here and can be tested without Beam.

A *row* is a plain dict with ``ROW_FIELDS`` (the columns of ``corpus_raw``). A *reject* is a row plus
``reason`` and ``detail``. Every input pair becomes exactly one clean row or one reject:

    input pairs = clean + rejects (every reason in REJECT_REASONS)

Order of decisions for one pair: reader rejects (the reader could not make a pair, or a gettext
plural form under an invalid ``Plural-Forms`` rule) -> ``same_language`` -> ``eval_overlap`` -> the
filters of ``labse_core.text.filters`` in their documented order -> ``duplicate`` /
``duplicate_existing`` -> ``source_cap``.

Before any pair is read, a whole input can be skipped (``skip_reason``: an English-variant gettext
catalog) or refused (``refuse_swapped_sides``: language ID on a sample says its two sides carry each
other's labels; ``InputSpec.swap`` fixes that).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from labse_core import langcodes
from labse_core.gettext_catalog import INVALID_PLURAL_FORMS, catalog_pairs, locale_from_path, read_catalog
from labse_core.readers import records as rec
from labse_core.readers._files import (
    decode,
    iter_lines,
    line_spans,
    open_bytes,
    strip_compression,
    utf8_error,
)
from labse_core.readers.detect import detect_format
from labse_core.readers.moses import read_moses_prefix
from labse_core.readers.tatoeba import eval_sentences
from labse_core.readers.tmx import read_tmx
from labse_core.readers.tsv import TsvFormat, read_tsv
from labse_core.text import filters as flt
from labse_core.text.normalize import (
    NormalizeConfig,
    dedupe_key,
    dedupe_key_of,
    key_text,
    normalize_text,
    sentence_key,
    sentence_key_of,
)
from storage.schemas import CLEAN_PAIRS, REJECTS

ROW_FIELDS = ("lang", "src_lang", "src_text", "tgt_text", "source", "origin", "line", "locale", "context")

EVAL_OVERLAP = "eval_overlap"
SAME_LANGUAGE = "same_language"
DUPLICATE = "duplicate"
DUPLICATE_EXISTING = "duplicate_existing"
SOURCE_CAP = "source_cap"

REJECT_REASONS: dict[str, str] = {
    rec.INVALID_UTF8: "the line (or one side of it) is not valid UTF-8",
    rec.MALFORMED_RECORD: "the reader could not make a pair of the record (TSV field count, TMX <tuv> without language)",
    rec.MISSING_SIDE: "a TMX unit without a variant in one of the two languages",
    rec.DUPLICATE_LANGUAGE: "a TMX unit with two variants of the same language",
    rec.AMBIGUOUS_LANGUAGES: "a TMX unit with more than two languages and no pair requested",
    rec.UNKNOWN_LANGUAGE: "a language code that maps to no ISO 639 language",
    INVALID_PLURAL_FORMS: "a plural form of a catalog whose Plural-Forms header is invalid (syntax error, or an "
    "index >= nplurals): which form is the singular and which the plural cannot be known",
    SAME_LANGUAGE: "both sides carry the same language (e.g. an English-variant catalog, en_GB): not a translation pair",
    EVAL_OVERLAP: "a side (normalized) is a sentence of a configured evaluation set (e.g. Tatoeba)",
    **flt.REASONS,
    DUPLICATE: "the same normalized pair (same language) was already kept; detail holds the kept pair's key",
    DUPLICATE_EXISTING: "the same normalized pair is already in the clean corpus from an earlier run",
    SOURCE_CAP: "the source sentence already has max_translations_per_source translations in this language",
}


class PrepareError(ValueError):
    """An input that cannot be prepared at all (message names the file)."""


class InputSpec(BaseModel):
    """One input of ``labse prepare``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="File, Moses prefix (corpus -> corpus.de + corpus.en) or folder.")
    format: Literal["auto", "gettext", "moses", "tsv", "tmx"] = Field(
        "auto", description="Reader; auto detects from the name (labse_core.readers.detect)."
    )
    langs: tuple[str, str] | None = Field(
        None, description="(src, tgt) languages: TSV columns, the TMX pair to extract, a Moses pair."
    )
    tsv_header: bool = Field(False, description="TSV: the first line is a header (its src/tgt fields are language codes).")
    tsv_columns: tuple[str, ...] = Field(
        ("src", "tgt"),
        description="TSV: name of every field in order; src and tgt required, src_lang/tgt_lang per-row languages, "
        "any other name (score, id) is ignored. E.g. ('src', 'tgt', 'score').",
    )
    swap: bool = Field(
        False, description="The two sides' language labels are the wrong way round: exchange the texts of every pair."
    )

    @field_validator("langs")
    @classmethod
    def _two_languages(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None and langcodes.base_language(v[0]) == langcodes.base_language(v[1]):
            raise ValueError(f"langs {','.join(v)}: both sides have the same language; a pair needs two languages")
        return v

    @field_validator("tsv_columns")
    @classmethod
    def _columns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        missing = [c for c in ("src", "tgt") if c not in v]
        repeated = sorted({c for c in v if v.count(c) > 1})
        if missing or repeated:
            raise ValueError(f"columns {','.join(v)}: " + "; ".join(
                [f"no {c} column" for c in missing] + [f"{c} named twice" for c in repeated]))
        return v

    def resolved_format(self) -> str:
        fmt = detect_format(self.path) if self.format == "auto" else self.format
        if fmt == "tatoeba":
            raise PrepareError(
                f"{self.path}: Tatoeba is evaluation data and never training input; give it as an eval set "
                "(it is then used to remove overlapping training pairs)"
            )
        if fmt == "mono":
            raise PrepareError(f"{self.path}: monolingual text is MLM input for the shard stage, not a pair corpus")
        return fmt


def _row(pair: rec.RawPair, **extra: Any) -> dict:
    return {
        "lang": pair.tgt_lang, "src_lang": pair.src_lang, "src_text": pair.src_text, "tgt_text": pair.tgt_text,
        "source": pair.source, "origin": pair.origin, "line": pair.line, "locale": pair.locale,
        "context": None, **extra,
    }


def reject_row(reason: str, detail: str | None = None, **row: Any) -> dict:
    out = {f: row.get(f) for f in ROW_FIELDS}
    out["reason"], out["detail"] = reason, detail
    return out


def _from_reject(r: rec.ReadReject, source: str) -> dict:
    return reject_row(r.reason, r.detail, source=source, origin=r.origin, line=r.line,
                      src_text=None, tgt_text=r.raw)


def _gettext_locale(path: Path, catalog=None) -> str:
    catalog = catalog or read_catalog(path)
    locale, _ = locale_from_path(path)
    if path.parent.name != "LC_MESSAGES":
        locale = catalog.language or locale
    if not locale:
        raise PrepareError(f"{path}: no language: not under <locale>/LC_MESSAGES/ and no 'Language:' header")
    return locale


def skip_reason(spec: InputSpec) -> str | None:
    """Why an input is skipped as a whole, or None. A gettext catalog of an English variant (en_GB,
    en@quot) holds English -> English pairs (``Maximize`` -> ``Maximise``): not translations, skipped
    as the ingest stage skips them."""
    if spec.resolved_format() != "gettext":
        return None
    locale = _gettext_locale(spec.path)
    if langcodes.base_language(locale) == rec.ENGLISH:
        return f"{spec.path}: an English-variant catalog ({locale}): English -> English pairs are not translations"
    return None


def _gettext_rows(path: Path) -> Iterator[dict]:
    catalog = read_catalog(path)
    locale = _gettext_locale(path, catalog)
    lang = langcodes.normalize(locale)
    for p in catalog_pairs(catalog, keep_invalid_plurals=True):
        row = {"lang": lang, "src_lang": "en", "src_text": p.src_text, "tgt_text": p.tgt_text,
               "source": f"gettext-{catalog.format}", "origin": str(path), "line": p.line, "locale": locale,
               "context": p.context}
        if p.plural_form is not None and catalog.plural_error:
            yield reject_row(INVALID_PLURAL_FORMS, catalog.plural_error, **row)
        else:
            yield row


SPAN_BYTES = 16 << 20
"""Bytes of an uncompressed TSV input read as one work item: a large file is read by every worker at
once, and what one work item holds stays bounded (the Dask runner keeps a whole item's rows)."""

Span = tuple[int, int, int]


def input_spans(spec: InputSpec, span_bytes: int = SPAN_BYTES) -> list[Span | None]:
    """The work items of one input: ``[None]`` (read it whole) or the ``(start, end, first line)``
    spans of an uncompressed TSV file larger than ``span_bytes`` (``iter_input``'s ``span``)."""
    if spec.resolved_format() == "tsv":
        return list(line_spans(spec.path, span_bytes) or [None])
    return [None]


def iter_input(spec: InputSpec, span: Span | None = None) -> Iterator[dict]:
    """Rows and rejects of one input (or of one ``span`` of a TSV input), streamed. Raises
    ``ReaderError``/``CatalogError``/``PrepareError`` for an input that cannot be read at all
    (unequal Moses sides, broken XML, malformed .po)."""
    fmt = spec.resolved_format()
    if fmt == "gettext":
        if skip_reason(spec) is None:
            yield from _gettext_rows(spec.path)
        return
    if fmt == "moses":
        it: Iterable = read_moses_prefix(_moses_prefix(spec.path), spec.langs)
    elif fmt == "tsv":
        src, tgt = spec.langs or (None, None)
        it = read_tsv(spec.path, TsvFormat(columns=spec.tsv_columns, header=spec.tsv_header), src_lang=src, tgt_lang=tgt,
                      span=span)
    elif fmt == "tmx":
        it = read_tmx(spec.path, spec.langs)
    else:  # pragma: no cover - resolved_format only returns the formats above
        raise PrepareError(f"{spec.path}: unsupported format {fmt}")
    for item in it:
        if isinstance(item, rec.ReadReject):
            yield _from_reject(item, fmt)
        elif spec.swap:
            yield _row(rec.orient_english_source(replace(item, src_text=item.tgt_text, tgt_text=item.src_text)))
        else:
            yield _row(rec.orient_english_source(item))


# ------------------------------------------------------------------------------------------------
# language labels: are the two sides what the input says they are?


class LabelCheck(BaseModel):
    """Language ID on both sides of a sample of one input's pairs."""

    sampled: int = Field(description="Pairs whose both sides the model identified confidently.")
    as_labelled: int = Field(description="... whose src reads as src_lang and tgt as lang.")
    swapped: int = Field(description="... whose src reads as lang and tgt as src_lang.")
    example: str | None = Field(None, description="One swapped pair: origin:line, src / tgt, the labels.")


def check_labels(spec: InputSpec, sample: int = 200, min_confidence: float = 0.9) -> LabelCheck:
    """Identify the language of both sides of the first ``sample`` pairs of ``spec`` (as it would be
    read, ``swap`` included) and count pairs read as labelled and pairs read the other way round.
    Only confident predictions on both sides count (short UI strings are often ambiguous)."""
    from labse_core.text.langid import get_langid

    rows = []
    for r in iter_input(spec):
        if "reason" not in r and r["src_text"] and r["tgt_text"]:
            rows.append(r)
            if len(rows) >= sample:
                break
    if not rows:
        return LabelCheck(sampled=0, as_labelled=0, swapped=0)
    lid = get_langid()
    tops = lid.top([t for r in rows for t in (r["src_text"], r["tgt_text"])])
    sampled = as_labelled = swapped = 0
    example = None
    for i, r in enumerate(rows):
        (src_label, p_src), (tgt_label, p_tgt) = tops[2 * i], tops[2 * i + 1]
        want_src, want_tgt = lid.accepted(r["src_lang"]), lid.accepted(r["lang"])
        if want_src is None or want_tgt is None or min(p_src, p_tgt) < min_confidence:
            continue
        sampled += 1
        if src_label in want_src and tgt_label in want_tgt:
            as_labelled += 1
        elif src_label in want_tgt and tgt_label in want_src:
            swapped += 1
            if example is None:
                example = (f"{r['origin']}:{r['line']}: {r['src_text'][:40]!r} labelled {r['src_lang']} reads as "
                           f"{src_label}, {r['tgt_text'][:40]!r} labelled {r['lang']} reads as {tgt_label}")
    return LabelCheck(sampled=sampled, as_labelled=as_labelled, swapped=swapped, example=example)


def refuse_swapped_sides(spec: InputSpec, sample: int = 200) -> LabelCheck:
    """Raise ``PrepareError`` with the evidence when most confidently identified pairs of a sample
    read the other way round from their labels (``--langs de,en`` on an en/de file). The user fixes
    the labels, or passes ``--swap``. Gettext catalogs are not checked: msgid is English by format."""
    if spec.resolved_format() == "gettext":
        return LabelCheck(sampled=0, as_labelled=0, swapped=0)
    check = check_labels(spec, sample)
    # At least 10 confident pairs and swapped ones the clear majority: a few noisy pairs never trip it.
    if check.sampled >= 10 and check.swapped > max(check.as_labelled, check.sampled // 2):
        hint = "the labels were already swapped (drop --swap)" if spec.swap else "pass --swap (or fix --langs)"
        raise PrepareError(
            f"{spec.path}: the two sides look swapped: {check.swapped} of {check.sampled} sampled pairs read the "
            f"other way round from their language labels, e.g. {check.example}; {hint}"
        )
    return check


def _moses_prefix(path: Path) -> Path:
    """``corpus.de`` -> ``corpus`` when given one side; a prefix stays as it is."""
    if path.exists() and path.is_file():
        return path.with_suffix("")
    return path


# ------------------------------------------------------------------------------------------------
# evaluation sets


def eval_set_texts(path: str | os.PathLike[str]) -> Iterator[str]:
    """Every sentence of one evaluation set, by its kind: a Tatoeba v1 folder (both sides of every
    language), a TMX file (every variant of every unit) or a TSV file (every field), else a text
    file with one sentence per line (plain or .gz). Raises ``PrepareError`` naming the file and line
    for text that is not UTF-8 and for a file that is not there."""
    p = Path(path)
    if p.is_dir():
        yield from (text for _, text in eval_sentences(p))
        return
    if not p.is_file():
        raise PrepareError(f"evaluation set {p} does not exist")
    kind = {".tmx": "tmx", ".tsv": "tsv"}.get(Path(strip_compression(p.name)).suffix.lower(), "lines")
    if kind == "tmx":
        for item in read_tmx(p):
            if isinstance(item, rec.ReadReject):
                raise PrepareError(f"evaluation set {p}:{item.line}: {item.reason} ({item.detail})")
            yield item.src_text
            yield item.tgt_text
        return
    with open_bytes(p) as f:
        for lineno, raw in enumerate(iter_lines(f, p), 1):
            try:
                text = decode(raw)
            except UnicodeDecodeError as e:
                raise PrepareError(f"evaluation set {p}:{lineno}: not UTF-8 text ({utf8_error(e)})") from None
            yield from (text.split("\t") if kind == "tsv" else (text,))


def check_eval_sets(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Read every evaluation set file once on the driver, so that a bad one is a one-line error
    (``path:line: ...``) before any worker starts. Folders (Tatoeba) are checked by their reader."""
    for p in map(Path, paths):
        if not p.is_dir():
            for _ in eval_set_texts(p):
                pass


def load_eval_keys(paths: Sequence[str | os.PathLike[str]], norm: NormalizeConfig | None = None) -> frozenset[str]:
    """Sentence keys of every evaluation sentence (``eval_set_texts``). Keys are taken after the
    same normalization as the training text, so a pair is caught whatever its accelerators,
    spacing or Unicode form."""
    norm = norm or NormalizeConfig()
    keys: set[str] = set()
    for p in paths:
        for t in eval_set_texts(p):
            k = normalize_text(t, norm)
            if k:
                keys.add(sentence_key(k))
    return frozenset(keys)


# ------------------------------------------------------------------------------------------------
# normalize + decontaminate + filter, one batch at a time


class PrepareRules(BaseModel):
    """Settings of the per-pair decisions (the Beam job passes them to every worker)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    filters: flt.FilterConfig = Field(default_factory=flt.FilterConfig)


def process_batch(rows: Sequence[dict], rules: PrepareRules, eval_keys: frozenset[str]) -> tuple[list[dict], list[dict]]:
    """``(kept, rejects)``: kept rows carry normalized text and ``pair_key``; rejects keep the text as read."""
    kept: list[dict] = []
    rejects: list[dict] = []
    pending: list[tuple[dict, str, str]] = []
    for r in rows:
        if "reason" in r:  # already a reader reject
            rejects.append(r)
            continue
        if r["src_lang"] and r["lang"] and r["src_lang"].split("-")[0] == r["lang"].split("-")[0]:  # canonical codes
            # Whatever let it through (a per-row language column, a TMX pair of variants), an
            # en -> en pair is not a translation.
            rejects.append(reject_row(SAME_LANGUAGE, f"{r['src_lang']} -> {r['lang']}", **r))
            continue
        src = normalize_text(r["src_text"], rules.normalize)
        tgt = normalize_text(r["tgt_text"], rules.normalize)
        keys = None
        if eval_keys:
            # Key texts are computed once per side: the eval check here, the dedupe key below.
            keys = key_text(src), key_text(tgt)
            if (src and sentence_key_of(keys[0]) in eval_keys) or (tgt and sentence_key_of(keys[1]) in eval_keys):
                rejects.append(reject_row(EVAL_OVERLAP, None, **r))
                continue
        pending.append((r, src, tgt, keys))
    reasons = flt.check_pairs(
        [p[1] for p in pending], [p[2] for p in pending],
        [p[0]["src_lang"] for p in pending], [p[0]["lang"] for p in pending], rules.filters,
    )
    for (r, src, tgt, keys), reason in zip(pending, reasons, strict=True):
        if reason is not None:
            rejects.append(reject_row(reason, None, **r))
        else:
            keys = keys or (key_text(src), key_text(tgt))
            kept.append(r | {"src_text": src, "tgt_text": tgt, "pair_key": f"{r['lang']}:{dedupe_key_of(*keys)}"})
    return kept, rejects


def pair_key(lang: str, src: str, tgt: str) -> str:
    """Dedupe key: the language plus the normalized pair (the same pair in two languages is two pairs).
    ``process_batch`` builds the same string from key texts it already has."""
    return f"{lang}:{dedupe_key(src, tgt)}"


# ------------------------------------------------------------------------------------------------
# duplicates


def order_key(row: dict) -> tuple:
    """Which of several identical pairs is kept: the first by (source, origin, line, context)."""
    return (row.get("source") or "", row.get("origin") or "", row.get("line") if row.get("line") is not None else -1,
            row.get("context") or "")


def resolve_duplicates(rows: Sequence[dict]) -> tuple[dict | None, list[dict]]:
    """One group of rows with the same ``pair_key``. Rows flagged ``existing`` come from the clean
    corpus already published: if there is one, it stays and every new row is ``duplicate_existing``
    (``winner`` is then the existing row, which the caller does not re-count as new)."""
    existing = sorted((r for r in rows if r.get("existing")), key=order_key)
    new = sorted((r for r in rows if not r.get("existing")), key=order_key)
    if existing:
        return existing[0], [reject_row(DUPLICATE_EXISTING, existing[0]["pair_key"], **r) for r in new]
    winner, rest = new[0], new[1:]
    return winner, [reject_row(DUPLICATE, winner["pair_key"], **r) for r in rest]


def cap_translations(rows: Sequence[dict], cap: int) -> tuple[list[dict], list[dict]]:
    """Rows sharing (language, normalized source): keep ``cap`` of them, the rest are ``source_cap``
    rejects. Rows already published (``existing``) always stay and use up the cap first; new rows
    fill what is left in ``order_key`` order."""
    existing = [r for r in rows if r.get("existing")]
    new = sorted((r for r in rows if not r.get("existing")), key=order_key)
    room = max(0, cap - len(existing))
    return existing + new[:room], [reject_row(SOURCE_CAP, None, **r) for r in new[room:]]


# ------------------------------------------------------------------------------------------------
# The same decisions on Arrow tables (the Beam job's hot path)
#
# Between the steps of the Beam job, rows travel as Arrow tables of a few thousand rows: one element
# per batch instead of one pickled dict per row. The per-pair decisions stay the per-record functions
# above; what changes is that each distinct text is normalized, keyed and measured once per worker
# (``TablePreparer``, ``flt.PairChecker``), and that columns which pass through untouched are moved
# with Arrow ``take`` instead of being copied into dicts. ``tests/labse_core/test_prepare.py``
# compares ``TablePreparer`` with ``process_batch`` and ``dedupe_table`` with ``resolve_duplicates``
# on real gettext catalogs.

KEPT_SCHEMA = CLEAN_PAIRS.schema.append(pa.field("existing", pa.bool_(), nullable=False))
"""Kept rows between the steps: ``corpus_clean``'s columns (``lang`` included) plus whether the row
was already published (append mode)."""
REJECT_SCHEMA = REJECTS.schema
"""Reject rows between the steps: ``corpus_rejects``' columns (``reason`` included)."""

_PASS_THROUGH = ("lang", "src_lang", "source", "origin", "line", "locale", "context")
_REJECT_FROM_ROW = ("lang", "src_lang", "src_text", "tgt_text", "source", "origin", "line")


def _typed(values: Sequence, field: pa.Field) -> pa.Array:
    return pa.array(values, type=field.type)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (extra columns dropped)."""
    cols = []
    for f in schema:
        col = table.column(f.name)
        cols.append(col if col.type == f.type else col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _reject_table(source: pa.Table, indices: Sequence[int], reasons: Sequence[str],
                  details: Sequence[str | None]) -> pa.Table:
    """Rows ``indices`` of ``source`` as rejects (text as read) with their reasons and details."""
    picked = source.select(list(_REJECT_FROM_ROW)).take(pa.array(indices, type=pa.int64()))
    cols = {"reason": _typed(reasons, REJECT_SCHEMA.field("reason")),
            **{c: picked.column(c) for c in _REJECT_FROM_ROW},
            "detail": _typed(details, REJECT_SCHEMA.field("detail"))}
    return conform(pa.table(cols), REJECT_SCHEMA)


class TablePreparer:
    """``process_batch`` for a worker that sees many batches: same rows kept, same rejects with the
    same reasons, as Arrow tables (``KEPT_SCHEMA``, ``REJECT_SCHEMA``).

    Normalized text, key text and the evaluation-set lookup are remembered per distinct text (the
    English msgid of a gettext catalog recurs in every language); each cache is emptied when it
    holds ``max_cached`` texts, which bounds a worker's memory."""

    def __init__(self, rules: PrepareRules, eval_keys: frozenset[str], max_cached: int = 200_000) -> None:
        self.rules = rules
        self.eval_keys = eval_keys
        self.max_cached = max_cached
        self.checker = flt.PairChecker(rules.filters, max_cached)
        self._norm: dict[str, str] = {}
        self._keys: dict[str, tuple[str, bool]] = {}
        self._same: dict[tuple[str, str], bool] = {}

    def _normalize(self, s: str) -> str:
        out = self._norm.get(s)
        if out is None:
            if len(self._norm) >= self.max_cached:
                self._norm.clear()
            out = self._norm[s] = normalize_text(s, self.rules.normalize)
        return out

    def _key(self, s: str) -> tuple[str, bool]:
        """(``key_text(s)``, whether ``s`` is an evaluation sentence) of a normalized text."""
        out = self._keys.get(s)
        if out is None:
            if len(self._keys) >= self.max_cached:
                self._keys.clear()
            k = key_text(s)
            out = self._keys[s] = (k, bool(s) and bool(self.eval_keys) and sentence_key_of(k) in self.eval_keys)
        return out

    def _same_language(self, src_lang: str | None, lang: str | None) -> bool:
        if not (src_lang and lang):
            return False
        same = self._same.get((src_lang, lang))
        if same is None:
            same = self._same[(src_lang, lang)] = src_lang.split("-")[0] == lang.split("-")[0]
        return same

    def process(self, batch: pa.Table | pa.RecordBatch | Sequence[dict]) -> tuple[pa.Table, pa.Table]:
        """``(kept, rejects)`` of one batch: an Arrow table with ``ROW_FIELDS`` (extra columns are
        ignored), or row dicts as the readers make them (reader rejects included)."""
        reader_rejects = None
        if not isinstance(batch, pa.Table | pa.RecordBatch):
            rows = [r for r in batch if "reason" not in r]
            if len(rows) < len(batch):
                reader_rejects = pa.Table.from_pylist([r for r in batch if "reason" in r], schema=REJECT_SCHEMA)
            fields = {f.name: f for f in CLEAN_PAIRS.schema}
            batch = pa.table({f: _typed([r.get(f) for r in rows], fields[f]) for f in ROW_FIELDS})
        elif isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        src_raw = batch.column("src_text").to_pylist()
        tgt_raw = batch.column("tgt_text").to_pylist()
        langs = batch.column("lang").to_pylist()
        src_langs = batch.column("src_lang").to_pylist()
        rej_idx: list[int] = []
        rej_reason: list[str] = []
        rej_detail: list[str | None] = []
        pend_idx: list[int] = []
        pend_src: list[str] = []
        pend_tgt: list[str] = []
        pend_keys: list[tuple[str, str]] = []
        norm, key, same, check_eval = self._normalize, self._key, self._same_language, bool(self.eval_keys)
        for i in range(batch.num_rows):
            if same(src_langs[i], langs[i]):
                rej_idx.append(i)
                rej_reason.append(SAME_LANGUAGE)
                rej_detail.append(f"{src_langs[i]} -> {langs[i]}")
                continue
            src, tgt = norm(src_raw[i]), norm(tgt_raw[i])
            ka, ea = key(src)
            kb, eb = key(tgt)
            if check_eval and (ea or eb):
                rej_idx.append(i)
                rej_reason.append(EVAL_OVERLAP)
                rej_detail.append(None)
                continue
            pend_idx.append(i)
            pend_src.append(src)
            pend_tgt.append(tgt)
            pend_keys.append((ka, kb))
        reasons = self.checker.check(pend_src, pend_tgt, [src_langs[i] for i in pend_idx],
                                     [langs[i] for i in pend_idx])
        keep_idx: list[int] = []
        keep_src: list[str] = []
        keep_tgt: list[str] = []
        keep_key: list[str] = []
        for j, reason in enumerate(reasons):
            i = pend_idx[j]
            if reason is not None:
                rej_idx.append(i)
                rej_reason.append(reason)
                rej_detail.append(None)
            else:
                keep_idx.append(i)
                keep_src.append(pend_src[j])
                keep_tgt.append(pend_tgt[j])
                keep_key.append(f"{langs[i]}:{dedupe_key_of(*pend_keys[j])}")
        picked = batch.select(list(_PASS_THROUGH)).take(pa.array(keep_idx, type=pa.int64()))
        kept = conform(pa.table({
            **{c: picked.column(c) for c in _PASS_THROUGH},
            "src_text": pa.array(keep_src, pa.string()), "tgt_text": pa.array(keep_tgt, pa.string()),
            "pair_key": pa.array(keep_key, pa.string()),
            "existing": pa.array([False] * len(keep_idx), pa.bool_()),
        }), KEPT_SCHEMA)
        rejects = _reject_table(batch, rej_idx, rej_reason, rej_detail)
        if reader_rejects is not None:
            rejects = pa.concat_tables([reader_rejects, rejects])
        return kept, rejects


def dedupe_table(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``resolve_duplicates`` over every ``pair_key`` group of ``table`` (``KEPT_SCHEMA``) at once:
    ``(winners, rejects)``. Rows are sorted by pair key, existing rows first, then ``order_key``
    (nulls as ``order_key`` reads them); the first row of each key wins. As in
    ``resolve_duplicates``, an existing winner makes every new row of its key ``duplicate_existing``
    and any further existing row of that key is dropped (the published corpus has none)."""
    n = table.num_rows
    if n == 0:
        return table, empty_table(REJECT_SCHEMA)
    existing = table.column("existing")
    order = pc.sort_indices(
        pa.table({
            "k": table.column("pair_key"), "e": pc.invert(existing),
            "s": pc.fill_null(table.column("source"), ""), "o": pc.fill_null(table.column("origin"), ""),
            "l": pc.fill_null(table.column("line"), -1), "c": pc.fill_null(table.column("context"), ""),
        }),
        sort_keys=[(c, "ascending") for c in ("k", "e", "s", "o", "l", "c")],
    )
    t = table.take(order)
    keys = t.column("pair_key")
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    winners = t.filter(pa.array(first))
    if winners.num_rows == n:
        return winners, empty_table(REJECT_SCHEMA)
    group = np.cumsum(first) - 1
    ex = existing.take(order).to_numpy(zero_copy_only=False)
    winner_existing = ex[first][group]
    losers = ~first & ~ex  # an existing row that is not its key's winner is dropped
    idx = np.flatnonzero(losers)
    reasons = np.where(winner_existing[idx], DUPLICATE_EXISTING, DUPLICATE).tolist()
    lost = t.take(pa.array(idx, type=pa.int64()))
    return winners, _reject_table(lost, list(range(len(idx))), reasons, lost.column("pair_key").to_pylist())


def cap_table(table: pa.Table, cap: int) -> tuple[pa.Table, pa.Table]:
    """``cap_translations`` over every (language, source key) group of ``table`` (``KEPT_SCHEMA``):
    ``(kept, rejects)``. Only used with ``max_translations_per_source``; row by row."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in table.to_pylist():
        groups.setdefault((r["lang"], sentence_key(r["src_text"])), []).append(r)
    kept: list[dict] = []
    dropped: list[dict] = []
    for rows in groups.values():
        k, d = cap_translations(rows, cap)
        kept += k
        dropped += d
    return pa.Table.from_pylist(kept, schema=KEPT_SCHEMA), pa.Table.from_pylist(dropped, schema=REJECT_SCHEMA)
