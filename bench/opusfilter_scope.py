"""A filter module for OpusFilter (loaded by OpusFilter's own Python, ``module: opusfilter_scope`` in its
configuration; never imported by the platform): OpusFilter's language-ID filter with the scope and the
decision rule of ours, for the equal-work run of ``bench.prepare_bench``.

OpusFilter's ``LangidFilter`` classifies every text of both sides (one py3langid ``classify`` per text)
and rejects a pair whose top label is not the configured one. Ours (``labse_core.text.filters``,
``lang_id``) identifies only the non-English side, only when it has at least ``lang_id_min_letters``
letters, and rejects only when the top label is outside the accepted set (the language and the labels
py3langid confuses it with) with probability >= ``lang_id_min_confidence``. ``ScopedLangidFilter``
keeps OpusFilter's identifier and its per-text ``classify`` (the work OpusFilter does) and applies our
scope and rule, so that both tools identify the same texts and decide the same way. One difference
stays: letters are counted on the whole text (``\\p{L}``), ours counts them outside markup and
placeholders.
"""

from __future__ import annotations

import regex
from opusfilter.filters import LangidFilter

_LETTER = regex.compile(r"[\p{L}\p{M}]")


class ScopedLangidFilter(LangidFilter):
    """``LangidFilter`` on side ``side`` only, for texts with >= ``min_letters`` letters; a pair is
    rejected when the top label is not in ``accepted`` and its probability is >= ``min_confidence``.
    ``accepted`` empty: the language is unknown to the model, nothing is identified."""

    def __init__(self, languages=None, accepted=None, side=1, min_letters=20, min_confidence=0.8, **kwargs):
        super().__init__(languages=languages, thresholds=[0.5] * len(languages or []), **kwargs)
        self.accepted = frozenset(accepted or ())
        self.side = side
        self.min_letters = min_letters
        self.min_confidence = min_confidence

    def score(self, pairs):
        for pair in pairs:
            text = pair[self.side]
            ok = 1.0
            if self.accepted and len(_LETTER.findall(text)) >= self.min_letters:
                label, prob = self.identifier.classify(text)
                if label not in self.accepted and prob >= self.min_confidence:
                    ok = 0.0
            yield [ok]

    def accept(self, score):
        return score[0] > 0.5
