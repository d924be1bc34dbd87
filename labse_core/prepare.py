"""Pure logic of the ``prepare`` stage: read any supported input as rows, normalize, filter,
decontaminate and pick one pair per duplicate group. The Beam job (``beam_jobs/prepare.py``) only
moves these rows around; every decision is made here and can be tested without Beam.

A *row* is a plain dict with ``ROW_FIELDS`` (the columns of ``corpus_raw``). A *reject* is a row plus
``reason`` and ``detail``. Every input pair becomes exactly one clean row or one reject:

    input pairs = clean + rejects (every reason in REJECT_REASONS)

Order of decisions for one pair: reader rejects (the reader could not make a pair) ->
``eval_overlap`` -> the filters of ``labse_core.text.filters`` in their documented order ->
``duplicate`` / ``duplicate_existing`` -> ``source_cap``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from labse_core import langcodes
from labse_core.gettext_catalog import catalog_pairs, locale_from_path, read_catalog
from labse_core.readers import records as rec
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

ROW_FIELDS = ("lang", "src_lang", "src_text", "tgt_text", "source", "origin", "line", "locale", "context")

EVAL_OVERLAP = "eval_overlap"
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
    tsv_header: bool = Field(False, description="TSV: first line names the columns.")

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


def _gettext_rows(path: Path) -> Iterator[dict]:
    catalog = read_catalog(path)
    locale, _ = locale_from_path(path)
    if path.parent.name != "LC_MESSAGES":
        locale = catalog.language or locale
    if not locale:
        raise PrepareError(f"{path}: no language: not under <locale>/LC_MESSAGES/ and no 'Language:' header")
    lang = langcodes.normalize(locale)
    for p in catalog_pairs(catalog):
        yield {"lang": lang, "src_lang": "en", "src_text": p.src_text, "tgt_text": p.tgt_text,
               "source": f"gettext-{catalog.format}", "origin": str(path), "line": p.line, "locale": locale,
               "context": p.context}


def iter_input(spec: InputSpec) -> Iterator[dict]:
    """Rows and rejects of one input, streamed. Raises ``ReaderError``/``CatalogError``/``PrepareError``
    for an input that cannot be read at all (unequal Moses sides, broken XML, malformed .po)."""
    fmt = spec.resolved_format()
    if fmt == "gettext":
        yield from _gettext_rows(spec.path)
        return
    if fmt == "moses":
        it: Iterable = read_moses_prefix(_moses_prefix(spec.path), spec.langs)
    elif fmt == "tsv":
        src, tgt = spec.langs or (None, None)
        it = read_tsv(spec.path, TsvFormat(header=spec.tsv_header), src_lang=src, tgt_lang=tgt)
    elif fmt == "tmx":
        it = read_tmx(spec.path, spec.langs)
    else:  # pragma: no cover - resolved_format only returns the formats above
        raise PrepareError(f"{spec.path}: unsupported format {fmt}")
    for item in it:
        if isinstance(item, rec.ReadReject):
            yield _from_reject(item, fmt)
        else:
            yield _row(rec.orient_english_source(item))


def _moses_prefix(path: Path) -> Path:
    """``corpus.de`` -> ``corpus`` when given one side; a prefix stays as it is."""
    if path.exists() and path.is_file():
        return path.with_suffix("")
    return path


# ------------------------------------------------------------------------------------------------
# evaluation sets


def load_eval_keys(paths: Sequence[str | os.PathLike[str]], norm: NormalizeConfig | None = None) -> frozenset[str]:
    """Sentence keys of every evaluation sentence: a Tatoeba v1 folder (both sides of every language)
    or a text file with one sentence per line. Keys are taken after the same normalization as the
    training text, so a pair is caught whatever its accelerators, spacing or Unicode form."""
    norm = norm or NormalizeConfig()
    keys: set[str] = set()
    for p in map(Path, paths):
        if p.is_dir():
            texts: Iterable[str] = (text for _, text in eval_sentences(p))
        elif p.is_file():
            texts = p.read_text(encoding="utf-8").splitlines()
        else:
            raise PrepareError(f"evaluation set {p} does not exist")
        for t in texts:
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
