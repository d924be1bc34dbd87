"""Tatoeba retrieval accuracy, as LaBSE (Table 2) and XTREME report it.

For each language xx of the Tatoeba v1 test set (LASER release: up to 1,000 pairs ``xx``/``eng``, line i
translates line i), every xx sentence retrieves its nearest English sentence by cosine and every English
sentence its nearest xx sentence::

    acc(xx->en) = 1/n * #{i : argmax_j cos(x_i, e_j) == i}        x: (n, D), e: (n, D), unit rows
    acc(en->xx) = 1/n * #{i : argmax_j cos(e_i, x_j) == i}
    acc(xx)     = (acc(xx->en) + acc(en->xx)) / 2

and a group's accuracy is the mean of its languages' accuracies. A hit is the gold *index*, as in
LASER's and XTREME's scripts (a retrieved duplicate of the gold text counts as a miss there too), so
numbers compare with the paper's: 95.0 over the 36 XTREME languages, 83.7 over all 112 (LASER: 65.5).

Groups (``GROUPS``; the lists are the ones in ``../shared/data/tatoeba/GROUPS.md``, a test keeps them
equal): ``xtreme36``, ``xnli14``, ``all112``; plus ``trained`` (the languages the model was trained on,
when known) and ``evaluated`` (every language of this run). A group is reported over the languages of
it that were evaluated, with their count, so a partial run never pretends to cover a group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers.records import ReaderError, ReadReject
from labse_core.readers.tatoeba import read_tatoeba, select_languages

EVAL_SET = "tatoeba-v1"

XTREME_36 = tuple(
    "ara heb vie ind jav tgl eus mal tam tel afr nld deu ell ben hin mar urd pes fra ita por spa bul "
    "rus jpn kat kor tha swh cmn kaz tur est fin hun".split()
)
"""The 36 Tatoeba languages of XTREME (LaBSE reports 95.0 over them)."""
XNLI_14 = tuple("ara bul cmn deu ell fra hin rus spa swh tha tur urd vie".split())
"""The 14 XNLI languages."""
MAJOR_14 = tuple("ara cmn deu fra ita jpn kor nld pol por rus spa tha tur".split())
"""14 major languages in 7 scripts (the platform's earlier 14-language gate; a column beside all112)."""
ALL = "all112"

GROUPS: dict[str, tuple[str, ...] | None] = {"xtreme36": XTREME_36, "xnli14": XNLI_14, "major14": MAJOR_14, ALL: None}
"""Named groups of Tatoeba file codes; None: every language of the set."""

DIRECTIONS = ("xx->en", "en->xx", "both")

Embed = Callable[[list[str]], np.ndarray]
"""Sentences -> unit embeddings (N, D), row i for sentence i."""


@dataclass(frozen=True)
class TatoebaLanguage:
    code: str
    """File code (ISO 639-3, as in ``tatoeba.xxx-eng.xxx``)."""
    sentences: tuple[str, ...]
    """The xx side, line by line."""
    english: tuple[str, ...]
    """The English side; ``english[i]`` translates ``sentences[i]``."""


def load_tatoeba(root: str | os.PathLike[str], langs: Iterable[str] | None = None) -> list[TatoebaLanguage]:
    """Every selected language's pairs, sorted by file code (``langs``: file codes or any spelling ``langcodes`` knows; None:
    all). A line that cannot be read is an error naming the file and line: a silently skipped line
    would shift the gold alignment of every line after it."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for rec in read_tatoeba(root, langs):
        if isinstance(rec, ReadReject):
            raise ReaderError(rec.origin, f"{rec.reason}: {rec.detail}", rec.line)
        xs, es = out.setdefault(rec.locale, ([], []))
        xs.append(rec.tgt_text)
        es.append(rec.src_text)
    return [TatoebaLanguage(code, tuple(xs), tuple(es)) for code, (xs, es) in sorted(out.items())]


def nearest_is_gold(q: np.ndarray, k: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``hit[i] = argmax_j q_i . k_j == i`` for unit rows q, k: (n, D); bool (n,). Ties go to the lowest
    index (``np.argmax``), as in the reference scripts."""
    if q.shape != k.shape:
        raise ValueError(f"both sides need the same shape, got {q.shape} and {k.shape}")
    n = len(q)
    hits = np.empty(n, dtype=bool)
    for s in range(0, n, chunk):
        scores = q[s : s + chunk] @ k.T  # (c, n)
        hits[s : s + chunk] = scores.argmax(axis=1) == np.arange(s, min(s + chunk, n))
    return hits


@dataclass(frozen=True)
class LanguageScore:
    code: str
    n: int
    """Pairs of the language."""
    acc_xx_en: float
    acc_en_xx: float

    @property
    def acc(self) -> float:
        return (self.acc_xx_en + self.acc_en_xx) / 2


@dataclass(frozen=True)
class GroupScore:
    group: str
    languages: tuple[str, ...]
    """The group's languages that were evaluated (the mean is over these)."""
    missing: tuple[str, ...]
    """The group's languages this run did not evaluate."""
    acc_xx_en: float
    acc_en_xx: float

    @property
    def acc(self) -> float:
        return (self.acc_xx_en + self.acc_en_xx) / 2

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def label(self) -> str:
        """The group's name when every language of it was evaluated, else the name with the count
        (``all112 (14/112)``): a partial mean is never reported as the group's figure."""
        if self.complete:
            return self.group
        return f"{self.group} ({len(self.languages)}/{len(self.languages) + len(self.missing)})"

    @property
    def metric_key(self) -> str:
        """``label`` as an MLflow metric name (which allows no parentheses): ``all112-partial-14of112``."""
        if self.complete:
            return self.group
        return f"{self.group}-partial-{len(self.languages)}of{len(self.languages) + len(self.missing)}"


def split_name(sample: int | None) -> str:
    """``test`` for the whole set, ``sample300`` for the fixed sample of 300 pairs per language."""
    return "test" if sample is None else f"sample{sample}"


@dataclass
class TatoebaResult:
    languages: list[LanguageScore]
    groups: list[GroupScore] = field(default_factory=list)
    sample: int | None = None
    """Pairs per language of the fixed sample evaluated (``sample_languages``); None: every pair."""

    @property
    def split(self) -> str:
        """``eval_results``'s split: ``test`` for the whole set, ``sample300`` for the fixed sample."""
        return split_name(self.sample)

    def group(self, name: str) -> GroupScore | None:
        return next((g for g in self.groups if g.group == name), None)

    def complete_group(self, name: str) -> GroupScore | None:
        """The group when every language of it was evaluated, else None."""
        g = self.group(name)
        return g if g is not None and g.complete else None

    def summary(self) -> dict:
        """JSON-ready: per-language and per-group accuracies (fractions, not percent)."""
        return {
            "eval_set": EVAL_SET,
            "languages": {
                s.code: {"n": s.n, "xx->en": s.acc_xx_en, "en->xx": s.acc_en_xx, "both": s.acc}
                for s in self.languages
            },
            "groups": {
                g.label: {"languages": len(g.languages), "missing": list(g.missing), "xx->en": g.acc_xx_en,
                          "en->xx": g.acc_en_xx, "both": g.acc}
                for g in self.groups
            },
            "sample": self.sample,
        }


def score_languages(embed: Embed, data: Sequence[TatoebaLanguage]) -> list[LanguageScore]:
    """Accuracy in both directions per language. Every distinct sentence is embedded once (the English
    sides repeat across languages), in one call to ``embed``."""
    texts = list(dict.fromkeys(t for lang in data for t in (*lang.sentences, *lang.english)))
    if not texts:
        return []
    emb = np.asarray(embed(texts), dtype=np.float32)
    if emb.shape[0] != len(texts):
        raise ValueError(f"embed returned {emb.shape[0]} rows for {len(texts)} sentences")
    row = {t: i for i, t in enumerate(texts)}
    scores = []
    for lang in data:
        x = emb[[row[t] for t in lang.sentences]]  # (n, D)
        e = emb[[row[t] for t in lang.english]]  # (n, D)
        scores.append(
            LanguageScore(lang.code, len(x), float(nearest_is_gold(x, e).mean()), float(nearest_is_gold(e, x).mean()))
        )
    return scores


def _base(code: str) -> str:
    return code.split("-")[0]


def codes_for(languages: Iterable[str], available: Iterable[str]) -> tuple[str, ...]:
    """The Tatoeba file codes among ``available`` that are one of ``languages`` (any spelling, e.g. the
    corpus partitions ``de``, ``zh-Hant``, ``sr-Latn``): same canonical code or same base language."""
    wanted: set[str] = set()
    for lang in languages:
        try:
            c = normalize(lang)
        except UnknownLanguage:
            continue
        wanted |= {c, _base(c)}
    out = []
    for code in available:
        try:
            c = normalize(code)
        except UnknownLanguage:
            continue
        if c in wanted or _base(c) in wanted:
            out.append(code)
    return tuple(out)


def group_scores(
    scores: Sequence[LanguageScore], all_codes: Sequence[str], trained: Iterable[str] | None = None
) -> list[GroupScore]:
    """The named groups, ``trained`` (when given) and ``evaluated``, each over its evaluated languages.
    ``all_codes``: every language of the set (what ``all112`` means). A group none of whose languages
    was evaluated is left out."""
    by_code = {s.code: s for s in scores}
    groups: dict[str, Sequence[str]] = {
        name: (members if members is not None else tuple(all_codes)) for name, members in GROUPS.items()
    }
    if trained is not None:
        groups["trained"] = codes_for(trained, all_codes)
    groups["evaluated"] = tuple(by_code)
    out = []
    for name, members in groups.items():
        have = [c for c in members if c in by_code]
        if not have:
            continue
        out.append(
            GroupScore(
                name, tuple(have), tuple(c for c in members if c not in by_code),
                float(np.mean([by_code[c].acc_xx_en for c in have])), float(np.mean([by_code[c].acc_en_xx for c in have])),
            )
        )
    return out


def sample_languages(data: Sequence[TatoebaLanguage], per_language: int) -> list[TatoebaLanguage]:
    """The same fixed subset of every language for every model: the ``per_language`` pairs whose hash of
    (language, line number, both texts) is lowest, in file order (a language with fewer pairs: all of
    them). Each sentence then retrieves among the sample's ``per_language`` candidates instead of all
    ~1,000, so accuracies are higher than on the whole set; what the sample is for is comparing models
    (the registry gate) in a fraction of the time: docs/evaluation.md shows how its figures track the
    full ones."""
    if per_language < 2:
        raise ValueError(f"a Tatoeba sample needs at least 2 pairs per language, got {per_language}")
    out = []
    for lang in data:
        keys = [hashlib.blake2b(f"{lang.code}\t{i}\t{x}\t{e}".encode(), digest_size=8).digest()
                for i, (x, e) in enumerate(zip(lang.sentences, lang.english, strict=True))]
        keep = sorted(sorted(range(len(keys)), key=keys.__getitem__)[:per_language])
        out.append(TatoebaLanguage(lang.code, tuple(lang.sentences[i] for i in keep),
                                   tuple(lang.english[i] for i in keep)))
    return out


def evaluate_tatoeba(
    embed: Embed,
    root: str | os.PathLike[str],
    langs: Iterable[str] | None = None,
    trained: Iterable[str] | None = None,
    sample: int | None = None,
) -> TatoebaResult:
    """Tatoeba accuracy of ``embed`` on the folder ``root`` for ``langs`` (None: all) with the groups;
    ``sample``: only the fixed ``sample_languages`` subset of that many pairs per language."""
    root = Path(root)
    data = load_tatoeba(root, None if langs is None else list(langs))
    if sample is not None:
        data = sample_languages(data, sample)
    scores = score_languages(embed, data)
    return TatoebaResult(scores, group_scores(scores, select_languages(root), trained), sample)


def gate_metrics(result: TatoebaResult) -> tuple[str, dict[str, float]]:
    """The registry gate's numbers from one Tatoeba result: (the deciding metric's name, {name: value}).

    Deciding: the all-112 mean (the paper's headline) when every language of the set was evaluated,
    else the mean over the languages evaluated (``tatoeba_mean``). Beside it, as columns that do not
    decide, every other named group evaluated in full (``tatoeba_xtreme36``, ``tatoeba_xnli14``,
    ``tatoeba_major14``). On a fixed sample the names carry it (``tatoeba_all112_sample300``): a sample's
    figure is never recorded under the whole set's name."""
    whole = result.complete_group(ALL)
    deciding = whole if whole is not None else result.group("evaluated")
    if deciding is None:
        raise ValueError("no Tatoeba language was evaluated")
    name = gate_metric_name(whole is not None, result.sample)
    values = {name: deciding.acc}
    values |= {gate_metric_name(True, result.sample, g.group): g.acc for g in result.groups
               if g.complete and g.group in GROUPS and g.group != ALL}
    return name, values


def gate_metric_name(complete: bool, sample: int | None, group: str = ALL) -> str:
    """``gate_metrics``' name of a group's figure: ``tatoeba_<group>`` when ``complete`` (else the mean over
    the languages evaluated, ``tatoeba_mean``), with the sample when there is one (``_sample300``)."""
    split = "" if sample is None else f"_{split_name(sample)}"
    return f"tatoeba_{group if complete else 'mean'}{split}"


def result_rows(result: TatoebaResult) -> list[dict]:
    """Rows for ``eval_results`` (without the run/model columns): accuracy per language and per group,
    in each direction and both."""
    rows = []
    for s in result.languages:
        for d, v in zip(DIRECTIONS, (s.acc_xx_en, s.acc_en_xx, s.acc), strict=True):
            rows.append({"scope": "language", "language": s.code, "direction": d, "metric": "accuracy",
                         "value": v, "n": s.n, "split": result.split})
    for g in result.groups:  # a partial group under its label: all112 (14/112)
        for d, v in zip(DIRECTIONS, (g.acc_xx_en, g.acc_en_xx, g.acc), strict=True):
            rows.append({"scope": "group", "language": g.label, "direction": d, "metric": "accuracy",
                         "value": v, "n": len(g.languages), "split": result.split})
    return rows
