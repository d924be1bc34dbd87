"""Language identification with the model bundled inside ``py3langid`` (no download), scored in batches.

``LangId`` is a re-implementation of py3langid 0.4.0's classifier over the same model arrays (same
byte-DFA features, same length-calibrated softmax), vectorized across a batch of texts; it is
loaded once per process on first use (~2 s; Beam: ``get_langid()`` in ``DoFn.setup``).
``LANGID_LABEL`` and ``LANGID_CONFUSABLE`` say which model labels count as a canonical language
code (``labse_core.langcodes``). Used by the ``lang_id`` filter (``labse_core.text.filters``) and by
the side-swap check of ``labse prepare`` (``labse_core.prepare.check_labels``).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------
# Language ID: which py3langid labels count as "the expected language"
# ------------------------------------------------------------------------------------------------

# Canonical code -> py3langid label, where they differ. Script subtags not listed here are not
# language-identified (py3langid's model knows one script per language: 'az-Arab' would look
# like Persian, 'pa-Arab' like Urdu).
LANGID_LABEL: dict[str, str] = {
    "nb": "no",
    "fil": "tl",
    "kmr": "ku",
    "sr-Latn": "sr",  # the model folds Latin Serbian ('srl') into 'sr'
    "zh-Hant": "zh",
    "uz-Cyrl": "uz",
}

# Labels py3langid cannot tell apart reliably on short text; a prediction inside the group of the
# expected language is not "another language".
LANGID_CONFUSABLE: tuple[frozenset[str], ...] = (
    frozenset({"sr", "hr", "bs"}),
    frozenset({"no", "nn", "da"}),
    frozenset({"id", "ms"}),
    frozenset({"zh", "wuu", "yue"}),
    frozenset({"ar", "ary", "arz"}),
)


# ------------------------------------------------------------------------------------------------
# The language-ID model
# ------------------------------------------------------------------------------------------------


class LangId:
    """py3langid's bundled model, scored in batches.

    py3langid 0.4.0 classifies one text at a time with a per-byte Python loop (~150 us for a short
    UI string). This class loads the same model file and scores many texts at once: the byte DFA
    that finds the n-gram features is walked for a whole batch in lock step with numpy, feature
    counts come from one ``np.unique``, and each text's class scores are one small matrix-vector
    product over its own features (the cost is reading ~60 model rows per text), so a text's result
    does not depend on which other texts share its batch: ``check_pair`` (batch of one) and
    ``check_pairs`` agree exactly.

    It reads the model attributes of py3langid 0.4.0 (``nb_ptc``, ``nb_pc``, ``nb_classes``,
    ``tk_nextmove``, ``tk_row``, ``tk_output``; the version is pinned in constraints.txt) and
    ``test_langid_matches_py3langid_and_does_not_depend_on_the_batch`` checks labels and
    probabilities against ``LanguageIdentifier.classify``. Memory: ~100 MB per process (the float32
    feature table and the DFA).

    Per text, as in ``py3langid.langid.LanguageIdentifier`` with ``norm_probs=True``::

        bytes   = NFC(lower(text) if text.isupper() else text).encode("utf-8")
        counts  = {feature f: occurrences in the DFA walk over bytes}
        score_c = sum_f log1p(counts[f]) * ptc[f, c] + pc[c]             # naive Bayes, (C,)
        p       = softmax(score / sqrt(len(bytes)))                      # length-calibrated
        p[a]   += p[b] for aliased labels (Latin-script 'srl' -> 'sr')
    """

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        # Loads py3langid/data/model.npz.xz from the installed package: nothing is downloaded.
        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.labels: list[str] = list(ident.nb_classes)
        # (F, C) float32 copy of the float16 table (~57 MB): converting gathered rows per text costs
        # more than reading them.
        self.ptc = np.asarray(ident.nb_ptc, dtype=np.float32)
        self.pc = np.asarray(ident.nb_pc, dtype=np.float32)  # (C,)
        self.nextmove = np.frombuffer(
            ident.tk_nextmove, dtype=f"u{ident.tk_nextmove.itemsize}"
        )  # (rows*256,)
        self.rowbase = np.asarray(ident.tk_row, dtype=np.int64) << 8  # (S,) state -> row offset
        self.output = np.asarray(ident.tk_output, dtype=np.int32)  # (S,) state -> feature or -1
        # the same tables as Python sequences, for the per-text loop
        self._py_nextmove, self._py_output = ident.tk_nextmove, ident.tk_output
        self._py_rowbase = [r << 8 for r in ident.tk_row]
        # A label listed twice (Latin-script Serbian 'srl' is folded into 'sr'): (first, duplicate)
        first: dict[str, int] = {}
        self.alias_pairs: list[tuple[int, int]] = []
        for i, label in enumerate(self.labels):
            if label in first:
                self.alias_pairs.append((first[label], i))
            else:
                first[label] = i
        # log1p of integer counts, looked up rather than computed so that every text gets
        # bit-identical values whatever batch it is in.
        self.log1p = np.log1p(np.arange(1 << 16, dtype=np.float32))

    @staticmethod
    def encode(text: str) -> bytes:
        if text.isupper():
            text = text.lower()
        return unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")

    def top(self, texts: Sequence[str], max_texts_per_chunk: int = 65536) -> list[tuple[str, float]]:
        """(label, probability) of the most likely language of each text."""
        out: list[tuple[str, float]] = []
        for start in range(0, len(texts), max_texts_per_chunk):
            probs = self.probs(texts[start : start + max_texts_per_chunk])  # (n, C)
            best = probs.argmax(axis=1)
            out.extend(
                (self.labels[j], p)
                for j, p in zip(best.tolist(), probs[np.arange(len(best)), best].tolist(), strict=True)
            )
        return out

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, ``(len(texts), C)`` float32, columns in ``self.labels`` order (an
        aliased duplicate column holds 0)."""
        encoded = [self.encode(t)[: (1 << 16) - 1] for t in texts]
        n, n_cls = len(encoded), len(self.labels)
        scores = np.zeros((n, n_cls), dtype=np.float32)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        if n == 0:
            return scores
        row_of, feat_of, counts = self._features(encoded, lengths)
        bounds = np.searchsorted(row_of, np.arange(n + 1)).tolist()
        weights = self.log1p[counts]
        for r in range(n):
            a, b = bounds[r], bounds[r + 1]
            if a == b:  # no features: all-zero scores -> uniform, as in py3langid
                continue
            # One text's features only: its scores do not depend on the rest of the batch.
            scores[r] = weights[a:b] @ self.ptc[feat_of[a:b]] + self.pc  # (C,)
        scores *= (1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)[:, None]
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self.alias_pairs:
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        return scores

    def _features(
        self, encoded: list[bytes], lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Walk the byte DFA over every text; return (text index, feature, count) triples sorted by
        text then feature.

        Texts are sorted longest first and walked in lock step with numpy (step t advances the
        prefix of texts longer than t); once fewer than ``_LOCKSTEP_MIN`` texts are still active
        (the long tail, or a batch of one) each finishes in a plain Python loop, which is cheaper
        than a numpy call per byte for a handful of texts. Both walks are exact integer arithmetic.
        """
        order = np.argsort(-lengths, kind="stable")  # longest first
        sorted_len = lengths[order]
        k_active = np.searchsorted(-sorted_len, -np.arange(int(sorted_len[0])), side="left")  # per step t
        n_lock = int(np.searchsorted(-k_active, -_LOCKSTEP_MIN, side="right"))  # steps walked in lock step
        rows, feats = [], []
        state = np.zeros(len(encoded), dtype=np.int64)
        if n_lock:
            flat = np.frombuffer(
                b"".join(encoded[i] for i in order[: int(k_active[0])].tolist()), dtype=np.uint8
            )
            offsets = np.concatenate([[0], np.cumsum(sorted_len[: int(k_active[0])])[:-1]])
            for t in range(n_lock):
                k = int(k_active[t])
                s = self.nextmove[self.rowbase[state[:k]] + flat[offsets[:k] + t]]  # (k,)
                state[:k] = s
                feats.append(self.output[s])
            # the row (position in the sorted batch) of every recorded output
            steps = k_active[:n_lock]
            step_start = np.concatenate([[0], np.cumsum(steps)[:-1]])
            rows.append(np.arange(int(steps.sum())) - np.repeat(step_start, steps))
        # Python tail: texts still active after the lock-step part, from their current state.
        tail_rows, tail_feats = [], []
        nextmove, rowbase, output = self._py_nextmove, self._py_rowbase, self._py_output
        for r in range(int(k_active[n_lock]) if n_lock < len(k_active) else 0):
            st = int(state[r])
            for byte in encoded[int(order[r])][n_lock:]:
                st = nextmove[rowbase[st] + byte]
                f = output[st]
                if f >= 0:
                    tail_rows.append(r)
                    tail_feats.append(f)
        rows.append(np.asarray(tail_rows, dtype=np.int64))
        feats.append(np.asarray(tail_feats, dtype=np.int32))
        row = np.concatenate(rows)
        feat = np.concatenate(feats).astype(np.int64)
        hit = feat >= 0
        n_feat = self.ptc.shape[0]
        keys, counts = np.unique(order[row[hit]] * n_feat + feat[hit], return_counts=True)
        row_of, feat_of = np.divmod(keys, n_feat)
        return row_of, feat_of, counts

    def accepted(self, lang: str) -> frozenset[str] | None:
        """The labels that count as ``lang`` (canonical code); None if the model does not know it."""
        label = LANGID_LABEL.get(lang)
        if label is None:
            if "-" in lang:
                return None
            label = lang
        if label not in self.labels:
            return None
        out = {label}
        for group in LANGID_CONFUSABLE:
            if label in group:
                out |= group
        return frozenset(out)


_LOCKSTEP_MIN = 48  # below this many active texts, a Python loop per text beats a numpy call per byte

_LANGID: LangId | None = None
_LANGID_LOCK = threading.Lock()


def get_langid() -> LangId:
    """The process-wide ``LangId``, loaded on first use (Beam: call from ``DoFn.setup``)."""
    global _LANGID
    if _LANGID is None:
        with _LANGID_LOCK:
            if _LANGID is None:
                _LANGID = LangId()
    return _LANGID
