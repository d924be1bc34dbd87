"""Sentence splitters for document mining, measured on real text: boundary F1, paragraphs split exactly
right, and sentences/s, per language.

    python -m bench.splitter_bench            # 7 languages, 3 interleaved repeats (~50 s on 2 cores)
    python -m bench.splitter_bench --quick    # 200 Tatoeba lines a language, 1 repeat (~10 s): .quick.json

The candidates (``SPLITTERS``): the project's rules (``labse_core.text.sentences.split_sentences``),
pysbd (``pysbd.Segmenter(language=L, clean=False).segment``), sentencex (``sentencex.segment(L, text)``),
and ``split_document_sentences(text, L)``, the per-language dispatch this benchmark chose (checked: it must
be the choice below and score as its splitter does).

Three sets, each with known boundaries (the gold), the same for every splitter:

- ``tatoeba`` (zh ja de fr es ru en): Tatoeba v1 (``storage.layout.default_tatoeba_dir()``), one sentence
  a line; a paragraph joins 3-8 consecutive lines (seed 0), with no space for zh and ja and one space
  otherwise. English is the English side of the six pairs, deduplicated.
- ``man`` (all seven): this machine's man pages (``labse_core.text.groff``; ``MAN_DIRS``; en: the English
  pages of the German and French pages' names), ``.PP`` paragraphs as they are, with two sentences or
  more or an inner dot; at most PER_SOURCE a page.
- ``abbr`` (de fr es ru en): every sentence with a dot followed by a space inside it (``z. B.``, ``usw. zu``,
  ``M. Dupont``, ``Mr. Brown``, ``6 a.m. every``) from Tatoeba, the man pages and this machine's gettext
  catalogs (translations; for en the English sources of the de and fr ones; at most PER_SOURCE a
  catalog), each (with the rest of its paragraph or string) put at a random place among 2-7 other
  Tatoeba sentences of its language. Tatoeba alone holds almost none outside en.

Only text whose every stop is sure enters (``sure_sentences``): a dot before a lower-case word is no end
unless a command name follows (``erstellt. dpkg-genchanges liest``); before an upper-case word it is an
end after a plain word of 6+ letters, and no end after a title, ``M.`` in French or ``z. B.``-like
abbreviations; ``!``/``?`` before an upper-case word end one; zh/ja: a run of ``。！？`` outside quotes.
Everything else (``Paul. Busy``, ``U.S. He``, ``am 18. Juni``/``Version 1. Falls``, ``geste... Et``) leaves
the line, paragraph or string out (2-7 % of the Tatoeba lines): whether it is a boundary is what the
splitters are asked, and the gold must not guess it.

Each splitter runs in its own process with one thread (bench.common.measure_child; A B C D A B C D ...):
after an untimed warm-up it splits every paragraph of a set and language, again until 0.25 s have passed
(the median pass is its time), and reports the boundaries it found. Boundary = the character offset where
a piece starts (the first piece aside); a piece is found in the paragraph by its stripped text.

The choice: per language, the splitters tied with the best mean F1 over its sets (paired bootstrap,
``tied_with_best``); then the fewest libraries that give every language one of its tied splitters, the
rules wherever they are tied (``choose``). Writes bench/results/splitter_bench[.quick].json, shown in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.scale_pairs import LOCALE

LANGS = {"zh": "cmn", "ja": "jpn", "de": "deu", "fr": "fra", "es": "spa", "ru": "rus", "en": "eng"}
"""ISO 639-1 (what the splitters take) -> Tatoeba file code."""
NO_SPACE = frozenset({"zh", "ja"})
ABBR_LANGS = ("de", "fr", "es", "ru", "en")
"""Languages with an abbr set (their gettext catalogs and man pages hold abbreviations)."""
MAN_DIRS = {"zh": "zh_CN", "ja": "ja", "de": "de", "fr": "fr", "es": "es", "ru": "ru"}
"""Language -> folder of /usr/share/man; en: the English pages of the names the de and fr folders hold."""
SPLITTERS = ("rules", "pysbd", "sentencex", "chosen")
PER_SOURCE = 5
"""At most this many paragraphs from one gettext catalog or one man page."""
PREFERENCE = ("rules", "sentencex", "pysbd")
"""Order of preference among splitters tied with the best: ours (no dependency), then the faster library."""
BOOTSTRAP = 2000
"""Paired bootstrap resamples for the ties (``tied_with_best``)."""
GROUP = (3, 8)
"""Sentences per paragraph (inclusive), drawn with seed 0."""

_OPEN = "\"'“‘«„(¿¡["
_CLOSE = "\"'”’“»」』)）]"
_END = re.compile(rf"[.!?…。！？]+[{re.escape(_CLOSE)}]*$")
_CJK_OPEN, _CJK_CLOSE = "「『（(“", "」』）)”"
TITLES = frozenset("mr mrs ms dr dra mt st prof mme mlle hr fr sr sra srta jr nr no bd abs art".split())
"""Capitalized words that are followed by a name or a number, not a sentence end."""
SHORT = 5
"""A dot after a plain word of more letters than this, before an upper-case word, ends a sentence (there
are few such abbreviations); after a shorter word (``usw.``, ``env.``, ``Tom.``) it may or may not."""
MID_SENTENCE = frozenset("z.b d.h u.a e.g i.e p.ex c.-à-d c.à.d".split())
"""Dotted abbreviations that do not end a sentence even before an upper-case word (a German noun)."""
GOLD_ABBREVIATIONS = frozenset("""usw bzw etc vgl ggf evtl ca bspw inkl sog insb zzgl bzgl resp env ex cf vs
    approx alt intl maj verr échap impr écr défil min max nr no vol fig incl excl esp
    ej p.ej aprox pág núm cap dto т.е т.к т.д т.п напр см др стр рис гг им""".split())
"""Words that are abbreviations before a lower-case word. Only the gold uses this list (which lines are
sure); before a lower-case word the rules splitter never cuts, pysbd and sentencex decide by their own."""
MAN = Path("/usr/share/man")
COMMAND_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")


@functools.cache
def _commands() -> frozenset[str]:
    """This machine's command names: a sentence of a man page may start with one, in lower case."""
    return frozenset(n for d in COMMAND_DIRS if Path(d).is_dir() for n in os.listdir(d))


# ---------------------------------------------------------------------------------------------------
# The gold: sentences whose every stop is sure


def _abbreviation_shaped(word: str) -> bool:
    """``N``, ``3``, ``usw``, ``a.m``, ``z.B``: what may stand before a dot inside a sentence."""
    w = word.lower()
    return ((len(w) == 1 and w.isalpha()) or w.isdigit() or w in GOLD_ABBREVIATIONS or w in MID_SENTENCE
            or re.fullmatch(r"(?:[^\W\d_]{1,2}\.){1,3}[^\W\d_]{1,2}", w) is not None)


def _stop(prev: str, tok: str, nxt: str, lang: str) -> bool | None:
    """Whether the stop that ends whitespace token ``tok`` ends a sentence, ``prev`` and ``nxt`` being
    the tokens around it: True, False (or no stop there), or None when a reader needs more than these
    words to tell."""
    core = tok.rstrip(_CLOSE)
    if not core.endswith((".", "…", "!", "?")):
        return False
    after = nxt.lstrip(_OPEN)
    upper, lower = after[:1].isupper(), after[:1].isalpha() and after[:1].islower()
    if core.endswith(("!", "?")):
        return True if upper else None  # "« Qui ? » demanda-t-il", "DANGEREUX ! -mP"
    if core.endswith(("..", "…")):  # "blöd... ich" goes on; "geste... Et" not sure
        return False if lower else None
    word = core.rstrip(".").lstrip(_OPEN).rstrip(_CLOSE)  # "(quilt)”." -> quilt
    plain = "." not in word and re.sub(r"['’-]", "", word).isalpha()
    if lower:
        if _abbreviation_shaped(word):
            return False  # "N. van Kempen", "a.m. every", "3. mars", "usw. zu"
        command = re.match(r"[\w.+-]+", after)
        if command and command.group().rstrip(".") in _commands():
            return True  # "... erstellt. dpkg-genchanges liest", "adduser.conf(5). adduser has"
        return None  # "sind. xyz", "/var/lib/dpkg. si" not sure
    if not upper:  # "Version 0. 1", "siehe 2. -x"
        return None
    spaced = {(prev.lstrip(_OPEN) + word).lower(), (word + "." + nxt.rstrip(".,;:)")).lower()}
    if spaced & MID_SENTENCE:  # "z. B. Dateien": both dots
        return False
    if len(word) == 1 and word.isalpha():  # "M. Dupont" in French; "code N. Renvoie", "J. Smith" not sure
        return False if lang == "fr" and core.lstrip(_OPEN) == "M." else None
    if "." in word:  # "e.g. Linux" no, "U.S. He" not sure
        return False if word.lower() in MID_SENTENCE else None
    if word[:1].isupper() and word.lower() in TITLES:  # "Mr. Brown"
        return False
    # "gefunden. Bitte" ends; "Paul. Busy", "bzw. Dateien", "am 18. Juni" / "Version 1. Falls" not sure
    return True if plain and len(word) > SHORT else None


def sure_sentences(s: str, lang: str) -> list[str] | None:
    """The sentences of ``s`` when it ends with a stop and every stop inside it surely does or surely
    does not end a sentence (``_stop``); None otherwise: whether ``Paul. Busy`` or ``U.S. He`` is a
    boundary is what the splitters are asked, and the gold must not guess it. zh/ja: ``_cjk_sentences``."""
    if not _END.search(s):
        return None
    last = s.split()[-1].rstrip(_CLOSE).rstrip(".").strip(_OPEN + _CLOSE)
    if s.rstrip(_CLOSE).endswith(".") and (_abbreviation_shaped(last) or last.lower() in TITLES):
        return None  # "Englisch (US, alt. intl.)": is the last dot an end?
    if lang in NO_SPACE:
        return _cjk_sentences(s)
    tokens = s.split()
    out, start = [], 0
    for i in range(len(tokens) - 1):
        end = _stop(tokens[i - 1] if i else "", tokens[i], tokens[i + 1], lang)
        if end is None:
            return None
        if end:
            out.append(" ".join(tokens[start : i + 1]))
            start = i + 1
    out.append(" ".join(tokens[start:]))
    return out


def _cjk_sentences(s: str) -> list[str] | None:
    """zh/ja: a run of ``。！？`` ends a sentence; one inside brackets or quotes (「…。」), an ASCII stop
    or an ellipsis inside the text makes it not sure."""
    body = _END.sub("", s)
    if re.search(r"[.!?…]", body):
        return None
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += (ch in _CJK_OPEN) - (ch in _CJK_CLOSE)
        if ch in "。！？" and body[i + 1 : i + 2] not in ("。", "！", "？"):
            if depth:
                return None
            out.append(s[start : i + 1].strip())
            start = i + 1
    out.append(s[start:].strip())
    return [x for x in out if x]


def one_sentence(s: str, lang: str) -> bool:
    return sure_sentences(s, lang) == [s]


def has_abbreviation(s: str) -> bool:
    """A single dot followed by a space inside one sentence: ``z. B.``, ``usw. zu``, ``Mr. Brown``."""
    tokens = s.split()
    return any(t.rstrip(_CLOSE).endswith(".") and not t.rstrip(_CLOSE).endswith("..") for t in tokens[:-1])


# ---------------------------------------------------------------------------------------------------
# The text


def tatoeba_lines(lang: str, root: Path) -> list[str]:
    """The lines of one language (English: the English sides of every pair here, deduplicated), with
    whitespace normalized (the rules splitter normalizes it; the pieces must be found in the paragraph)."""
    if lang == "en":
        files = [root / f"tatoeba.{c}-eng.eng" for c in LANGS.values() if c != "eng"]
    else:
        files = [root / f"tatoeba.{LANGS[lang]}-eng.{LANGS[lang]}"]
    lines = (" ".join(x.split()) for f in files for x in f.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(x for x in lines if x))


def gettext_blocks(lang: str, per_catalog: int, rng: random.Random) -> list[list[str]]:
    """Strings of this machine's gettext catalogs (translations; en: the English sources of de and fr) that
    ``sure_sentences`` can cut and that hold a sentence with an inner dot (``has_abbreviation``), as
    their sentences. Prose-like strings only (no ``%``, ``[``, ``<``, ``_``, ``--``; 20-300 characters);
    at most ``per_catalog`` from one catalog, so that one package's idiom (xkeyboard-config's
    ``Verr. maj.``) does not make the set."""
    from labse_core.gettext_catalog import CatalogError, catalog_pairs, read_catalog

    out: dict[str, list[str]] = {}
    for cat in ("de", "fr") if lang == "en" else (lang,):
        for path in sorted((LOCALE / cat / "LC_MESSAGES").glob("*.mo")):
            try:
                pairs = list(catalog_pairs(read_catalog(path)))
            except CatalogError:
                continue
            texts = sorted({" ".join((p.src_text if lang == "en" else p.tgt_text).split()) for p in pairs})
            good = {}
            for t in texts:
                if 20 <= len(t) <= 300 and not re.search(r"[%\[<>_\\=]|--", t) and t not in out:
                    sents = sure_sentences(t, lang)
                    if sents and any(has_abbreviation(x) for x in sents):
                        good[t] = sents
            for t in rng.sample(sorted(good), min(per_catalog, len(good))):
                out[t] = good[t]
    return list(out.values())


def man_pages(lang: str) -> list[Path]:
    """This machine's man pages in ``lang`` (MAN_DIRS); en: the English pages of the German and French
    pages' names."""
    if lang != "en":
        return sorted((MAN / MAN_DIRS[lang]).glob("man*/*"))
    names = {(p.parent.name, p.name) for other in ("de", "fr") for p in (MAN / other).glob("man*/*")}
    return sorted(MAN / sec / name for sec, name in names if (MAN / sec / name).is_file())


def man_blocks(lang: str, per_page: int, rng: random.Random) -> list[list[str]]:
    """Paragraphs (``.PP`` blocks, 20-400 characters) of this machine's man pages that ``sure_sentences``
    can cut and that have a stop inside (two sentences or more, or an inner dot), as their sentences;
    at most ``per_page`` from one page, each text once (vim's page is installed under six names)."""
    from labse_core.text.groff import ManPageError, parse_man, read_page

    out: dict[str, list[str]] = {}
    for path in man_pages(lang):
        try:
            blocks = parse_man(read_page(path), str(path))
        except (ManPageError, OSError):
            continue
        good = {}
        for block in blocks:
            text = " ".join(block.text.split())
            if block.kind != "P" or not 20 <= len(text) <= 400 or text in out:
                continue
            sents = sure_sentences(text, lang)
            if sents and (len(sents) > 1 or has_abbreviation(text)):
                good[text] = sents
        for t in rng.sample(sorted(good), min(per_page, len(good))):
            out[t] = good[t]
    return list(out.values())


def paragraphs(sentences: list[str], rng: random.Random) -> list[list[str]]:
    """Consecutive groups of GROUP sentences (the last group may be shorter, at least 2)."""
    out, i = [], 0
    while i < len(sentences) - 1:
        k = rng.randint(*GROUP)
        out.append(sentences[i : i + k])
        i += k
    return [p for p in out if len(p) >= 2]


def abbr_paragraphs(blocks: list[list[str]], others: list[str], rng: random.Random) -> list[list[str]]:
    """One paragraph per block (a sentence with an inner dot, or a string's or man paragraph's sentences), at
    a random place among 2-7 (GROUP - 1) other sentences."""
    out = []
    for block in blocks:
        k = rng.randint(*GROUP) - 1
        group = rng.sample(others, k)
        at = rng.randrange(k + 1)
        out.append(group[:at] + block + group[at:])
    return out


def build(quick: bool) -> dict:
    """The spec the children split: per set and language, the paragraphs as lists of sentences."""
    from storage.layout import default_tatoeba_dir

    root = default_tatoeba_dir()
    limit, per_source = (200, 2) if quick else (None, PER_SOURCE)
    sets: dict[str, dict[str, list[list[str]]]] = {"tatoeba": {}, "man": {}, "abbr": {}}
    data: dict[str, dict] = {}
    for lang in LANGS:
        rng = random.Random(0)
        lines = tatoeba_lines(lang, root)[:limit]
        kept = [s for s in lines if one_sentence(s, lang)]
        sets["tatoeba"][lang] = paragraphs(kept, rng)
        man = man_blocks(lang, per_source, rng)
        sets["man"][lang] = man
        data[lang] = {"tatoeba_lines": len(lines), "tatoeba_kept": len(kept), "man_paragraphs": len(man)}
        if lang in ABBR_LANGS:
            blocks = {"tatoeba": [[s] for s in kept if has_abbreviation(s)],
                      "gettext": gettext_blocks(lang, per_source, rng),
                      "man": [b for b in man if any(has_abbreviation(x) for x in b)]}
            others = [s for s in kept if not has_abbreviation(s)]
            sets["abbr"][lang] = abbr_paragraphs([b for bs in blocks.values() for b in bs], others, rng)
            data[lang] |= {"abbr_blocks": {k: len(v) for k, v in blocks.items()},
                           "abbr_sentences": sum(has_abbreviation(x) for bs in blocks.values() for b in bs for x in b)}
    return {"sets": sets, "data": data, "root": str(root)}


# ---------------------------------------------------------------------------------------------------
# One splitter per process: `--side NAME --spec spec.json`


def splitter(name: str, lang: str) -> Callable[[str], list[str]]:
    if name == "rules":
        from labse_core.text.sentences import split_sentences

        return split_sentences
    if name == "pysbd":
        import pysbd

        return pysbd.Segmenter(language=lang, clean=False).segment
    if name == "sentencex":
        from sentencex import segment

        return lambda text: list(segment(lang, text))
    from labse_core.text.sentences import split_document_sentences

    return lambda text: split_document_sentences(text, lang)


def join(sentences: list[str], lang: str) -> tuple[str, set[int]]:
    """The paragraph and its gold boundaries (offsets where sentences 2.. start)."""
    sep = "" if lang in NO_SPACE else " "
    text, gold = "", set()
    for s in sentences:
        if text:
            text += sep
            gold.add(len(text))
        text += s
    return text, gold


def found(text: str, pieces: list[str]) -> set[int] | None:
    """Where pieces 2.. start in ``text`` (None if a piece is not in it: the splitter changed the text)."""
    starts, cursor = [], 0
    for p in (p.strip() for p in pieces):
        if not p:
            continue
        at = text.find(p, cursor)
        if at < 0:
            return None
        starts.append(at)
        cursor = at + len(p)
    return set(starts[1:])


def child(side: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    t0 = time.perf_counter()
    fns = {lang: splitter(side, lang) for lang in LANGS}
    for lang, fn in fns.items():  # warm-up: regexes compiled, caches filled
        fn(join(spec["sets"]["tatoeba"][lang][0], lang)[0])
    setup_s = time.perf_counter() - t0
    out: dict[str, dict] = {}
    for set_name, by_lang in spec["sets"].items():
        for lang, paras in by_lang.items():
            texts = [join(p, lang) for p in paras]
            passes: list[float] = []
            while not passes or (sum(passes) < spec["min_seconds"] and len(passes) < 50):
                t = time.perf_counter()
                pieces = [fns[lang](text) for text, _ in texts]
                passes.append(time.perf_counter() - t)
            exact = unaligned = 0
            counts, errors = [], []
            for (text, gold), ps in zip(texts, pieces, strict=True):
                pred = found(text, ps)
                if pred is None:
                    unaligned += 1
                    pred = set()
                counts.append((len(pred & gold), len(pred - gold), len(gold - pred)))
                exact += pred == gold
                if pred != gold and len(errors) < 3:
                    errors.append({"missed": [text[max(0, i - 25) : i + 15] for i in sorted(gold - pred)],
                                   "wrong": [text[max(0, i - 25) : i + 15] for i in sorted(pred - gold)]})
            out[f"{set_name}/{lang}"] = {
                "paragraphs": len(paras), "sentences": sum(len(p) for p in paras),
                **dict(zip(("tp", "fp", "fn"), map(sum, zip(*counts, strict=True)), strict=True)),
                "exact": exact, "unaligned": unaligned, "seconds": statistics.median(passes),
                "passes": len(passes), "errors": errors, "per_paragraph": counts}
    common.child_report({"setup_s": setup_s, "scores": out})


# ---------------------------------------------------------------------------------------------------
# The parent


def _prf(e: dict) -> dict:
    p = e["tp"] / (e["tp"] + e["fp"]) if e["tp"] + e["fp"] else 1.0
    r = e["tp"] / (e["tp"] + e["fn"]) if e["tp"] + e["fn"] else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "exact_share": e["exact"] / e["paragraphs"]}


def _f1(c: Any) -> Any:
    """Boundary F1 of summed (tp, fp, fn) along the last axis (numpy), 1 where there is nothing to find."""
    import numpy as np

    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)


def tied_with_best(per_paragraph: dict[str, dict[str, list]], lang: str) -> dict[str, Any]:
    """Mean F1 over the language's sets per splitter, the best, and which splitters are tied with it:
    the 95 % interval of (best - splitter) over BOOTSTRAP paired resamples of the paragraphs (within each
    set, the same paragraphs for every splitter) reaches 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    keys = [k for k in per_paragraph["rules"] if k.endswith(f"/{lang}")]
    names = [n for n in SPLITTERS if n != "chosen"] + ["chosen"]
    point = {n: float(np.mean([_f1(np.sum(per_paragraph[n][k], axis=0)) for k in keys])) for n in names}
    boot = {n: np.zeros(BOOTSTRAP) for n in names}
    for k in keys:
        idx = rng.integers(0, len(per_paragraph["rules"][k]), size=(BOOTSTRAP, len(per_paragraph["rules"][k])))
        for n in names:
            boot[n] += _f1(np.asarray(per_paragraph[n][k])[idx].sum(axis=1)) / len(keys)
    best = max(PREFERENCE, key=lambda n: point[n])
    low = {n: float(np.quantile(boot[best] - boot[n], 0.025)) for n in names}
    return {"mean_f1": point, "best": best, "diff_low": low, "tied": [n for n in PREFERENCE if low[n] <= 0]}


def choose(ties: dict[str, dict]) -> dict[str, Any]:
    """The dispatch the measurement asks for: the fewest libraries such that every language gets a
    splitter tied with its best (``tied_with_best``); the rules are always there (no dependency, every
    language). Per language: the rules when tied, else the library. Libraries tried in PREFERENCE order
    (sentencex before pysbd: 300x faster)."""
    from itertools import combinations

    libs = [n for n in PREFERENCE if n != "rules"]
    for size in range(len(libs) + 1):
        for use in combinations(libs, size):
            pick = {lang: next((n for n in ("rules", *use) if n in t["tied"]), None) for lang, t in ties.items()}
            if all(pick.values()):
                return {"libraries": list(use), "per_language": pick}
    raise AssertionError("the best splitter is always tied with itself")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.splitter_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 lines a language, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="A B C D ... repeats (default 3; --quick 1)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/splitter_bench[.quick].json)")
    args = common.parse_or_run_child(p, argv, SPLITTERS, child)
    if args is None:
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    spec = build(args.quick) | {"min_seconds": 0.05 if args.quick else 0.25}
    work = Path(tempfile.mkdtemp(prefix="splitter-bench-"))
    try:
        (work / "spec.json").write_text(json.dumps(spec, ensure_ascii=False))
        side = common.side_runner("bench.splitter_bench", work / "spec.json", common.thread_env(1))

        def show(name: str, rep: int, r: common.ChildRun) -> None:
            sc = r.result["scores"]
            n = sum(e["sentences"] for e in sc.values())
            s = sum(e["seconds"] for e in sc.values())
            flag = f"  FLAGGED: {'; '.join(r.flags)}" if r.flags else ""
            print(f"  {name:<9} #{rep + 1}: {n / s:10,.0f} sentences/s  child {r.wall_s:5.1f}s wall "
                  f"{r.cpu_s:5.1f} CPU-s {r.peak_rss_mb:5.0f} MB{flag}", flush=True)

        runs = common.interleave({name: side(name) for name in SPLITTERS}, repeats, show)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_paragraph = {name: {k: e.pop("per_paragraph") for k, e in rs[0].result["scores"].items()}
                     for name, rs in runs.items()}
    for rs in runs.values():  # (tp, fp, fn) of every paragraph: for the ties here, too long for the JSON
        for r in rs[1:]:
            for k, e in r.result["scores"].items():
                if e.pop("per_paragraph") != per_paragraph[r.command[r.command.index("--side") + 1]][k]:
                    raise SystemExit(f"{r.command}: the repeats found different boundaries")
    scores: dict[str, dict] = {}
    rates: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        scores[name] = {}
        for key, e in rs[0].result["scores"].items():
            secs = statistics.median(r.result["scores"][key]["seconds"] for r in rs)
            scores[name][key] = {k: v for k, v in e.items() if k not in ("seconds", "passes")} | _prf(e) | {
                "seconds_median": secs, "sentences_per_s": e["sentences"] / secs}
        rates[name] = {}
        for lang in LANGS:  # every set of the language together
            keys = [k for k in scores[name] if k.endswith(f"/{lang}")]
            rates[name][lang] = (sum(scores[name][k]["sentences"] for k in keys)
                                 / sum(scores[name][k]["seconds_median"] for k in keys))
        total = [sum(e["sentences"] for e in r.result["scores"].values())
                 / sum(e["seconds"] for e in r.result["scores"].values()) for r in rs]
        rates[name]["all"] = statistics.median(total)
        rates[name]["all_summary"] = common.summary(total)
        rates[name]["setup_s"] = statistics.median(r.result["setup_s"] for r in rs)
    for rs in runs.values():  # the runs keep their timings; the scores (equal in every repeat) are above
        for r in rs:
            r.result = {"setup_s": r.result["setup_s"],
                        "seconds": {k: e["seconds"] for k, e in r.result["scores"].items()},
                        "passes": {k: e["passes"] for k, e in r.result["scores"].items()}}
    ties = {lang: tied_with_best(per_paragraph, lang) for lang in LANGS}
    choice = choose(ties)
    from labse_core.text.sentences import document_splitter

    dispatch = {lang: document_splitter(lang) for lang in LANGS}
    dispatch_ok = {lang: dispatch[lang] == choice["per_language"][lang] and ties[lang]["diff_low"]["chosen"] <= 0
                   for lang in LANGS}
    metrics = {
        "scores": scores, "sentences_per_s": rates, "ties": ties, "choice": choice, "dispatch": dispatch,
        "dispatch_ok": dispatch_ok, "data": spec["data"], "languages": list(LANGS),
        "splitters": list(SPLITTERS), "repeats": repeats, "bootstrap": BOOTSTRAP,
    }
    result = common.Result(
        name="splitter_bench" + (".quick" if args.quick else ""),
        command=common.command_line(),
        equal_work=(
            "every splitter splits the same paragraphs (Tatoeba lines joined 3-8 at a time; man-page "
            "paragraphs; sentences with inner dots from Tatoeba, man pages and gettext among Tatoeba "
            "sentences; only text whose every stop is sure), in its own process with one thread; boundaries "
            "are compared by character offset"
        ),
        ours={"chosen": "labse_core.text.sentences.split_document_sentences(text, lang)", "dispatch": dispatch},
        peer={"rules": "labse_core.text.sentences.split_sentences(text)",
              "pysbd": "pysbd.Segmenter(language=lang, clean=False).segment(text)",
              "sentencex": "list(sentencex.segment(lang, text))",
              "tatoeba": spec["root"], "man": str(MAN), "gettext": str(LOCALE)},
        metrics=metrics,
        runs=common.runs_json(runs),
        flags=common.flags_of(runs),
        versions=common.versions("pysbd", "sentencex"),
    )
    path = common.write_result(result, path=args.out)
    print(f"{'set/lang':<12}" + "".join(f"{n:>22}" for n in SPLITTERS))
    for key in scores["rules"]:
        print(f"{key:<12}" + "".join(f"   F1 {scores[n][key]['f1']:.3f} ex {scores[n][key]['exact_share']:.2f}"
                                     for n in SPLITTERS))
    print("sentences/s " + "".join(f"{rates[n]['all']:>22,.0f}" for n in SPLITTERS))
    for lang, t in ties.items():
        print(f"{lang}: best {t['best']}, tied {', '.join(t['tied'])}; dispatch {dispatch[lang]}"
              + ("" if dispatch_ok[lang] else f"  NOT the choice ({choice['per_language'][lang]})"))
    print(f"choice: libraries {choice['libraries'] or 'none'}; {choice['per_language']}")
    if result.flags:
        print("FLAGGED (load from other processes):\n  " + "\n  ".join(result.flags))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
