"""Sentence splitting by rule, for the paragraphs of technical documents (man pages).

A paragraph is cut after ``.``, ``!``, ``?`` (and ``:``/``;`` never) when what follows is a space and a
sentence start (an upper-case letter, a digit, an opening quote or bracket), except after a known
abbreviation (``e.g.``, ``z.B.``, ``etc.``, ``p.ex.``, ...), a single letter (``J. Smith``, ``a.``) or a
number (``1.``, ``2.5.``). Chinese and Japanese full stops (``。！？``) end a sentence with or without a
space. No model, no dictionary per language beyond the abbreviations: the point is that the *same*
rule cuts an English paragraph and its translation, so that where both give the same number of pieces,
piece j translates piece j (``labse_core.evaluation.docs_bitext`` checks a sample of this by eye, see
docs/evaluation.md); the splitter does not have to be perfect, only not systematically different
between the languages, and pieces whose counts differ are not used.

``split_document_sentences(text, lang)`` cuts documents (HTML, text, man pages) for mining with the
splitter measured best per language (``bench/splitter_bench.py``): pysbd for Chinese and Japanese, the
rules here for every other language.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable

from labse_core.langcodes import UnknownLanguage, base_language

ABBREVIATIONS = frozenset(
    """e.g i.e etc vs cf resp approx incl excl esp fig no nos vol ca min max dr mr mrs ms prof st
    z.b d.h u.a bzw usw vgl ggf evtl inkl bspw sog ca nr abs s.o s.u z.t u.u o.ä
    p.ex c.-à-d c.à.d cf env ex etc
    bijv d.w.z m.a.w o.a enz vgl
    es ecc ad
    np tzn itp itd m.in tj
    т.е т.к т.д т.п напр см др
    p.ex ex ou seja
    p.ej ej etc""".split()
)
"""Lower-cased, without the final dot: a dot after these does not end a sentence."""

_CJK_END = "\u3002\uff01\uff1f"  # 。！？
_END = re.compile(
    rf"""(?<=[.!?…])["'”’»)\]]*\s+(?=["'“‘«(\[¿¡]?[\w])   # . followed by space, then a word start
       |(?<=[{_CJK_END}])["'”’」』）)]*\s*(?=\S)        # 。 with or without a space
    """,
    re.VERBOSE,
)


def _protected(before: str, after: str) -> bool:
    """Whether the cut between ``before`` and ``after`` is not a sentence end."""
    if not before.rstrip("\"'”’»)]").endswith("."):
        return False  # ! ? … and the CJK stops always end a sentence
    m = re.search(r"(\S+)\.[\"'”’»)\]]*$", before)
    if not m:
        return False
    word = m.group(1).lstrip("(\"'“‘«[").lower()
    if word in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha():  # an initial, or "a." in a list
        return True
    if re.fullmatch(r"\d+(\.\d+)*", word):  # "1." "2.5." (list numbers, versions)
        return True
    first = after.lstrip("\"'“‘«(¿¡[")[:1]
    # the next word starts lower-case (a dot inside a file name or an abbreviation we do not know)
    return first.isalpha() and first.islower()


def split_sentences(text: str) -> list[str]:
    """The sentences of one paragraph, in order, stripped; a paragraph with no sentence end is one
    sentence. Joining the pieces with a space gives the paragraph back (whitespace normalized)."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    out: list[str] = []
    start = 0
    for m in _END.finditer(text):
        before, after = text[start : m.start()], text[m.end() :]
        if not before or _protected(text[: m.start()], after):
            continue
        out.append(before.strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


# ---------------------------------------------------------------------------------------------------
# Documents: the splitter measured best per language

DOCUMENT_SPLITTERS: dict[str, str] = {"zh": "pysbd", "ja": "pysbd"}
"""Languages (ISO 639-1) whose documents pysbd cuts better than the rules above; every other language
gets the rules. Chosen by ``python -m bench.splitter_bench`` (docs/benchmarks.md): per language, the
fewest libraries such that each language's splitter is tied with its best (paired bootstrap over
Tatoeba paragraphs, man-page paragraphs and sentences with inner dots). zh/ja: the rules miss a ``?``
or ``!`` with no space after it (``你好吗?我很好。``) and cut after an ASCII quote that opens the next
sentence; pysbd does not. de fr es ru en: the rules are best or tied with the best (French: pysbd and
sentencex cut inside ``p. ex.``, ``c.-à-d.`` or after ``M.``; pysbd cuts inside ``.buildinfo``). The
rules need no per-language data, so a language pysbd lacks (ko, th, pt, ...), one not measured, or an
unknown code gets them as well."""


def _base(lang: str) -> str:
    """``zh_TW``, ``cmn`` -> ``zh``; an unknown code -> ``""`` (the rules)."""
    try:
        return base_language(lang)
    except UnknownLanguage:
        return ""


def document_splitter(lang: str) -> str:
    """``"pysbd"`` or ``"rules"``: what ``split_document_sentences`` uses for ``lang`` (any code
    ``langcodes.normalize`` reads: ``zh``, ``zh_TW``, ``cmn``, ``jpn``; an unknown one gets the rules)."""
    return DOCUMENT_SPLITTERS.get(_base(lang), "rules")


@functools.lru_cache(maxsize=256)
def _document_segmenter(base: str) -> Callable[[str], list[str]]:
    """The splitter of one language, built once. A ``pysbd.Segmenter`` keeps the text being cut on
    itself (``segment`` sets ``original_text`` and reads it back), so one shared per language is
    called under a lock: Beam's and Dask's threads share this cache."""
    if DOCUMENT_SPLITTERS.get(base) != "pysbd":
        return split_sentences
    import pysbd

    segmenter, lock = pysbd.Segmenter(language=base, clean=False), threading.Lock()

    def segment(text: str) -> list[str]:
        with lock:
            return segmenter.segment(text)

    return segment


def split_document_sentences(text: str, lang: str) -> list[str]:
    """The sentences of a document's text in language ``lang``, in order, stripped, none empty.

    A blank line always ends a sentence (paragraphs are cut one by one); other whitespace runs count as
    one space. Each paragraph goes to the splitter ``document_splitter(lang)`` names: pysbd for zh and
    ja, the rules (``split_sentences``) for every other language."""
    cut = _document_segmenter(_base(lang))
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t\r\f\v]*\n", text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        if paragraph:
            out += [s for s in (piece.strip() for piece in cut(paragraph)) if s]
    return out
