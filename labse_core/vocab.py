"""The shared multilingual vocabulary: language-balanced sampling, sentencepiece training, HF export.

Pure functions, no Beam. A job samples sentences per language (``sample_quota`` /
``sample_sentences``), ``train_sentencepiece`` fits a unigram model on them and
``export_hf_tokenizer`` turns the ``.model`` into a Hugging Face fast-tokenizer folder that
``transformers.AutoTokenizer.from_pretrained`` loads offline and that gives the same ids.

Language balancing (XLM, Conneau & Lample 2019, Sec. 3.1; mBERT; LaBSE): sample language l with

    p_l = n_l^alpha / sum_k n_k^alpha          n_l = sentences available in language l

alpha = 1 is proportional to the data (English swamps the vocabulary), alpha = 0 is uniform
(a language with 300 sentences gets as many slots as one with 30 M); XLM used alpha = 0.5 for its
BPE, XLM-R 0.3 for data, and 0.3 is our default.

Id layout (fixed; ``labse_core.model`` relies on pad = 0, ``labse_core.pretrain`` on [MASK]):

    0 [PAD]   1 [UNK]   2 [CLS]   3 [SEP]   4 [MASK]   5..260 <0x00>..<0xFF>   261.. learned pieces

sentencepiece's own <s>/</s> are disabled: only the BERT specials exist. [CLS]/[SEP]/[MASK] are
sentencepiece *control* symbols: ids reserved for the model, never produced from text. The literal
string "[MASK]" in a sentence is therefore ordinary text (as in BERT's and LaBSE's original
preprocessing), and the exported HF tokenizer is saved with ``split_special_tokens=True`` to agree;
special tokens enter only through ``add_special_tokens`` / the post-processor, or as ids.

Byte fallback is on: a character outside the vocabulary becomes its UTF-8 bytes (<0xF0><0x9F>...)
rather than [UNK], so an emoji or a rare CJK character keeps its identity.

HF parity (tests/labse_core/test_vocab.py): the exported tokenizer gives sentencepiece's ids on
held-out text in 26 languages, Tatoeba, and whitespace/special-string fuzz. Known differences, both
outside NFC/NFKC real text: (1) a grapheme cluster under 6 bytes that starts with a character the
charsmap rewrites and carries a combining mark ("ﬁ\u0301", decomposed "o\u031b\u0323"): tokenizers'
``Precompiled`` normalizer drops the mark; NFKC-normalise such input upstream. (2) exact score ties
between permutations of the same pieces ("1"+"11" vs "11"+"1"): sentencepiece sums in float32, HF in
float64, so the winner can differ (seen ~1 in 3000 random digit strings, never in real text).

Run (what it writes: ``out/spm.model``, ``out/spm.vocab``, ``out/hf/tokenizer.json`` + configs):

    from labse_core.vocab import VocabConfig, train_sentencepiece, export_hf_tokenizer
    model = train_sentencepiece(sentences, "out", VocabConfig(vocab_size=8000))
    export_hf_tokenizer(model, "out/hf")
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

LABSE_VOCAB_SIZE = 501_153
"""LaBSE's vocabulary (Feng et al. 2022, Sec. 3.1: 501,153 wordpieces over 109 languages)."""

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS: dict[str, int] = {PAD: PAD_ID, UNK: UNK_ID, CLS: CLS_ID, SEP: SEP_ID, MASK: MASK_ID}
"""Special token -> id, the same in the sentencepiece model and the HF tokenizer."""

MODEL_FILENAME = "spm.model"
VOCAB_FILENAME = "spm.vocab"
SPACE = "\u2581"  # sentencepiece's whitespace marker "▁"


@dataclass(frozen=True)
class VocabConfig:
    """Sentencepiece training. Defaults are a small demo vocabulary; LaBSE's values are noted."""

    vocab_size: int = 8000
    """Pieces in the vocabulary, specials and the 256 byte pieces included. LaBSE: 501,153
    (``LABSE_VOCAB_SIZE``), which needs billions of sentences; 8000 suits this project's demo data.
    Must equal the encoder's ``EncoderConfig.vocab_size``."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    """Sentencepiece algorithm. LaBSE trained a WordPiece vocabulary; the unigram LM (Kudo 2018) is
    the open stand-in here: it needs no pre-tokenisation, so Thai or Japanese need no word
    segmenter. ``export_hf_tokenizer`` handles unigram only."""
    character_coverage: float = 0.9995
    """Fraction of characters (by frequency) that get a piece of their own; the rest fall back to
    bytes. 0.9995 is sentencepiece's advice for CJK-rich multilingual text."""
    alpha: float = 0.3
    """Language sampling exponent: p_l ∝ n_l^alpha (XLM / mBERT-style balancing). 1 = proportional
    to data, 0 = uniform over languages."""
    sample_size: int = 1_000_000
    """Total sentences drawn (over all languages, by ``sample_quota``) to train the vocabulary; also
    passed to sentencepiece as ``input_sentence_size`` so it never loads more than that."""
    seed: int = 0
    """Seed of the language sample and of sentencepiece's shuffling (``set_random_generator_seed``,
    global to the process). Same sample + same config -> byte-identical ``spm.model``."""
    byte_fallback: bool = True
    """Out-of-vocabulary characters become UTF-8 byte pieces instead of [UNK]."""
    max_sentence_length: int = 4192
    """Longest training sentence in bytes; longer ones are skipped by the trainer (spm default)."""
    num_threads: int = 2
    """Trainer threads."""

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIAL_TOKENS) + (256 if self.byte_fallback else 0) + 1:
            raise ValueError(f"vocab_size={self.vocab_size} cannot hold the specials and the 256 byte pieces")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in (0, 1], got {self.character_coverage}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.sample_size < 1 or self.max_sentence_length < 1 or self.num_threads < 1:
            raise ValueError("sample_size, max_sentence_length and num_threads must be >= 1")


# ---------------------------------------------------------------------------------------------------
# Language-balanced sampling


def language_sampling_probs(counts: Mapping[str, int], alpha: float) -> dict[str, float]:
    """p_l = n_l^alpha / sum_k n_k^alpha over languages with n_l > 0; languages with none get 0."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"negative sentence count in {dict(counts)}")
    # Logs keep n^alpha finite for huge n and alpha > 1; subtract the max before exp.
    logs = {lang: alpha * math.log(n) for lang, n in counts.items() if n > 0}
    if not logs:
        raise ValueError("no language has any sentence: sampling probabilities are undefined")
    top = max(logs.values())
    weights = {lang: math.exp(v - top) for lang, v in logs.items()}
    z = sum(weights.values())
    return {lang: weights.get(lang, 0.0) / z for lang in counts}


def sample_quota(counts: Mapping[str, int], total: int, alpha: float) -> dict[str, int]:
    """Sentences to draw per language: sums to exactly min(total, sum(counts)), never exceeds n_l.

    Water-filling: give each language total * p_l; a language that cannot fill its share gives all
    it has and the rest of the budget is re-shared, by the same p_l ∝ n_l^alpha, among the languages
    that still have sentences. Fractions go to the largest remainders (ties: by language code).
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"negative sentence count in {dict(counts)}")
    quota = dict.fromkeys(counts, 0)
    budget = min(total, sum(counts.values()))
    open_ = {lang for lang, n in counts.items() if n > 0}
    while budget > 0:
        probs = language_sampling_probs({lang: counts[lang] for lang in open_}, alpha)
        capped = {lang for lang in open_ if budget * probs[lang] >= counts[lang]}
        if not capped:
            break
        for lang in capped:
            quota[lang] = counts[lang]
            budget -= counts[lang]
        open_ -= capped
    if budget > 0:
        # Every open language now wants strictly less than it has, so floor + 1 still fits.
        probs = language_sampling_probs({lang: counts[lang] for lang in open_}, alpha)
        ideal = {lang: budget * probs[lang] for lang in open_}
        for lang, x in ideal.items():
            quota[lang] = math.floor(x)
        left = budget - sum(quota[lang] for lang in open_)
        by_remainder = sorted(open_, key=lambda lang: (-(ideal[lang] - math.floor(ideal[lang])), lang))
        for lang in by_remainder[:left]:
            quota[lang] += 1
    return quota


def sample_sentences(
    sentences_by_lang: Mapping[str, Sequence[str]], total: int, alpha: float, seed: int = 0
) -> list[str]:
    """Draw ``sample_quota`` sentences per language without replacement, then shuffle them together."""
    quota = sample_quota({lang: len(s) for lang, s in sentences_by_lang.items()}, total, alpha)
    rng = random.Random(seed)
    out: list[str] = []
    for lang in sorted(sentences_by_lang):  # sorted: the draw must not depend on dict order
        out.extend(rng.sample(list(sentences_by_lang[lang]), quota[lang]))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------
# Sentencepiece training


def _special_chars() -> str:
    """Characters spelling the specials and byte pieces ("[CLS]", "<0x4F>").

    They are forced into the vocabulary (``required_chars``) so that the HF Unigram model, which
    unlike sentencepiece also matches non-normal pieces inside text, always has an all-normal path
    through a literal "[CLS]" or "<0x41>" that beats those pieces (see ``_hf_vocab``).
    """
    spelled = "".join(SPECIAL_TOKENS) + "".join(f"<0x{b:02X}>" for b in range(256))
    return "".join(sorted(set(spelled)))


def train_sentencepiece(sentences: Iterable[str], out_dir: str | os.PathLike[str], cfg: VocabConfig) -> Path:
    """Train a sentencepiece model on ``sentences``; write ``out_dir/spm.model`` and ``spm.vocab``.

    ``sentences`` should already be the language-balanced sample (``sample_sentences``): the
    trainer sees them as one stream (its normalizer maps tabs and newlines to spaces). Training
    happens in a temporary folder inside ``out_dir``; the files are moved into place only when
    training succeeded (``spm.vocab`` first, so an existing ``spm.model`` means a complete pair).
    Returns the path of ``spm.model``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen = 0

    def stream() -> Iterator[str]:
        nonlocal seen
        for s in sentences:
            if s.strip():  # blank lines carry nothing; counting the rest names an empty input
                seen += 1
                yield s

    tmp = Path(tempfile.mkdtemp(prefix=".spm-train-", dir=out))
    try:
        spm.set_random_generator_seed(cfg.seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=stream(),
                model_prefix=str(tmp / "spm"),
                model_type=cfg.model_type,
                vocab_size=cfg.vocab_size,
                character_coverage=cfg.character_coverage,
                byte_fallback=cfg.byte_fallback,
                input_sentence_size=cfg.sample_size,
                shuffle_input_sentence=True,
                max_sentence_length=cfg.max_sentence_length,
                num_threads=cfg.num_threads,
                pad_id=PAD_ID,
                pad_piece=PAD,
                unk_id=UNK_ID,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                control_symbols=[CLS, SEP, MASK],  # ids 2, 3, 4: next free ids after pad/unk
                required_chars=_special_chars(),
                normalization_rule_name="nmt_nfkc",
                minloglevel=2,  # errors only; the trainer's INFO log is thousands of lines
            )
        except RuntimeError as e:
            raise _training_error(e, cfg, seen) from e
        # The proto records model_prefix, here a random temp path: pin it so that the same sample
        # and config give the same bytes (training itself is deterministic).
        proto = _load_proto(tmp / MODEL_FILENAME)
        proto.trainer_spec.model_prefix = "spm"
        (tmp / MODEL_FILENAME).write_bytes(proto.SerializeToString())
        os.replace(tmp / VOCAB_FILENAME, out / VOCAB_FILENAME)
        os.replace(tmp / MODEL_FILENAME, out / MODEL_FILENAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_layout(out / MODEL_FILENAME)
    return out / MODEL_FILENAME


def _training_error(e: RuntimeError, cfg: VocabConfig, seen: int) -> ValueError:
    msg = str(e)
    if seen == 0:
        return ValueError("no non-empty sentence to train the vocabulary on (empty input?)")
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        return ValueError(
            f"vocab_size={cfg.vocab_size} is more than {seen} training sentences support (at most "
            f"{m.group(2)}): lower VocabConfig.vocab_size or train on more text"
        )
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return ValueError(
            f"vocab_size={cfg.vocab_size} is too small: the data needs {m.group(2)} pieces (the characters "
            f"kept at character_coverage={cfg.character_coverage}, plus specials and byte pieces): raise "
            "VocabConfig.vocab_size or lower character_coverage"
        )
    return ValueError(f"sentencepiece training failed with {asdict(cfg)}: {msg}")


def _load_proto(spm_model: Path) -> pb.ModelProto:
    proto = pb.ModelProto()
    proto.ParseFromString(Path(spm_model).read_bytes())
    return proto


def _check_layout(spm_model: Path) -> None:
    """The special ids this module documents, or a clear error (e.g. a model trained elsewhere)."""
    proto = _load_proto(spm_model)
    got = {p.piece: i for i, p in enumerate(proto.pieces[: len(SPECIAL_TOKENS)])}
    if got != SPECIAL_TOKENS:
        raise ValueError(f"{spm_model}: special pieces are {got}, expected {SPECIAL_TOKENS}")


# ---------------------------------------------------------------------------------------------------
# Hugging Face export


def _hf_vocab(proto: pb.ModelProto) -> list[tuple[str, float]]:
    """(piece, score) for the HF Unigram model, with non-normal pieces made unreachable from text.

    Sentencepiece's Viterbi lattice holds only normal (and user-defined) pieces; HF's Unigram puts
    every vocabulary string in its trie, so the literal text "<0x41>" or "[UNK]" could match the byte
    or special piece (score 0, the best there is). Giving those pieces a score below any path of
    normal pieces over the same span keeps them out of every best path; byte fallback and specials
    still work, as they go by id. ``required_chars`` at training guarantees that normal path exists.
    """
    normal = pb.ModelProto.SentencePiece.NORMAL
    normal_pieces = {p.piece for p in proto.pieces if p.type == normal}
    others = [p for p in proto.pieces if p.type != normal]
    missing = sorted({c for p in others for c in p.piece} - normal_pieces)
    if missing:
        raise ValueError(
            f"characters {missing} spelling special/byte pieces have no piece of their own; train with "
            "labse_core.vocab.train_sentencepiece (required_chars) so HF encodes such text like sentencepiece"
        )
    min_normal = min(p.score for p in proto.pieces if p.type == normal)
    longest = max(len(p.piece) for p in others)
    # Any all-normal path over a span of `longest` chars scores >= longest * min_normal.
    unreachable = (longest + 1) * min(min_normal, -1.0) - 1000.0
    return [(p.piece, p.score if p.type == normal else unreachable) for p in proto.pieces]


def _spm_spaces(spm_model: Path) -> str:
    """Every character sentencepiece's normalizer turns into a plain space (tab, NBSP, U+3000, ZWNJ...).

    Read from the model itself (one batched ``normalize`` over all code points, ~2 s), so it is
    exact for whatever normalization rule the model was trained with.
    """
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and c != 0x20]
    normalized = sp.normalize([f"a{chr(c)}b" for c in cps])
    return "".join(chr(c) for c, n in zip(cps, normalized, strict=True) if n == f"{SPACE}a{SPACE}b")


def _build_backend(spm_model: Path):
    """A ``tokenizers.Tokenizer`` reproducing sentencepiece (unigram, nmt_nfkc, byte fallback).

    Built on ``transformers``' ``SpmConverter`` (handle_byte_fallback), with its normalizer,
    pre-tokenizer and decoder replaced. Sentencepiece (normalizer.cc, remove_extra_whitespaces +
    add_dummy_prefix) does, after its charsmap: drop leading spaces; collapse runs of spaces to one;
    " " -> "▁"; drop trailing "▁"; prepend one "▁" unless the result is empty. The normalizer below
    is that, step by step. Two places where the stock converter differs from sentencepiece:

    * its ``Strip`` removes every Unicode whitespace at the end (U+0085, U+1680...), where
      sentencepiece strips only what its charsmap made a space; here only " " is stripped;
    * ``tokenizers``' ``Precompiled`` normalizer rewrites a whole grapheme cluster (< 6 bytes) by the
      rule of its first character and drops the rest, so NBSP + ZWJ or a combining mark after
      U+3000 lost the mark. Characters the charsmap maps to a space are therefore turned into " "
      before it (``_spm_spaces``); a space never starts a cluster with what follows.

    The pre-tokenizer then only splits before each "▁" (sentencepiece pieces never contain an inner
    "▁", so this does not change the best path).
    """
    # transformers is imported here, not at module level: it costs seconds and the sampling/training
    # half of this module (used by Beam workers) does not need it.
    from transformers.convert_slow_tokenizer import SpmConverter

    class _LabseSpmConverter(SpmConverter):
        handle_byte_fallback = True

        def vocab(self, proto):
            return _hf_vocab(proto)

        def tokenizer(self, proto):
            if proto.trainer_spec.model_type != 1:
                raise ValueError(f"{spm_model}: only unigram sentencepiece models are exported")
            # No added tokens from the spm proto here: the specials are registered (special=True)
            # by the PreTrainedTokenizerFast wrapper, with the ids they already have in the model.
            return Tokenizer(Unigram(self.vocab(proto), unk_id=proto.trainer_spec.unk_id, byte_fallback=True))

        def normalizer(self, proto):
            spec = proto.normalizer_spec
            if not (spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces):
                raise ValueError(
                    f"{spm_model}: only the default sentencepiece whitespace handling is exported"
                )
            steps = [
                normalizers.Replace(Regex(r"\A +"), ""),
                normalizers.Replace(Regex(" {2,}"), " "),
                normalizers.Replace(" ", SPACE),
                normalizers.Replace(Regex(SPACE + r"+\z"), ""),
                normalizers.Prepend(SPACE),  # a no-op on the empty string, as in sentencepiece
            ]
            if spec.precompiled_charsmap:
                steps.insert(0, normalizers.Precompiled(spec.precompiled_charsmap))
            spaces = _spm_spaces(spm_model)
            if spaces:
                char_class = "".join(f"\\x{{{ord(c):X}}}" for c in spaces)  # Oniguruma escapes
                steps.insert(0, normalizers.Replace(Regex(f"[{char_class}]"), " "))
            return normalizers.Sequence(steps)

        def pre_tokenizer(self, replacement, add_prefix_space):
            return pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)

        def decoder(self, replacement, add_prefix_space):
            # Byte pieces -> UTF-8, "▁" -> " ", and drop the dummy-prefix space (sentencepiece's
            # DecodeSentencePiece does the same).
            return decoders.Sequence(
                [
                    decoders.Replace(SPACE, " "),
                    decoders.ByteFallback(),
                    decoders.Fuse(),
                    decoders.Strip(" ", 1, 0),
                ]
            )

        def post_processor(self):
            return processors.TemplateProcessing(
                single=f"{CLS}:0 $A:0 {SEP}:0",
                pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
                special_tokens=[(CLS, CLS_ID), (SEP, SEP_ID)],
            )

    class _Original:  # what SpmConverter reads from a slow tokenizer
        vocab_file = str(spm_model)
        add_prefix_space = True

    return _LabseSpmConverter(_Original()).converted()


def export_hf_tokenizer(
    spm_model: str | os.PathLike[str], out_dir: str | os.PathLike[str], model_max_length: int = 512
) -> Path:
    """Write a HF fast-tokenizer folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json).

    ``AutoTokenizer.from_pretrained(out_dir)`` then encodes like sentencepiece, with BERT framing:
    ``[CLS] A [SEP]`` (token_type_ids 0) and ``[CLS] A [SEP] B [SEP]`` (0 ... 0 1 ... 1).
    ``model_max_length``: BERT's / LaBSE's 512 positions. Returns ``out_dir``.
    """
    from transformers import PreTrainedTokenizerFast

    spm_model, out = Path(spm_model), Path(out_dir)
    _check_layout(spm_model)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(spm_model),
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        # "[MASK]" typed in a sentence is text, as in sentencepiece and BERT's original pipeline.
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if got != SPECIAL_TOKENS:  # the wrapper would silently append a special it did not find
        raise ValueError(f"HF special ids {got} differ from the sentencepiece layout {SPECIAL_TOKENS}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tok.save_pretrained(tmp)
        # transformers 5 no longer writes it; older readers (and people) look for it.
        specials = {
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def vocab_size_of(vocab_dir: str | os.PathLike[str]) -> int:
    """Pieces of the sentencepiece model in ``vocab_dir`` (the vocab stage's output): the vocab_size a
    model trained on its shards needs. A missing model is a clear error naming the file."""
    import sentencepiece as spm

    path = Path(vocab_dir) / MODEL_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build the vocabulary first (labse vocab, or labse demo)")
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def load_tokenizer(path: str | os.PathLike[str]):
    """``AutoTokenizer.from_pretrained(path)`` for an exported folder; never touches the network."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
