"""Bitext evaluation sets built from real documents: translated man pages (not gettext).

**Why man pages.** The gettext catalogs the models train on are short UI strings; a mining threshold
tuned on them (``labse_core.evaluation.bucc``) is tested there on the same kind of text. Debian ships
man pages with their translations (``/usr/share/man/manN/x.N.gz`` and ``/usr/share/man/<lang>/manN/
x.N.gz``): longer, technical, reference-style sentences, written by other people, about other things.

**Where the gold comes from.** Debian's translated man pages are made with po4a, paragraph by paragraph:
the translation keeps the macros and replaces each paragraph's text. So, per page pair:

1. both pages are parsed into blocks (``labse_core.text.groff``: headings, paragraphs, tags, code);
2. the pages are cut into sections (at ``.SH``) and the sections aligned in order (``align_sections``):
   a section pair is used only when both have exactly the same block structure (the sequence of
   (kind, indent) of their blocks); where several alignments are possible, the one whose paired
   sections share the most anchors (below) wins; a section the translator added (a credits section) or
   one whose structure differs leaves its blocks out (counted);
3. in an aligned section, paragraph i translates paragraph i; where both paragraphs split into the same
   number of sentences (``labse_core.text.sentences``), sentence j translates sentence j;
4. a pair is kept when its *anchors* agree (the numbers, option names, paths, e-mail addresses and
   URLs that a translation copies unchanged: equal multisets on both sides, for the paragraph and for
   the sentence), the English side has at least ``min_words`` words and reads as prose (not a synopsis,
   a command line or the NAME section's ``name - what it does`` line), and the translation is not the English text again (po4a leaves untranslated
   paragraphs in English): every reject has a reason in ``counts``.

How this was checked by eye: docs/evaluation.md (a sample of pairs per language, and how often the
anchors of structurally aligned paragraphs agree).

**The sets.** The kept pairs are made one-to-one over the language (each English and each translated
text in one pair: boilerplate repeats across pages), ordered by a hash and cut into gold pairs and two
distractor pools, as the gettext BUCC-style sets are (``bucc.build_sets``): of the distractor pairs only
the translated side (X) or only the English side (Y) is used, so every distractor is a real sentence of
the same documents whose translation is not in the set. ``retrieval_set`` turns the same pairs into a
Tatoeba-like set (``labse_core.evaluation.tatoeba``: line i translates line i) for item 6 of issue 24:
a general-domain retrieval check outside the training data's domain.

    labse evaluate docs --model DIR|models:/labse@champion [--langs de,fr] [--man-root /usr/share/man]
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labse_core import langcodes
from labse_core.evaluation.bucc import BuccSplit, Prf, best_threshold, one_to_one, prf
from labse_core.evaluation.tatoeba import GroupScore, LanguageScore, TatoebaLanguage, TatoebaResult
from labse_core.evaluation.tatoeba import result_rows as tatoeba_rows
from labse_core.mining.calibrate import ThresholdChoice
from labse_core.mining.miner import MineConfig, choose_threshold, mine_embeddings
from labse_core.text.groff import Block, ManPageError, parse_man, read_page
from labse_core.text.sentences import split_sentences

EVAL_SET = "bucc-manpages"
RETRIEVAL_SET = "retrieval-manpages"
DEFAULT_MAN_ROOT = Path("/usr/share/man")

Embed = Callable[[list[str]], np.ndarray]

TEXT_KINDS = frozenset({"P"})
"""Block kinds whose sentences can be gold: paragraphs. Headings are one or two words, tags and synopses
are option syntax, no-fill blocks are code."""


class MemoEmbed:
    """``embed`` through a memo: each distinct sentence embedded once (the retrieval set is drawn from the
    same pairs as the mining set, and English sides repeat across languages)."""

    def __init__(self, embed: Embed, cache: dict[str, np.ndarray] | None = None) -> None:
        self.embed = embed
        self.cache: dict[str, np.ndarray] = {} if cache is None else cache
        self.embedded = 0
        """Sentences this memo had to embed."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            vecs = np.asarray(self.embed(todo), dtype=np.float32)  # (len(todo), D)
            self.cache.update(zip(todo, vecs, strict=True))
            self.embedded += len(todo)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


class DocsError(ValueError):
    """Input that gives no set at all (no man pages for a language, no root): one line."""


@dataclass(frozen=True)
class SentencePair:
    xx: str
    en: str
    page: str
    """The page it came from (``man1/dpkg-deb.1``)."""


@dataclass
class Extraction:
    lang: str
    """The directory's name under the man root (``pt_BR``)."""
    pairs: list[SentencePair] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    """pages, pages_parsed, sections_aligned, blocks_aligned, and every reject by reason."""


# ---------------------------------------------------------------------------------------------------
# Pages


def man_languages(man_root: str | os.PathLike[str] = DEFAULT_MAN_ROOT) -> list[str]:
    """The translation directories under the man root (``de``, ``pt_BR``, ...): folders that hold
    ``man*/`` sections."""
    root = Path(man_root)
    if not root.is_dir():
        raise DocsError(f"{root}: no such folder (the man pages' root, e.g. /usr/share/man)")
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith("man") and any(p.glob("man*/*")))


def page_pairs(man_root: str | os.PathLike[str], lang: str, counts: Counter | None = None,
               en_root: str | os.PathLike[str] | None = None) -> list[tuple[str, Path, Path]]:
    """(page name, English file, translated file) for every translated page of ``lang`` that has an English
    original (under ``en_root``, default the man root itself, as in /usr/share/man; ``labse fetch-docs``
    keeps English in its own folder); a translated page that is a symbolic link (an alias of another page)
    or has no English page is counted in ``counts`` and skipped. ``DocsError`` when ``lang`` has no man
    pages there."""
    root = Path(man_root)
    en_base = Path(en_root) if en_root is not None else root
    base = root / lang
    files = sorted(p for p in base.glob("man*/*") if p.is_file() or p.is_symlink()) if base.is_dir() else []
    if not files:
        have = ", ".join(man_languages(root)) if root.is_dir() else "none"
        raise DocsError(f"no man pages for language {lang!r} under {root} (translations there: {have})")
    counts = counts if counts is not None else Counter()
    out = []
    for f in files:
        counts["pages"] += 1
        if f.is_symlink():
            counts["reject.page_is_a_link"] += 1
            continue
        en = en_base / f.relative_to(base)
        if not en.is_file():
            counts["reject.no_english_page"] += 1
            continue
        name = str(f.relative_to(base))
        out.append((name.removesuffix(".gz"), en, f))
    return out


# ---------------------------------------------------------------------------------------------------
# Alignment


_ANCHOR = re.compile(
    r"""\d+(?:[.,:]\d+)*              # numbers, versions, times
      | (?<![\w-])--?[A-Za-z][\w-]*       # options (not the hyphen of a compound word)
      | [\w.+-]+@[\w-]+(?:\.[\w-]+)+   # e-mail addresses
      | (?<!\w)(?:[A-Za-z]+://|/)[\w./~%+:-]*\w  # URLs and absolute paths (not the / of and/or)
    """,
    re.VERBOSE,
)


def anchors(text: str) -> Counter:
    """The tokens a translation copies unchanged: numbers, option names, e-mail addresses, URLs and
    absolute paths (a multiset). Two texts whose anchors differ are not each other's translation, or
    the alignment slipped."""
    return Counter(m.group(0) for m in _ANCHOR.finditer(text))


def sections(blocks: Sequence[Block]) -> list[list[Block]]:
    """The page cut before every ``SH`` heading (the blocks before the first heading are a section too)."""
    out: list[list[Block]] = []
    for b in blocks:
        if b.kind == "SH" or not out:
            out.append([])
        out[-1].append(b)
    return out


def _shape(section: Sequence[Block]) -> tuple:
    return tuple((b.kind, b.indent) for b in section)


def _similarity(a: Counter, b: Counter) -> float:
    """Weighted Jaccard of two anchor multisets; 1 when both are empty."""
    union = sum((a | b).values())
    return 1.0 if union == 0 else sum((a & b).values()) / union


def align_sections(en: Sequence[Sequence[Block]], xx: Sequence[Sequence[Block]]) -> list[tuple[int, int]]:
    """(i, j) pairs of a monotone alignment of two pages' sections: only sections with the same block
    structure can pair, and among the alignments with that rule the one with the highest total of
    ``1 + anchor similarity`` wins (dynamic programming, as an edit distance with free gaps). The anchors
    decide where a section the translator inserted goes: a credits section "2024 by ... <e-mail>"
    does not pair with the original's "AUTHOR" when the translation's own "AUTOR" follows it."""
    n, m = len(en), len(xx)
    shape_en, shape_xx = [_shape(s) for s in en], [_shape(s) for s in xx]
    anc_en = [anchors(" ".join(b.text for b in s)) for s in en]
    anc_xx = [anchors(" ".join(b.text for b in s)) for s in xx]
    best = np.zeros((n + 1, m + 1))  # best[i, j]: best score of en[i:] with xx[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            v = max(best[i + 1, j], best[i, j + 1])
            if shape_en[i] == shape_xx[j]:
                v = max(v, 1.0 + _similarity(anc_en[i], anc_xx[j]) + best[i + 1, j + 1])
            best[i, j] = v
    out, i, j = [], 0, 0
    while i < n and j < m:  # follow the choices; a match first when it is optimal (deterministic)
        if shape_en[i] == shape_xx[j] and best[i, j] == 1.0 + _similarity(anc_en[i], anc_xx[j]) + best[i + 1, j + 1]:
            out.append((i, j))
            i, j = i + 1, j + 1
        elif best[i, j] == best[i + 1, j]:
            i += 1
        else:
            j += 1
    return out


def align_blocks(en: Sequence[Block], xx: Sequence[Block], counts: Counter | None = None) -> list[tuple[Block, Block]]:
    """(English block, translated block) pairs of the sections both pages have with exactly the same
    block structure (``align_sections``; module docstring, step 2). Sections inserted, deleted or changed
    on either side contribute nothing (counted as ``reject.section_structure``, by English block)."""
    counts = counts if counts is not None else Counter()
    se, sx = sections(en), sections(xx)
    pairs = align_sections(se, sx)
    matched = {i for i, _ in pairs}
    counts["reject.section_structure"] += sum(len(s) for i, s in enumerate(se) if i not in matched)
    out = []
    for i, j in pairs:
        counts["sections_aligned"] += 1
        out += list(zip(se[i], sx[j], strict=True))
    counts["blocks_aligned"] += len(out)
    return out


def _words(s: str) -> int:
    return len(re.findall(r"[^\W\d_]{2,}", s))


def _key(s: str) -> str:
    return re.sub(r"\W+", " ", s).strip().lower()


_WHATIS = re.compile(r"^[\w.+:-]+(?:,\s*[\w.+:-]+)*\s+-\s")
"""The NAME section's ``name, name2 - what it does`` line (``whatis``): a label with the page's own name in
it, on every page: easy for any model and not the prose the set is about."""


def keep_reason(xx: str, en: str, min_words: int) -> str | None:
    """Why a candidate gold pair is rejected (None: kept)."""
    if _WHATIS.match(en):
        return "name_line"
    if _words(en) < min_words:
        return "too_short"
    if sum(en.count(c) for c in "[]{}|<>=$;") >= 2:
        return "code_like"  # a synopsis or a command line, not prose
    if not re.search(r"[^\W\d_]", xx):
        return "no_letters"
    if _key(xx) == _key(en):
        return "untranslated"
    if anchors(xx) != anchors(en):
        return "anchors_differ"
    return None


def pair_sentences(blocks: Iterable[tuple[Block, Block]], page: str, min_words: int,
                   counts: Counter | None = None) -> list[SentencePair]:
    """The gold sentence pairs of aligned blocks (module docstring, steps 3 and 4)."""
    counts = counts if counts is not None else Counter()
    out = []
    for a, b in blocks:
        if a.kind not in TEXT_KINDS:
            continue
        if anchors(a.text) != anchors(b.text):
            counts["reject.paragraph_anchors_differ"] += 1
            continue
        en_s, xx_s = split_sentences(a.text), split_sentences(b.text)
        if len(en_s) != len(xx_s):
            counts["reject.sentence_count_differs"] += len(en_s)
            continue
        counts["paragraphs_used"] += 1
        for e, x in zip(en_s, xx_s, strict=True):
            why = keep_reason(x, e, min_words)
            if why is not None:
                counts[f"reject.{why}"] += 1
                continue
            out.append(SentencePair(x, e, page))
    return out


def extract_pairs(man_root: str | os.PathLike[str], lang: str, min_words: int = 4,
                  en_root: str | os.PathLike[str] | None = None) -> Extraction:
    """Every gold sentence pair of ``lang``'s translated man pages (module docstring), with the counts of
    pages, alignments and rejects. An unreadable page (empty, binary, not UTF-8, a ``.so`` link, mdoc) is
    a counted reject ``reject.page_<why>``; a language with no man pages is a ``DocsError``."""
    ex = Extraction(lang)
    for name, en_path, xx_path in page_pairs(man_root, lang, ex.counts, en_root):
        try:
            en = parse_man(read_page(en_path), str(en_path))
            xx = parse_man(read_page(xx_path), str(xx_path))
        except ManPageError as e:
            ex.counts[f"reject.page_{_reason(str(e))}"] += 1
            continue
        ex.counts["pages_parsed"] += 1
        ex.pairs += pair_sentences(align_blocks(en, xx, ex.counts), name, min_words, ex.counts)
    ex.counts["pairs"] = len(ex.pairs)
    return ex


def _reason(message: str) -> str:
    """``ManPageError``'s message -> a short counter name (``page_link``, ``page_binary`` ...)."""
    m = message.split(": ", 1)[-1]
    for key, name in (("link", "link"), ("mdoc", "mdoc"), ("binary", "binary"), ("empty", "empty"),
                      ("UTF-8", "not_utf8"), ("gzip", "bad_gzip"), ("no text", "no_text"), ("larger", "too_large")):
        if key in m:
            return name
    return "unreadable"


# ---------------------------------------------------------------------------------------------------
# Sets


def _order(seed: int, *parts: str) -> bytes:
    return hashlib.blake2b("\x00".join((str(seed), *parts)).encode("utf-8", "surrogatepass"), digest_size=8).digest()


def unique_pairs(pairs: Sequence[SentencePair], seed: int = 0) -> list[SentencePair]:
    """One-to-one pairs (each English and each translated text once, ``bucc.one_to_one``), in a hash
    order of the pair texts: the same pairs in the same order on every machine with the same pages."""
    by_text = {(p.xx, p.en): p for p in reversed(pairs)}  # the first page a pair appears on
    kept = one_to_one(sorted(((p.xx, p.en) for p in pairs), key=lambda t: _order(seed, *t)))
    return [by_text[t] for t in kept]


def build_set(pairs: Sequence[SentencePair], gold: int, distractors_per_gold: float = 2.0, seed: int = 0,
              min_gold: int = 20) -> BuccSplit:
    """A BUCC-style set of one language: ``gold`` hidden translation pairs (fewer when the pages have
    fewer pairs) among ``distractors_per_gold`` x as many distractor sentences per side (module
    docstring); both sides shuffled by a hash. ``ValueError`` below ``min_gold`` gold pairs."""
    pool = unique_pairs(pairs, seed)
    share = 1 + 2 * distractors_per_gold
    g = min(gold, int(len(pool) // share))
    if g < min_gold:
        raise ValueError(f"{len(pool)} one-to-one pairs give {g} gold pairs (< {min_gold}) with "
                         f"{distractors_per_gold:g} distractors per gold pair and side")
    d = int(round(g * distractors_per_gold))
    gold_pairs, rest = pool[:g], pool[g : g + 2 * d]
    src = [(p.xx, i) for i, p in enumerate(gold_pairs)] + [(p.xx, -1) for p in rest[:d]]
    tgt = [(p.en, i) for i, p in enumerate(gold_pairs)] + [(p.en, -1) for p in rest[d:]]
    src.sort(key=lambda it: _order(seed, "x", it[0]))
    tgt.sort(key=lambda it: _order(seed, "y", it[0]))
    src_row = {gi: r for r, (_, gi) in enumerate(src) if gi >= 0}
    tgt_row = {gi: r for r, (_, gi) in enumerate(tgt) if gi >= 0}
    return BuccSplit(tuple(s for s, _ in src), tuple(t for t, _ in tgt),
                     frozenset((src_row[i], tgt_row[i]) for i in range(g)))


def retrieval_set(pairs: Sequence[SentencePair], code: str, max_pairs: int = 1000, seed: int = 0) -> TatoebaLanguage:
    """A Tatoeba-like set (line i translates line i) of at most ``max_pairs`` one-to-one pairs."""
    pool = unique_pairs(pairs, seed)[:max_pairs]
    return TatoebaLanguage(code, tuple(p.xx for p in pool), tuple(p.en for p in pool))


def language_code(lang_dir: str) -> str:
    """The platform's code for a man directory name (``pt_BR`` -> ``pt``, ``zh_CN`` -> ``zh``)."""
    return langcodes.normalize(lang_dir)


def language_codes(lang_dirs: Sequence[str]) -> dict[str, str]:
    """``language_code`` of each directory, kept distinct: where two directories have one code (``pt`` and
    ``pt_BR``), the one named like the code keeps it and the other is told apart by its region (``pt-BR``).
    ``UnknownLanguage`` for a directory no code is known for."""
    codes = {d: language_code(d) for d in lang_dirs}
    taken = Counter(codes.values())
    return {d: c if taken[c] == 1 or d == c else d.replace("_", "-") for d, c in codes.items()}


# ---------------------------------------------------------------------------------------------------
# Mining F1 at several thresholds


@dataclass
class DocsLanguageResult:
    lang: str
    """Platform code (``pt``)."""
    sizes: dict[str, int]
    at: dict[str, Prf]
    """P/R/F1 per threshold rule: ``default`` (the miner's default rule on this set: calibrated from
    its own margins), ``oracle`` (best F1 on this set: an upper bound), and any given (``bucc-gettext``)."""
    calibration: ThresholdChoice


def evaluate_language(lang: str, split: BuccSplit, embed: Embed, cfg: MineConfig | None = None,
                      thresholds: dict[str, float] | None = None) -> DocsLanguageResult:
    """Mine the set once (``cfg``: max mode, ratio margin, k = 4, exact index) and score the candidates at
    the default rule's threshold (``calibrate_threshold`` on their margins, as ``labse mine`` does without
    ``--threshold``), at the oracle's, and at each of ``thresholds`` (e.g. the gettext-tuned one)."""
    cfg = cfg or MineConfig(mode="max", index="flat")
    x, y = embed(list(split.src)), embed(list(split.tgt))
    cand = mine_embeddings(x, y, cfg, threshold=-np.inf)
    choice = choose_threshold(cand.score, cfg)
    at = {"default": prf(cand, split.gold, choice.value), "oracle": best_threshold(cand, split.gold)}
    for name, t in (thresholds or {}).items():
        at[name] = prf(cand, split.gold, t)
    sizes = {"src": len(split.src), "tgt": len(split.tgt), "gold": len(split.gold)}
    return DocsLanguageResult(lang, sizes, at, choice)


def result_rows(results: Sequence[DocsLanguageResult]) -> list[dict]:
    """``eval_results`` rows: per language P/R/F1/threshold under the default rule (metrics ``f1``, ...),
    and under every other rule as ``<rule>_f1``, ...; the mean over languages per metric (scope group,
    language ``evaluated``)."""
    rows = []
    for r in results:
        for rule, m in r.at.items():
            prefix = "" if rule == "default" else f"{rule}_"
            for metric in ("precision", "recall", "f1", "threshold"):
                rows.append({"split": "test", "scope": "language", "language": r.lang, "direction": "both",
                             "metric": prefix + metric, "value": getattr(m, metric), "n": r.sizes["gold"]})
    if results:
        names = dict.fromkeys(row["metric"] for row in rows if not row["metric"].endswith("threshold"))
        for metric in names:
            vals = [row["value"] for row in rows if row["metric"] == metric and row["scope"] == "language"]
            rows.append({"split": "test", "scope": "group", "language": "evaluated", "direction": "both",
                         "metric": metric, "value": float(np.mean(vals)), "n": len(vals)})
    return rows


# ---------------------------------------------------------------------------------------------------
# Retrieval (item 6: no loss outside the training domain)


def retrieval_group(scores: Sequence[LanguageScore]) -> GroupScore:
    """The mean over the evaluated languages (the only group: Tatoeba's named groups are not these
    languages)."""
    return GroupScore("evaluated", tuple(s.code for s in scores), (),
                      float(np.mean([s.acc_xx_en for s in scores])), float(np.mean([s.acc_en_xx for s in scores])))


def retrieval_rows(scores: Sequence[LanguageScore]) -> list[dict]:
    """``eval_results`` rows as Tatoeba's (``tatoeba.result_rows``): accuracy per language and over the
    evaluated languages, each direction and both."""
    return tatoeba_rows(TatoebaResult(list(scores), [retrieval_group(scores)] if scores else []))


@dataclass(frozen=True)
class NoLoss:
    """Whether a candidate model keeps a reference's retrieval accuracy, language by language."""

    ok: bool
    losses: dict[str, float]
    """Languages where the candidate is more than the tolerance below the reference: candidate - reference."""
    mean_delta: float
    """Mean over the shared languages of candidate - reference."""


def no_loss(candidate: dict[str, float], reference: dict[str, float], tolerance: float = 0.01) -> NoLoss:
    """The check of issue 24, item 6, on per-language accuracies (e.g. ``docs/retrieval/<lang>`` of the
    fine-tuned model vs the zero-shot import): ok when no shared language is more than ``tolerance``
    below the reference (the issue's goal: "no language more than 1 point below the import") and the mean
    is not below it."""
    shared = sorted(set(candidate) & set(reference))
    if not shared:
        raise ValueError("no language evaluated for both models")
    deltas = {lang: candidate[lang] - reference[lang] for lang in shared}
    losses = {lang: d for lang, d in deltas.items() if d < -tolerance}
    mean = float(np.mean(list(deltas.values())))
    return NoLoss(not losses and mean >= 0, losses, mean)
