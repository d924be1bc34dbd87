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
"""

from __future__ import annotations

import re

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
