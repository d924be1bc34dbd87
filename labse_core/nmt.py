"""A small Transformer translation model trained from scratch: the downstream check that mined bitext is useful.

Mined pairs are worth what a model learns from them. One *arm* of the check (``run_arm``) trains the same
small encoder-decoder, under the same step and time budget and seed, on one set of training pairs (mined,
gold, unfiltered...) and scores its translations of a fixed test set; arms differ only in their data.

    train pairs -> train_vocab: one shared sentencepiece unigram model over both sides        spm.model
                -> train: MarianMTModel from MarianConfig (no download), shared embeddings,
                   label-smoothed cross-entropy, AdamW, warm-up + inverse-sqrt lr, length buckets
                -> translate: greedy (beam 1) or beam search, model.generate
                -> score: chrF and BLEU (sacrebleu), with their signatures

Ids, fixed so that the sentencepiece model, the Marian config and generation agree::

    0 <pad>   (also Marian's decoder start: shift_tokens_right puts it before the first target token)
    1 <unk>
    2 </s>    appended to every source and target; generation stops on it
    3..       learned pieces

There is no <s>: Marian starts the decoder with <pad> and never sees <s>.

Training pairs longer than ``max_len`` tokens on either side (</s> included) are dropped, not truncated: a
truncated target would teach the model to stop mid-sentence (fairseq skips them too). The count is reported.

Run (CPU)::

    from labse_core.nmt import NmtConfig, run_arm
    res = run_arm(train_pairs, dev_pairs, test_pairs, NmtConfig(), "out/mined", target_lang="en")
    res.chrf, res.bleu, res.curve

What it writes: ``out/mined/spm.model`` and ``out/mined/model/`` (``save_pretrained``: config.json,
model.safetensors, generation_config.json); reload with ``MarianMTModel.from_pretrained`` and
``load_vocab``.

CPU speed (2 cores, default config, batch 64 of 15-25-word sentences): see ``NmtConfig.max_steps``.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sacrebleu
import sentencepiece as spm
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from transformers import GenerationConfig, MarianConfig, MarianMTModel

from labse_core import langcodes
from labse_core.training.optim import clip_and_step, set_lr
from storage.io import write_bytes_atomic

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
VOCAB_FILENAME = "spm.model"
MODEL_DIRNAME = "model"

BLEU_TOKENIZE: dict[str, str] = {"zh": "zh", "ja": "char", "th": "char", "lo": "char", "km": "char", "my": "char"}
"""sacrebleu's BLEU tokenizer by target language (base code); any other language gets "13a". Scripts written
without spaces need one: "13a" would make a whole sentence one word. Japanese gets "char" rather than
"ja-mecab", which needs MeCab installed; chrF needs no tokenizer and is the headline metric."""

Pair = tuple[str, str]
Progress = Callable[[int, int, float], None]
"""progress(step, total_steps, train_loss): called after every optimizer step (e.g. to update a tqdm bar)."""


class NmtError(ValueError):
    """Input the translation check cannot use (no pairs, an empty test set, a pair that is not two strings)."""


class NmtConfig(BaseModel):
    """One arm's model, training budget and decoding. Defaults: a small Transformer (half the width and layers
    of Vaswani et al. 2017's base, their schedule and label smoothing) whose arm fits ~10 minutes on 2 CPU cores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(8000, ge=8, description="Shared sentencepiece vocabulary (both sides, specials included). "
                            "An upper bound: small training sets get what sentencepiece can build from them.")
    vocab_sentences: int = Field(200_000, gt=100, description="Most sentences (both sides counted) the vocabulary "
                                 "is trained on; a larger set is sampled (seeded) so a big mined set keeps the vocabulary "
                                 "step short. sentencepiece needs > 100.")
    character_coverage: float = Field(0.9995, gt=0.0, le=1.0, description="Characters (by frequency) with a piece "
                                      "of their own; the rest are <unk>. 0.9995 is sentencepiece's advice for zh/ja.")
    d_model: int = Field(256, ge=8, description="Hidden size (embeddings, attention).")
    encoder_layers: int = Field(3, ge=1, description="Encoder layers.")
    decoder_layers: int = Field(3, ge=1, description="Decoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads in every layer; must divide d_model.")
    ffn_dim: int = Field(1024, ge=1, description="Feed-forward inner size.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on embeddings and sublayer outputs.")
    max_len: int = Field(64, ge=2, description="Longest sequence in tokens, </s> included: longer training pairs "
                         "are dropped, longer test sources truncated; also the most tokens a translation gets.")
    batch_size: int = Field(64, ge=1, description="Sentence pairs per optimizer step (batches are length-bucketed).")
    lr: float = Field(7e-4, gt=0.0, description="Peak learning rate, reached at the end of the warm-up.")
    warmup_steps: int = Field(200, ge=1, description="Linear warm-up steps; then lr * sqrt(warmup / step).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (fairseq's transformer: 0).")
    grad_clip: float = Field(1.0, ge=0.0, description="Global gradient-norm clip (0: none).")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="Label smoothing of the training loss (Vaswani: 0.1).")
    max_steps: int = Field(700, ge=1, description="Optimizer steps, unless max_minutes runs out first. The step "
                           "limit is the one that should stop an arm (the same compute for every arm, and the same "
                           "model for the same data and seed); max_minutes is the safety net. Measured on 2 CPU cores "
                           "at the defaults, batches of 15-25-word pairs: ~1.4 steps/s unloaded (0.5 with a neighbour "
                           "job), so 700 steps take ~8.5 min.")
    max_minutes: float = Field(10.0, gt=0.0, description="Wall-clock budget of the training loop (dev evaluations "
                               "included, vocabulary and test translation not); training stops at whichever limit first.")
    eval_every: int = Field(100, ge=1, description="Steps between curve points (running train loss, dev loss).")
    beam: int = Field(1, ge=1, description="Beam size of translate (1: greedy).")
    seed: int = Field(0, description="Seeds parameter init, dropout, batch order and the vocabulary trainer.")
    threads: int | None = Field(None, ge=1, description="torch threads while training and translating (None: "
                                "torch's default); restored afterwards.")


# ---------------------------------------------------------------------------------------------------
# Input checks


def _check_pairs(pairs: Sequence[Pair], what: str) -> list[Pair]:
    """``pairs`` as a list of (str, str), or a one-line NmtError naming the first bad one."""
    out = list(pairs)
    if not out:
        raise NmtError(f"no {what} pairs")
    for i, p in enumerate(out):
        if not (isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise NmtError(f"{what} pair {i} is not a (str, str) pair: {p!r:.80}")
    return [(s, t) for s, t in out]


def _check_sentences(sentences: Sequence[str], what: str) -> list[str]:
    out = list(sentences)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise NmtError(f"{what} {i} is not a str: {s!r:.80}")
    return out


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (process-global, hence restored); None: leave it."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# Vocabulary


def train_vocab(pairs: Sequence[Pair], folder: str | os.PathLike[str], cfg: NmtConfig) -> Path:
    """Train ONE sentencepiece unigram model on both sides of ``pairs`` (source and target share it, as
    the model shares its embeddings) and write it to ``folder/spm.model``; returns that path.

    ``cfg.vocab_size`` is a soft limit (``hard_vocab_limit=False``): a few hundred pairs cannot support
    8000 pieces and get fewer instead of an error. Deterministic: the sentences go in a fixed order
    (s0, t0, s1, t1, ...), on one thread, with the seeded generator (which also samples ``vocab_sentences``
    of them from a larger input); the model bytes come from ``model_writer``, so no temporary path is
    recorded in them.
    """
    pairs = _check_pairs(pairs, "training")
    lines = [s for pair in pairs for s in pair if s.strip()]
    if not lines:
        raise NmtError("every training sentence is blank: nothing to train a vocabulary on")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="unigram",
            vocab_size=cfg.vocab_size,
            hard_vocab_limit=False,
            input_sentence_size=cfg.vocab_sentences,
            shuffle_input_sentence=True,  # how a larger input is sampled down (seeded); no effect below the cap
            character_coverage=cfg.character_coverage,
            num_threads=1,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            eos_id=EOS_ID,
            bos_id=-1,
            minloglevel=2,  # errors only
        )
    except RuntimeError as e:
        raise NmtError(f"sentencepiece could not build a vocabulary (vocab_size={cfg.vocab_size}): "
                       f"{str(e).splitlines()[0]}") from e
    path = out / VOCAB_FILENAME
    write_bytes_atomic(path, buf.getvalue())  # an existing spm.model is always a complete one
    return path


def load_vocab(vocab: str | os.PathLike[str] | spm.SentencePieceProcessor) -> spm.SentencePieceProcessor:
    """The sentencepiece processor of a ``train_vocab`` file (a processor is passed through)."""
    if isinstance(vocab, spm.SentencePieceProcessor):
        return vocab
    return spm.SentencePieceProcessor(model_file=str(vocab))


def _encode(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text followed by </s>."""
    return [ids + [EOS_ID] for ids in sp.encode(list(texts))]


# ---------------------------------------------------------------------------------------------------
# Model


def build_model(vocab_size: int, cfg: NmtConfig) -> MarianMTModel:
    """A randomly initialised MarianMTModel (seed it first): one embedding matrix for encoder input,
    decoder input and output projection, sinusoidal positions, ids as in the module docstring."""
    if cfg.d_model % cfg.heads:
        raise NmtError(f"heads={cfg.heads} must divide d_model={cfg.d_model}")
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        dropout=cfg.dropout,
        max_position_embeddings=cfg.max_len,
        scale_embedding=True,  # sqrt(d_model) * embedding, as Marian and Vaswani et al.
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        forced_eos_token_id=None,
        bos_token_id=None,
    )
    model = MarianMTModel(config)
    model.generation_config = generation_config(cfg)  # saved with the model
    return model


def generation_config(cfg: NmtConfig) -> GenerationConfig:
    """Decoding of ``translate``: starts with <pad>, stops at </s>, at most cfg.max_len new tokens."""
    return GenerationConfig(
        decoder_start_token_id=PAD_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        suppress_tokens=[PAD_ID],  # never a target; an untrained model must not emit it mid-sentence
        max_new_tokens=cfg.max_len,
        num_beams=cfg.beam,
        do_sample=False,
    )


def lr_at(step: int, cfg: NmtConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to cfg.lr over warmup_steps, then
    inverse square root (Vaswani et al. 2017, Eq. 3, rescaled to peak at cfg.lr):

        lr(s) = cfg.lr * min(s / w, sqrt(w / s))        s = step + 1, w = warmup_steps
    """
    s, w = step + 1, cfg.warmup_steps
    return cfg.lr * min(s / w, math.sqrt(w / s))


# ---------------------------------------------------------------------------------------------------
# Batches


def _length_batches(src: list[list[int]], tgt: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar lengths (less padding, which CPU time is spent on), in random order.

    A random permutation, then a stable sort by (source, target) length: equal lengths land in a
    different order each epoch, so batches differ between epochs too.
    """
    order = list(range(len(src)))
    rng.shuffle(order)
    order.sort(key=lambda i: (len(src[i]), len(tgt[i])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def _collate(src: list[list[int]], tgt: list[list[int]], idx: list[int]) -> dict[str, torch.Tensor]:
    """Model inputs of one batch: right-padded sources, their mask, labels with -100 on padding (the
    decoder inputs are the labels shifted right behind <pad>, ``prepare_decoder_input_ids_from_labels``)."""
    input_ids = _pad([src[i] for i in idx], PAD_ID)  # (B, S)
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids.ne(PAD_ID).long(),  # (B, S)
        "labels": _pad([tgt[i] for i in idx], -100),  # (B, T)
    }


def _token_loss(model: MarianMTModel, batch: dict[str, torch.Tensor], label_smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed (label-smoothed) cross-entropy over the batch's target tokens, and their count."""
    labels = batch["labels"]  # (B, T)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels),
    ).logits  # (B, T, V)
    loss = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing, reduction="sum"
    )
    return loss, int(labels.ne(-100).sum())


def _dev_loss(model: MarianMTModel, src: list[list[int]], tgt: list[list[int]], batch_size: int) -> float:
    """Token-level cross-entropy on the dev pairs, without label smoothing (nats; exp() is perplexity)."""
    order = sorted(range(len(src)), key=lambda i: (len(src[i]), len(tgt[i])))
    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            loss, n = _token_loss(model, _collate(src, tgt, order[i : i + batch_size]), 0.0)
            total, tokens = total + float(loss), tokens + n
    model.train()
    return total / tokens


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """A trained model and how its training went."""

    model: MarianMTModel
    vocab: Path
    """The shared sentencepiece model (``train_vocab``)."""
    curve: list[dict[str, float | int]]
    """One point per ``eval_every`` steps and one at the last step: {step, train_loss (mean label-smoothed
    loss per target token since the previous point), dev_loss (unsmoothed, ``_dev_loss``), elapsed_s, lr}."""
    steps: int
    train_seconds: float
    stopped_by: Literal["steps", "time"]
    n_train: int
    """Training pairs used (those within max_len)."""
    n_too_long: int
    """Training pairs dropped for exceeding max_len tokens on either side."""


def _within(src: list[list[int]], tgt: list[list[int]], max_len: int) -> list[int]:
    return [i for i in range(len(src)) if len(src[i]) <= max_len and len(tgt[i]) <= max_len]


def train(
    train_pairs: Sequence[Pair],
    dev_pairs: Sequence[Pair],
    cfg: NmtConfig,
    out_dir: str | os.PathLike[str],
    progress: Progress | None = None,
) -> TrainResult:
    """Train the shared vocabulary (into ``out_dir``) and a model from scratch on ``train_pairs``, until
    ``cfg.max_steps`` steps or ``cfg.max_minutes`` of training, whichever comes first.

    Same pairs + same cfg -> the same model and curve (elapsed_s aside) as long as the step limit is the
    one that stops it: init, dropout and batch order all follow ``cfg.seed``.
    """
    train_pairs = _check_pairs(train_pairs, "training")
    dev_pairs = _check_pairs(dev_pairs, "dev")
    vocab = train_vocab(train_pairs, out_dir, cfg)
    sp = load_vocab(vocab)
    src, tgt = _encode(sp, [s for s, _ in train_pairs]), _encode(sp, [t for _, t in train_pairs])
    keep = _within(src, tgt, cfg.max_len)
    if not keep:
        raise NmtError(f"every training pair is longer than max_len={cfg.max_len} tokens")
    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    dev_src, dev_tgt = _encode(sp, [s for s, _ in dev_pairs]), _encode(sp, [t for _, t in dev_pairs])
    dev_keep = _within(dev_src, dev_tgt, cfg.max_len)
    if not dev_keep:
        raise NmtError(f"every dev pair is longer than max_len={cfg.max_len} tokens")
    dev_src, dev_tgt = [dev_src[i] for i in dev_keep], [dev_tgt[i] for i in dev_keep]

    # All randomness is torch's global generator (init, dropout) and a private one for batch order, so
    # nothing the caller does with `random` or numpy changes a run (and this run changes neither).
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    with _torch_threads(cfg.threads):
        model = build_model(sp.get_piece_size(), cfg)
        model.train()
        # Betas and eps of Vaswani et al.: beta2 0.98 reacts faster to the early large gradients.
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                                      weight_decay=cfg.weight_decay)
        curve: list[dict[str, float | int]] = []
        loss_sum, tok_sum = 0.0, 0
        batches: list[list[int]] = []
        step, stopped_by = 0, "steps"
        budget_s = cfg.max_minutes * 60.0
        t0 = time.monotonic()
        while step < cfg.max_steps:
            if not batches:  # a new epoch
                batches = _length_batches(src, tgt, cfg.batch_size, rng)
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)
            loss, n = _token_loss(model, _collate(src, tgt, batches.pop()), cfg.label_smoothing)
            (loss / n).backward()  # mean over the batch's target tokens
            clip_and_step(optimizer, model.parameters(), cfg.grad_clip)
            step += 1
            batch_loss = loss.item()
            loss_sum, tok_sum = loss_sum + batch_loss, tok_sum + n
            if progress is not None:
                progress(step, cfg.max_steps, batch_loss / n)
            out_of_time = time.monotonic() - t0 >= budget_s
            last = step == cfg.max_steps or out_of_time
            if step % cfg.eval_every == 0 or last:
                curve.append({
                    "step": step,
                    "train_loss": loss_sum / tok_sum,
                    "dev_loss": _dev_loss(model, dev_src, dev_tgt, cfg.batch_size),
                    "elapsed_s": time.monotonic() - t0,
                    "lr": lr,
                })
                loss_sum, tok_sum = 0.0, 0
            if out_of_time and step < cfg.max_steps:
                stopped_by = "time"
                break
        model.eval()
    return TrainResult(model=model, vocab=vocab, curve=curve, steps=step, train_seconds=time.monotonic() - t0,
                       stopped_by=stopped_by, n_train=len(src), n_too_long=len(train_pairs) - len(src))


# ---------------------------------------------------------------------------------------------------
# Translation and scores


def translate(
    model: MarianMTModel,
    vocab: str | os.PathLike[str] | spm.SentencePieceProcessor,
    sentences: Sequence[str],
    cfg: NmtConfig,
    batch_size: int = 64,
) -> list[str]:
    """Translations of ``sentences`` in their order: greedy (cfg.beam == 1) or beam search, at most
    cfg.max_len tokens each; sources longer than max_len tokens are truncated (</s> kept)."""
    sp = load_vocab(vocab)
    sentences = _check_sentences(sentences, "sentence")
    src = [ids[: cfg.max_len - 1] + [EOS_ID] for ids in sp.encode(sentences)]
    order = sorted(range(len(src)), key=lambda i: len(src[i]))  # similar lengths per batch: less padding
    out = [""] * len(src)
    gen = generation_config(cfg)
    model.eval()
    with _torch_threads(cfg.threads), torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            input_ids = _pad([src[j] for j in idx], PAD_ID)  # (B, S)
            generated = model.generate(
                input_ids=input_ids, attention_mask=input_ids.ne(PAD_ID).long(), generation_config=gen
            )  # (B, 1 + L): decoder start, tokens, </s>, padding
            for j, row in zip(idx, generated.tolist(), strict=True):
                ids = row[1:]
                out[j] = sp.decode(ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids)
    return out


def bleu_tokenize(target_lang: str) -> str:
    """sacrebleu's BLEU tokenizer for a target language (any code ``langcodes`` knows: zh, cmn, zh_TW...)."""
    return BLEU_TOKENIZE.get(langcodes.base_language(target_lang), "13a")


def score(hyps: Sequence[str], refs: Sequence[str], target_lang: str = "en") -> dict[str, float | str]:
    """Corpus chrF (chrF2, sacrebleu's default) and BLEU of ``hyps`` against one reference each:
    {"chrf", "bleu", "chrf_signature", "bleu_signature"}. The signatures say how a number was computed."""
    hyps, refs = _check_sentences(hyps, "hypothesis"), _check_sentences(refs, "reference")
    if not refs:
        raise NmtError("empty test set: nothing to score")
    if len(hyps) != len(refs):
        raise NmtError(f"{len(hyps)} hypotheses for {len(refs)} references")
    chrf = sacrebleu.metrics.CHRF()
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenize(target_lang))
    return {
        "chrf": float(chrf.corpus_score(hyps, [refs]).score),
        "bleu": float(bleu.corpus_score(hyps, [refs]).score),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_signature": str(bleu.get_signature()),
    }


# ---------------------------------------------------------------------------------------------------
# One arm


@dataclass
class ArmResult:
    """What one arm of the check produced; ``dataclasses.asdict`` makes it a record."""

    chrf: float
    bleu: float
    signatures: dict[str, str]
    """{"chrf": ..., "bleu": ...}: sacrebleu's signatures."""
    steps: int
    train_seconds: float
    translate_seconds: float
    stopped_by: Literal["steps", "time"]
    n_train: int
    n_too_long: int
    curve: list[dict[str, float | int]]
    vocab_path: Path
    model_dir: Path
    samples: list[dict[str, str]]
    """The first few test pairs with their translation: {source, reference, hypothesis}."""


def run_arm(
    train_pairs: Sequence[Pair],
    dev_pairs: Sequence[Pair],
    test_pairs: Sequence[Pair],
    cfg: NmtConfig,
    out_dir: str | os.PathLike[str],
    target_lang: str,
    progress: Progress | None = None,
    n_samples: int = 5,
) -> ArmResult:
    """Train on ``train_pairs`` (``train``), translate the sources of ``test_pairs``, score against their
    targets (``score``), and save the model and vocabulary into ``out_dir``. The test set is checked
    before any training, so a bad one costs nothing."""
    test_pairs = _check_pairs(test_pairs, "test")
    out = Path(out_dir)
    res = train(train_pairs, dev_pairs, cfg, out, progress)
    t0 = time.monotonic()
    hyps = translate(res.model, res.vocab, [s for s, _ in test_pairs], cfg)
    translate_seconds = time.monotonic() - t0
    refs = [t for _, t in test_pairs]
    scores = score(hyps, refs, target_lang)
    model_dir = out / MODEL_DIRNAME
    res.model.save_pretrained(model_dir)
    return ArmResult(
        chrf=scores["chrf"],
        bleu=scores["bleu"],
        signatures={"chrf": scores["chrf_signature"], "bleu": scores["bleu_signature"]},
        steps=res.steps,
        train_seconds=res.train_seconds,
        translate_seconds=translate_seconds,
        stopped_by=res.stopped_by,
        n_train=res.n_train,
        n_too_long=res.n_too_long,
        curve=res.curve,
        vocab_path=res.vocab,
        model_dir=model_dir,
        samples=[{"source": s, "reference": r, "hypothesis": h}
                 for (s, r), h in zip(test_pairs[:n_samples], hyps[:n_samples], strict=True)],
    )
