"""Dual-encoder fine-tuning: LaBSE's translation ranking stage, from one CPU to multi-GPU nodes.

LaBSE (Feng et al. 2022, Sec. 3) trains one shared encoder on translation pairs (x_i, y_i) with the
bidirectional additive margin softmax loss (labse_core.losses.ams, m = 0.3), every other pair of the
*global* batch serving as a negative ("cross-accelerator negative sampling"). This module is that
loop, written to be read top to bottom:

    config (FinetuneConfig, presets tiny_cpu / base_gpu)
    -> held-out split + language counts (one scan of the pair shards: `scan_pairs`)
    -> batches (ShardStream per data shard -> PairBatcher: drop held-out pairs, per-language
       rejection sampling, exactly B pairs per data shard per step)
    -> FineTuner.train_step (source and target in ONE forward, AMS over all ranks' pairs, AdamW, clip)
    -> evaluation (held-out bidirectional retrieval accuracy) -> best/ (exported model folder)
    -> checkpoints (atomic step-N/ dirs, exact resume), final/ (exported model folder)

Run it (writes LABSE_HOME/checkpoints/finetune/<run_name>/{step-N,best,final}/ and an MLflow run):

    # CPU, one process (pair shards under LABSE_HOME/lake/shards/pairs/, tokenizer LABSE_HOME/lake/vocab/hf):
    python -m labse_core.finetune.train --preset tiny_cpu --set max_steps=200
    # warm start from the pretraining stage's output (or any HF BERT folder / exported model folder):
    python -m labse_core.finetune.train --preset tiny_cpu \
        --set init_from=labse_home/checkpoints/pretrain/tiny-cpu/final
    # one node, 8 GPUs; the global batch is 8 x batch_size pairs, all of them negatives for each other:
    torchrun --nproc_per_node=8 -m labse_core.finetune.train --preset base_gpu
    # several nodes: the same with --nnodes/--node_rank/--rdzv_endpoint; any JSON config:
    torchrun ... -m labse_core.finetune.train --config finetune.json --set lr=2e-5

One forward per step. DDP allows one forward per backward, and the AMS gradient needs source and
target embeddings from the same graph, so a batch is encoded as one (2B, T) tensor: B sources then B
targets, padded to one length (`collate_pairs`).

Global batch and data split. Rank r reads data shards v = r * streams_per_rank + j (j < streams_per_rank)
of V = world_size x streams_per_rank, takes exactly `batch_size` pairs from each and concatenates them
in shard order. The global batch (the concatenation over ranks, which is also the order in which
`gather_with_grad` lays out the negatives) is therefore a function of V only: 2 processes x 1 stream
and 1 process x 2 streams compute the same loss and gradient (tested with dropout 0). Incomplete
batches never happen: a stream loops over epochs, and rejected rows are replaced by the next ones.

Held-out pairs. A pair is held out when a hash of (src_text, tgt_text) falls below `eval_fraction`:
the split is a pure function of the pair, the same on every rank, across resumes and across runs on
the same shards, and needs no second copy of the data. At most `eval_max_pairs` of them (in file order)
form the evaluation set; all of them are excluded from training.

Language balance. The pair shards are language-mixed (every part file holds all languages, shuffled,
as the sharding job writes them), so a per-language sampling rate cannot be applied by choosing files.
We apply it per row instead: rejection sampling keeps a training pair of language pair l with
probability q_l = (p_l / s_l) / max_k (p_k / s_k), where s_l = n_l / N is the language's share of the
training pairs and p_l = n_l^alpha / sum_k n_k^alpha the target distribution (labse_core.vocab's
`language_sampling_probs`). The kept stream then has language shares p_l. alpha = 1 keeps everything
(natural distribution); alpha < 1 up-samples low-resource pairs by discarding some high-resource ones
(each epoch draws a fresh subset, so no pair is permanently excluded). The counts n_l come from the
same scan that collects the held-out set, which reads the four id/text columns of every row group
once at start-up (minutes for billions of pairs; a manifest of counts would avoid it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from pydantic import model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from labse_core.data.shards import ShardLoader, ShardStream, StreamConfig, pad_sequences, shard_files
from labse_core.losses.ams import AdditiveMarginSoftmaxLoss, AmsLossConfig
from labse_core.model.encoder import LabseEncoder, is_sentence_transformers_folder, preset
from labse_core.pretrain.train import (
    DistEnv,
    RunConfig,
    SpecialIds,
    _all_reduce_sum,
    _gather_objects,
    _publish,
    latest_checkpoint,
    lr_at,
    param_groups,
    rng_state,
    set_rng_state,
    setup_distributed,
    start_mlflow,
)
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("src_lang", "tgt_lang", "src_text", "tgt_text", "src_ids", "tgt_ids")


# ---------------------------------------------------------------------------------------------------
# Config


class FinetuneConfig(RunConfig):
    """Everything a fine-tuning run depends on (with RunConfig's fields). Defaults are LaBSE's values
    where those exist."""

    run_name: str = "finetune"
    """Checkpoints go to LABSE_HOME/checkpoints/finetune/<run_name>/; the MLflow run's name."""

    # -- model -------------------------------------------------------------------------------------
    init_from: str | None = None
    """Start from this local folder: an exported model folder (labse_export.json: load_encoder), a
    sentence-transformers folder with LaBSE's pipeline such as a local copy of the released
    sentence-transformers/LaBSE (LabseEncoder.from_sentence_transformers: its Dense is the pooler), a
    pretraining `final/` folder or any HF BERT folder (LabseEncoder.from_pretrained_bert; a missing
    pooler is freshly initialised). None: random init from encoder_preset + vocab_size. A folder's
    geometry wins over encoder_preset/vocab_size; a folder's own tokenizer travels with the model
    (see retokenize)."""
    encoder_preset: Literal["tiny", "small", "base"] = "base"
    """Encoder geometry for a random init (labse_core.model.encoder presets)."""
    vocab_size: int = 501_153
    """Vocabulary of a random init; must equal the tokenizer's (LaBSE: 501,153)."""
    dropout: float = 0.1
    """Hidden and attention dropout, also applied to a warm-started model (BERT: 0.1)."""
    tokenizer_dir: str | None = None
    """HF tokenizer folder the pair shards' ids were made with; written into best/ and final/ unless
    init_from brings its own tokenizer. None: LABSE_HOME/lake/vocab/hf."""
    retokenize: bool | None = None
    """Tokenize src_text/tgt_text with the model's own tokenizer instead of reading the shards' ids.
    None: exactly when init_from holds a tokenizer whose vocabulary is not the shards' (e.g. the
    released LaBSE's 501k wordpieces); special_ids then come from that tokenizer."""
    special_ids: SpecialIds = SpecialIds()
    """[PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids of the vocabulary."""

    # -- loss --------------------------------------------------------------------------------------
    margin: float = 0.3
    """Additive margin m on the positive's cosine (LaBSE: 0.3)."""
    scale: float = 20.0
    """Scale s on cosines before the softmax (see labse_core.losses.ams for why 20)."""
    bidirectional: bool = True
    """L = L_xy + L_yx (LaBSE: yes)."""

    # -- data --------------------------------------------------------------------------------------
    pair_shards: str | None = None
    """Folder of SHARD_PAIRS part files; None: LABSE_HOME/lake/shards/pairs."""
    batch_size: int = 32
    """Pairs per data shard per step; a rank's batch is streams_per_rank x batch_size pairs and the
    global batch (all of them negatives for each other) world_size x streams_per_rank x batch_size."""
    streams_per_rank: int = 1
    """Data shards each rank reads and concatenates (see the module docstring); 1 process x 2 streams
    sees the same global batch as 2 processes x 1 stream."""
    max_len: int = 64
    """Longest sentence in tokens, [CLS]/[SEP] included; longer ones are truncated (LaBSE: 64)."""
    buffer_rows: int = 10_000
    """Shuffle/bucketing window of each data stream, in rows."""
    num_workers: int = 0
    """DataLoader worker processes per data stream (0: read in the training process)."""
    balance_alpha: float = 1.0
    """Language-pair sampling exponent: p_l ∝ n_l^alpha by rejection sampling; 1: natural distribution,
    0: uniform over language pairs (module docstring)."""
    train_fraction: float = 1.0
    """Train on this fraction of the non-held-out pairs (a hash of the pair picks them; the held-out
    set does not change): data-size ablations."""
    seed: int = 0
    """Seeds model init, data order, rejection sampling and dropout."""

    # -- evaluation --------------------------------------------------------------------------------
    eval_fraction: float = 0.01
    """Fraction of pairs held out (by hash of the pair) from training."""
    eval_max_pairs: int = 2000
    """Most held-out pairs evaluated (retrieval is over all of them: chance is 1 / this)."""
    eval_every: int = 1000
    """Steps between evaluations of held-out retrieval accuracy (and best/ selection); also at the end."""
    eval_at_start: bool = True
    """Evaluate before the first step of a fresh run (the init's accuracy; best/ starts from it)."""
    eval_batch_size: int = 256
    """Sentences per forward in evaluation."""

    # -- optimization (and RunConfig's) ------------------------------------------------------------
    lr: float = 1e-5
    """Peak AdamW learning rate (LaBSE's fine-tuning scale for a pretrained encoder)."""
    warmup_steps: int = 1000
    """Linear warm-up from ~0 to lr."""

    # -- duration ----------------------------------------------------------------------------------
    max_steps: int = 50_000
    """Optimizer steps of the whole run (the schedule's horizon)."""

    # -- checkpoints and logging (and RunConfig's) -------------------------------------------------
    export_final: bool = True
    """Export the last weights as final/ (an exported model folder) at the end."""

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.max_len < 3:
            raise ValueError("max_len must be >= 3 ([CLS] x [SEP])")
        for name in ("max_steps", "batch_size", "streams_per_rank", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.init_from is not None and not Path(self.init_from).is_dir():
            raise ValueError(
                f"init_from {self.init_from!r} is not a folder (a model folder on this machine: nothing is "
                "downloaded)"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.balance_alpha < 0:
            raise ValueError(f"balance_alpha must be >= 0, got {self.balance_alpha}")
        return self

    def loss_config(self) -> AmsLossConfig:
        return AmsLossConfig(
            margin=self.margin, scale=self.scale, bidirectional=self.bidirectional, gather_across_ranks=True
        )


def tiny_cpu(**overrides: Any) -> FinetuneConfig:
    """A run that learns to align translations in a minute on 2 CPU cores: tiny encoder, 8k vocab,
    no dropout, a high learning rate (a random or barely pretrained tiny model needs it)."""
    values: dict[str, Any] = dict(
        run_name="tiny-cpu",
        encoder_preset="tiny",
        vocab_size=8000,
        dropout=0.0,
        max_len=48,
        batch_size=32,
        lr=1e-3,
        warmup_steps=20,
        max_steps=300,
        buffer_rows=4096,
        eval_fraction=0.05,
        eval_max_pairs=500,
        eval_every=100,
        checkpoint_every=100,
        log_every=10,
        bf16=False,
    )
    return FinetuneConfig(**(values | overrides))


def base_gpu(**overrides: Any) -> FinetuneConfig:
    """LaBSE geometry on GPU nodes: 128 pairs per GPU (LaBSE's global batch is 4096 pairs: 32 GPUs),
    bf16, 4 loader workers, warm start expected via init_from."""
    values: dict[str, Any] = dict(
        run_name="base-gpu",
        encoder_preset="base",
        max_len=64,
        batch_size=128,
        lr=1e-5,
        warmup_steps=1000,
        max_steps=50_000,
        num_workers=4,
        buffer_rows=50_000,
        eval_every=2000,
        checkpoint_every=2000,
        log_every=50,
        bf16=True,
        compile=True,
    )
    return FinetuneConfig(**(values | overrides))


PRESETS = {"tiny_cpu": tiny_cpu, "base_gpu": base_gpu}


# ---------------------------------------------------------------------------------------------------
# Held-out split and language counts


def held_out_score(src_text: str, tgt_text: str, salt: str = "") -> float:
    """A uniform number in [0, 1) that depends on the pair only (the held-out split's coin); another
    salt gives an independent coin (the train_fraction subset)."""
    digest = hashlib.blake2b(f"{salt}{src_text}\t{tgt_text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_train_subset(src_text: str, tgt_text: str, fraction: float) -> bool:
    """Whether a (non-held-out) pair belongs to the `train_fraction` subset used for training."""
    return fraction >= 1.0 or held_out_score(src_text, tgt_text, salt="train\x00") < fraction


def is_held_out(src_text: str, tgt_text: str, fraction: float) -> bool:
    return fraction > 0 and held_out_score(src_text, tgt_text) < fraction


def pair_language(row: dict) -> str:
    """The language pair a row belongs to for balancing, e.g. "en-de"."""
    return f"{row['src_lang']}-{row['tgt_lang']}"


@dataclass
class PairScan:
    """What one pass over the shards found."""

    train_counts: dict[str, int]
    """Training (not held-out) pairs per language pair."""
    eval_rows: list[dict]
    """The evaluation set: held-out rows (all PAIR_COLUMNS), at most eval_max_pairs, in file order."""
    held_out: int
    """All held-out pairs (also those beyond eval_max_pairs, which are excluded from training too)."""


def scan_pairs(
    files: Sequence[Path], eval_fraction: float, eval_max_pairs: int, train_fraction: float = 1.0
) -> PairScan:
    """One pass over the pair shards, a record batch at a time: language counts and the held-out set."""
    counts: Counter[str] = Counter()
    eval_rows: list[dict] = []
    held = 0
    for path in files:
        for rb in pq.ParquetFile(path).iter_batches(columns=list(PAIR_COLUMNS), batch_size=8192):
            d = rb.to_pydict()
            for i in range(rb.num_rows):
                if is_held_out(d["src_text"][i], d["tgt_text"][i], eval_fraction):
                    held += 1
                    if len(eval_rows) < eval_max_pairs:
                        eval_rows.append({k: d[k][i] for k in PAIR_COLUMNS})
                elif in_train_subset(d["src_text"][i], d["tgt_text"][i], train_fraction):
                    counts[f"{d['src_lang'][i]}-{d['tgt_lang'][i]}"] += 1
    return PairScan(dict(sorted(counts.items())), eval_rows, held)


def acceptance_probs(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Rejection-sampling keep rate per language pair, q_l ∝ p_l / s_l = N p_l / n_l, max 1 (module
    docstring); the kept stream has language shares p_l ∝ n_l^alpha."""
    from labse_core.vocab import language_sampling_probs

    present = {k: n for k, n in counts.items() if n > 0}
    if not present:
        return {}
    p = language_sampling_probs(present, alpha)
    ratio = {k: p[k] / n for k, n in present.items()}
    top = max(ratio.values())
    return {k: r / top for k, r in ratio.items()}


# ---------------------------------------------------------------------------------------------------
# Batches


def collate_pairs(
    rows: Sequence[dict], max_len: int, special: SpecialIds = SpecialIds()
) -> dict[str, torch.Tensor]:
    """B pair rows -> one (2B, T) batch: rows 0..B-1 the sources, B..2B-1 the targets, each
    `[CLS] ids [SEP]` truncated to max_len, all right-padded to one length T (one forward per step)."""
    sp = special
    seqs = [
        np.concatenate([[sp.cls], np.asarray(r[col])[: max_len - 2], [sp.sep]])
        for col in ("src_ids", "tgt_ids")
        for r in rows
    ]
    input_ids = pad_sequences(seqs, sp.pad)  # (2B, T)
    attention_mask = pad_sequences([np.ones(len(s)) for s in seqs], 0)  # (2B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class PairBatcher:
    """Exactly `batch_size` training pairs per call from one data shard: held-out pairs dropped, the
    language rejection sampling applied, leftovers carried to the next call. Its state (stream
    position, sampler RNG, carried rows) restores the exact sequence of batches."""

    def __init__(
        self, cfg: FinetuneConfig, files: Path, shard: int, num_shards: int, accept: dict[str, float]
    ):
        self.cfg, self.accept = cfg, accept
        stream_cfg = StreamConfig(
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            buffer_rows=cfg.buffer_rows,
            length_column="src_ids",
            extra_tokens=2,
            max_len=cfg.max_len,
        )
        stream = ShardStream(
            files, columns=PAIR_COLUMNS, shard_index=shard, num_shards=num_shards, cfg=stream_cfg
        )
        self.loader = ShardLoader(stream, num_workers=cfg.num_workers)
        # Seeded by the data shard, not the rank: the draws do not depend on the process layout.
        self.rng = np.random.default_rng([cfg.seed, 7, shard])
        self.pending: list[dict] = []
        self._it: Iterator | None = None

    def _keep(self, row: dict) -> bool:
        if is_held_out(row["src_text"], row["tgt_text"], self.cfg.eval_fraction):
            return False
        if not in_train_subset(row["src_text"], row["tgt_text"], self.cfg.train_fraction):
            return False
        q = self.accept.get(pair_language(row), 1.0)
        return q >= 1.0 or self.rng.random() < q

    def next(self) -> list[dict]:
        if self._it is None:
            self._it = iter(self.loader)
        while len(self.pending) < self.cfg.batch_size:
            self.pending += [r for r in next(self._it) if self._keep(r)]
        out, self.pending = self.pending[: self.cfg.batch_size], self.pending[self.cfg.batch_size :]
        return out

    def state_dict(self) -> dict:
        return {
            "loader": self.loader.state_dict(),
            "rng": self.rng.bit_generator.state,
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.rng.bit_generator.state = state["rng"]
        self.pending = list(state["pending"])
        self._it = None


# ---------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def embed_ids(
    encoder: LabseEncoder,
    ids: Sequence[Sequence[int]],
    max_len: int,
    batch_size: int = 256,
    special: SpecialIds = SpecialIds(),
) -> torch.Tensor:
    """Unit embeddings (N, D), float32 on CPU, of id lists without [CLS]/[SEP], in eval mode."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for b in range(0, len(ids), batch_size):
            chunk = [{"src_ids": x, "tgt_ids": x} for x in ids[b : b + batch_size]]
            batch = collate_pairs(chunk, max_len, special)
            n = len(chunk)
            emb = encoder(batch["input_ids"][:n].to(device), batch["attention_mask"][:n].to(device))
            out.append(emb.float().cpu())  # (n, D)
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.cfg.hidden_size)


def retrieval_accuracy(
    x: torch.Tensor, y: torch.Tensor, src_texts: Sequence[str], tgt_texts: Sequence[str]
) -> dict:
    """Bidirectional nearest-neighbour (cosine) retrieval accuracy of unit embeddings x, y: (N, D).

    A retrieval counts as correct when it returns the gold sentence's *text*: gettext-like data holds
    the same English message translated into several languages, and retrieving an identical twin is
    not an error. Returns prefixed metrics: eval/acc_xy (source -> target), eval/acc_yx, eval/acc
    (their mean) and eval/n (pairs; chance accuracy is about 1/n).
    """
    scores = x @ y.T  # (N, N) cos(x_i, y_j)
    best_y = scores.argmax(dim=1).tolist()
    best_x = scores.argmax(dim=0).tolist()
    n = len(src_texts)
    acc_xy = sum(tgt_texts[j] == tgt_texts[i] for i, j in enumerate(best_y)) / max(n, 1)
    acc_yx = sum(src_texts[j] == src_texts[i] for i, j in enumerate(best_x)) / max(n, 1)
    return {"eval/acc_xy": acc_xy, "eval/acc_yx": acc_yx, "eval/acc": (acc_xy + acc_yx) / 2, "eval/n": n}


def evaluate(encoder: LabseEncoder, rows: Sequence[dict], cfg: FinetuneConfig) -> dict:
    """Held-out retrieval accuracy of `encoder` on pair rows (module docstring)."""
    x = embed_ids(encoder, [r["src_ids"] for r in rows], cfg.max_len, cfg.eval_batch_size, cfg.special_ids)
    y = embed_ids(encoder, [r["tgt_ids"] for r in rows], cfg.max_len, cfg.eval_batch_size, cfg.special_ids)
    return retrieval_accuracy(x, y, [r["src_text"] for r in rows], [r["tgt_text"] for r in rows])


# ---------------------------------------------------------------------------------------------------
# Model


def _set_dropout(encoder: LabseEncoder, p: float) -> None:
    """Apply cfg.dropout to a warm-started model (its folder's config carries the old rate)."""
    for m in encoder.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    bc = encoder.bert.config
    bc.hidden_dropout_prob = bc.attention_probs_dropout_prob = p
    for m in encoder.modules():  # attention modules that read the rate as a float
        if hasattr(m, "dropout_prob"):
            m.dropout_prob = p


def is_exported_model(path: str | Path) -> bool:
    from labse_core.export import METADATA_FILENAME

    return (Path(path) / METADATA_FILENAME).is_file()


def build_encoder(cfg: FinetuneConfig) -> LabseEncoder:
    """The encoder to fine-tune (module docstring of FinetuneConfig.init_from), seeded."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from and is_exported_model(cfg.init_from):
        from labse_core.export import load_encoder

        encoder, _ = load_encoder(cfg.init_from)
    elif cfg.init_from and is_sentence_transformers_folder(cfg.init_from):
        encoder = LabseEncoder.from_sentence_transformers(cfg.init_from)
    elif cfg.init_from:
        encoder = LabseEncoder.from_pretrained_bert(cfg.init_from)
    else:
        ecfg = preset(
            cfg.encoder_preset,
            vocab_size=cfg.vocab_size,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=cfg.special_ids.pad,
        )
        encoder = LabseEncoder(ecfg)
    _set_dropout(encoder, cfg.dropout)
    return encoder.train()


# ---------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class StepStats:
    loss: float
    """Global-batch AMS loss (mean of the ranks' losses = the one-process loss of the global batch)."""
    pairs: int
    """Pairs in the global batch."""
    tokens: int
    """Real tokens (sources and targets) in the global batch."""
    grad_norm: float
    lr: float


class FineTuner:
    """Model, loss, optimizer, step counter and the one training step. No data, no files: `run` owns them."""

    def __init__(self, cfg: FinetuneConfig, env: DistEnv, device: torch.device):
        self.cfg, self.env, self.device = cfg, env, device
        self.model = build_encoder(cfg).to(device)
        self.loss_fn = AdditiveMarginSoftmaxLoss(cfg.loss_config())
        kwargs: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs
        )
        self.ddp = (
            DDP(self.model, device_ids=[device] if device.type == "cuda" else None)
            if env.world_size > 1
            else None
        )
        net = self.ddp if self.ddp is not None else self.model
        self.net = torch.compile(net, dynamic=True) if cfg.compile else net
        self.step = 0
        # Dropout differs per rank (as it would across one big batch) but is reproducible.
        torch.manual_seed(cfg.seed + 1 + env.rank)

    def train_step(self, batch: dict[str, torch.Tensor]) -> StepStats:
        """One optimizer step on this rank's (2B, T) batch; all ranks call it together."""
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        tokens = int(batch["attention_mask"].sum())
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        n = batch["input_ids"].shape[0] // 2  # B local pairs
        self.model.train()
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and cfg.bf16
        )
        with autocast:
            emb = self.net(**batch)  # (2B, D) sources then targets, one forward
        emb = emb.float()
        loss = self.loss_fn(emb[:n], emb[n:])  # local rows vs all ranks' columns: (B, B*world) scores
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        totals = _all_reduce_sum(
            torch.stack(
                [
                    loss.detach().double(),
                    torch.tensor(float(n), dtype=torch.float64, device=self.device),
                    torch.tensor(float(tokens), dtype=torch.float64, device=self.device),
                ]
            ),
            env,
        )
        loss_sum, pairs, tok, norm = torch.cat([totals, grad_norm.double().reshape(1)]).tolist()
        return StepStats(
            loss=loss_sum / env.world_size, pairs=int(pairs), tokens=int(tok), grad_norm=norm, lr=lr
        )


# ---------------------------------------------------------------------------------------------------
# Checkpoints
#
#   checkpoints/finetune/<run>/step-N/
#     model.pt       LabseEncoder state_dict
#     optimizer.pt   AdamW state_dict
#     trainer.pt     step, every rank's RNG states, every data shard's batcher state (stream position,
#                    sampler RNG, carried rows), best accuracy/step, eval history, MLflow run id
#     config.json    the FinetuneConfig of the run
#   checkpoints/finetune/<run>/best/    exported model folder (labse_core.export) of the best eval
#   checkpoints/finetune/<run>/final/   exported model folder of the last step


def run_dir(layout: Layout, cfg: FinetuneConfig) -> Path:
    return layout.home / "checkpoints" / "finetune" / cfg.run_name


def save_checkpoint(root: Path, tuner: FineTuner, extra: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{tuner.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        torch.save(tuner.model.state_dict(), tmp / "model.pt")
        torch.save(tuner.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"step": tuner.step} | extra, tmp / "trainer.pt")
        (tmp / "config.json").write_text(tuner.cfg.model_dump_json(indent=2) + "\n")
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps = sorted(
        (int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit()
    )
    for _, old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class FinetuneResult:
    start_step: int
    """Step the run started (or resumed) from."""
    step: int
    """Step reached."""
    stopped_by: str
    """"max_steps", "stop_at_step" or "time_budget"."""
    losses: list[float] = field(default_factory=list)
    """Global-batch AMS loss of every step of this invocation."""
    pairs: list[int] = field(default_factory=list)
    """Pairs in every step's global batch."""
    step_times: list[float] = field(default_factory=list)
    """Wall seconds of every step, data loading included."""
    evals: list[dict] = field(default_factory=list)
    """Every evaluation of the run so far (resumed runs keep the earlier ones): metrics + "step"."""
    best_accuracy: float | None = None
    """Best eval/acc so far and its step; best_dir holds those weights."""
    best_step: int | None = None
    best_dir: Path | None = None
    final_dir: Path | None = None
    """final/ exported model folder (rank 0; None on other ranks or with export_final=False)."""
    checkpoint: Path | None = None
    """Newest step-N/ folder."""
    train_counts: dict[str, int] = field(default_factory=dict)
    """Training pairs per language pair (before rejection sampling)."""
    acceptance: dict[str, float] = field(default_factory=dict)
    """Rejection-sampling keep rate per language pair."""
    eval_pairs: list[tuple[str, str]] = field(default_factory=list)
    """The held-out (src_text, tgt_text) pairs evaluated (to compare this model with others on them)."""
    mlflow_run_id: str | None = None

    @property
    def pairs_per_s(self) -> float:
        """Training pairs per second over this invocation's steps (all ranks together)."""
        return sum(self.pairs) / max(sum(self.step_times), 1e-9)


class _Data:
    """This rank's data shards: one PairBatcher each; a step's batch is their concatenation."""

    def __init__(
        self, cfg: FinetuneConfig, files: Path, env: DistEnv, accept: dict[str, float], tokenizer: Any = None
    ):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.num_shards = env.world_size * cfg.streams_per_rank
        self.shard_ids = [env.rank * cfg.streams_per_rank + j for j in range(cfg.streams_per_rank)]
        self.batchers = {v: PairBatcher(cfg, files, v, self.num_shards, accept) for v in self.shard_ids}

    def next(self) -> dict[str, torch.Tensor]:
        rows = [r for v in self.shard_ids for r in self.batchers[v].next()]
        if self.tokenizer is not None:
            rows = retokenize(rows, self.tokenizer, self.cfg.max_len)
        return collate_pairs(rows, self.cfg.max_len, self.cfg.special_ids)

    def state_dict(self) -> dict:
        return {str(v): b.state_dict() for v, b in self.batchers.items()}

    def load_state_dict(self, state: dict) -> None:
        for v, b in self.batchers.items():
            b.load_state_dict(state[str(v)])


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def _shards_tokenizer_dir(cfg: FinetuneConfig, layout: Layout) -> Path:
    return Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else layout.vocab / "hf"


def _tokenizer_dir(cfg: FinetuneConfig, layout: Layout) -> Path:
    """The tokenizer that belongs to the model (written into best/ and final/)."""
    if cfg.init_from and has_tokenizer(cfg.init_from):
        return Path(cfg.init_from)
    return _shards_tokenizer_dir(cfg, layout)


def text_tokenizer(cfg: FinetuneConfig, layout: Layout) -> Any | None:
    """The tokenizer to re-tokenize pair texts with, or None to train on the shards' ids (retokenize)."""
    from labse_core.vocab import load_tokenizer

    model_dir, shards_dir = _tokenizer_dir(cfg, layout), _shards_tokenizer_dir(cfg, layout)
    if cfg.retokenize is False:
        return None
    if cfg.retokenize is None:
        if model_dir == shards_dir:
            return None
        model_tok = load_tokenizer(model_dir)
        if has_tokenizer(shards_dir) and load_tokenizer(shards_dir).get_vocab() == model_tok.get_vocab():
            return None
        log.info("%s has its own vocabulary: pair texts are re-tokenized with it", model_dir)
        return model_tok
    return load_tokenizer(model_dir)


def _check_vocab(cfg: FinetuneConfig, layout: Layout, encoder: LabseEncoder, tokenizer: Any) -> None:
    """The ids fed to the model must fit its embedding table: a clear error instead of an index error
    deep inside the embedding lookup."""
    from labse_core.vocab import load_tokenizer

    if tokenizer is None:
        shards_dir = _shards_tokenizer_dir(cfg, layout)
        if not has_tokenizer(shards_dir):
            return
        tokenizer = load_tokenizer(shards_dir)
    if len(tokenizer) > encoder.cfg.vocab_size:
        raise ValueError(
            f"the token ids come from a {len(tokenizer):,}-id vocabulary but the model "
            f"({cfg.init_from or cfg.encoder_preset}) has {encoder.cfg.vocab_size:,} embeddings: "
            "set vocab_size, or init_from a model built for this vocabulary"
        )


def special_ids_of(tokenizer: Any) -> SpecialIds:
    ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("pad", "unk", "cls", "sep", "mask")}
    missing = [k for k, v in ids.items() if v is None and k != "mask"]
    if missing:
        raise ValueError(f"the model's tokenizer has no {missing} token(s); LaBSE needs [CLS], [SEP], [PAD], [UNK]")
    return SpecialIds(**{k: v if v is not None else ids["unk"] for k, v in ids.items()})


def retokenize(rows: Sequence[dict], tokenizer: Any, max_len: int) -> list[dict]:
    """Rows with src_ids/tgt_ids recomputed from their texts (ids without [CLS]/[SEP], at most max_len - 2)."""
    if not rows:
        return []

    def ids(col: str) -> list[list[int]]:
        texts = [r[col] for r in rows]
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len - 2)["input_ids"]

    return [r | {"src_ids": s, "tgt_ids": t} for r, s, t in zip(rows, ids("src_text"), ids("tgt_text"), strict=True)]


def _export(
    encoder: LabseEncoder,
    cfg: FinetuneConfig,
    layout: Layout,
    out: Path,
    metrics: dict,
    step: int,
    run_id: str | None,
) -> Path:
    from labse_core.export import export_model

    card = {
        "name": f"LaBSE-style dual encoder ({cfg.run_name})",
        "description": "Fine-tuned with the bidirectional additive margin softmax loss on translation pairs.",
        "settings": {
            "step": step,
            "margin": cfg.margin,
            "scale": cfg.scale,
            "batch_size": cfg.batch_size,
            "max_len": cfg.max_len,
            "lr": cfg.lr,
            "balance_alpha": cfg.balance_alpha,
        },
        "metrics": {k: v for k, v in metrics.items() if k != "step"},
        "base_model": cfg.init_from,
        "mlflow_run_id": run_id,
    }
    return export_model(encoder, _tokenizer_dir(cfg, layout), out, model_card=card, overwrite=True)


def run(cfg: FinetuneConfig, layout: Layout | None = None) -> FinetuneResult:
    """Fine-tune (or resume) as configured; every rank of a torchrun job calls this. Rank 0 evaluates,
    logs and writes; all ranks return the same losses."""
    layout = layout or Layout.from_env()
    env, device, created_group = setup_distributed(cfg)
    root = run_dir(layout, cfg)
    files = Path(cfg.pair_shards) if cfg.pair_shards else layout.dataset_dir(SHARD_PAIRS.relpath)
    t_start = time.perf_counter()
    try:
        tokenizer = text_tokenizer(cfg, layout)
        if tokenizer is not None:
            cfg = cfg.model_copy(update={"special_ids": special_ids_of(tokenizer)})
        scan = scan_pairs(shard_files(files), cfg.eval_fraction, cfg.eval_max_pairs, cfg.train_fraction)
        if tokenizer is not None:
            scan.eval_rows = retokenize(scan.eval_rows, tokenizer, cfg.max_len)
        accept = acceptance_probs(scan.train_counts, cfg.balance_alpha)
        log.info(
            "training pairs %s, held out %d (evaluating %d), keep rates %s",
            scan.train_counts,
            scan.held_out,
            len(scan.eval_rows),
            accept,
        )
        ckpt = latest_checkpoint(root) if cfg.resume else None
        meta = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False) if ckpt else None
        tuner = FineTuner(cfg, env, device)
        _check_vocab(cfg, layout, tuner.model, tokenizer)
        data = _Data(cfg, files, env, accept, tokenizer)
        result = FinetuneResult(
            start_step=0, step=0, stopped_by="max_steps", train_counts=scan.train_counts, acceptance=accept,
            eval_pairs=[(r["src_text"], r["tgt_text"]) for r in scan.eval_rows],
        )
        if meta is not None:
            if meta["data_shards"] != data.num_shards:
                raise ValueError(
                    f"{ckpt} was written with world_size x streams_per_rank = {meta['data_shards']} data "
                    f"shards, now {data.num_shards}: the data positions do not carry over"
                )
            tuner.model.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=True))
            tuner.optimizer.load_state_dict(
                torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True)
            )
            tuner.step = meta["step"]
            data.load_state_dict(meta["data"])
            if len(meta["rng"]) == env.world_size:
                set_rng_state(meta["rng"][env.rank])
            else:
                log.warning(
                    "resuming on %d ranks from %d: RNG streams re-seeded", env.world_size, len(meta["rng"])
                )
            result.start_step = result.step = tuner.step
            result.evals = list(meta["evals"])
            result.best_accuracy, result.best_step = meta["best_accuracy"], meta["best_step"]
            result.checkpoint = ckpt
            if result.best_step is not None and (root / "best").is_dir():
                result.best_dir = root / "best"
            log.info("resumed from %s (step %d)", ckpt, tuner.step)
        if env.is_main and cfg.mlflow:
            result.mlflow_run_id = start_mlflow(
                cfg, layout, meta.get("mlflow_run_id") if meta else None, env, "finetune"
            )
        _loop(cfg, env, tuner, data, scan.eval_rows, layout, root, result, t_start)
        if env.is_main:
            if cfg.export_final:
                last = result.evals[-1] if result.evals and result.evals[-1]["step"] == tuner.step else {}
                result.final_dir = _export(
                    tuner.model, cfg, layout, root / "final", last, tuner.step, result.mlflow_run_id
                )
            if cfg.mlflow:
                import mlflow

                mlflow.set_tags({"best_dir": str(result.best_dir), "final_dir": str(result.final_dir)})
                mlflow.end_run()
        if env.world_size > 1:
            dist.barrier()
        return result
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _evaluate(cfg, env, tuner, eval_rows, layout, root, result) -> None:
    """Rank 0: held-out accuracy, MLflow, best/ when it improves. Other ranks wait (no collectives
    inside: the unwrapped model is used, so DDP's buffers are not touched)."""
    if env.is_main and eval_rows:
        metrics = evaluate(tuner.model, eval_rows, cfg) | {"step": tuner.step}
        result.evals.append(metrics)
        if cfg.mlflow:
            import mlflow

            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=tuner.step)
        if result.best_accuracy is None or metrics["eval/acc"] > result.best_accuracy:
            result.best_accuracy, result.best_step = metrics["eval/acc"], tuner.step
            result.best_dir = _export(
                tuner.model, cfg, layout, root / "best", metrics, tuner.step, result.mlflow_run_id
            )
        log.info(
            "step %d: %s (best %.4f at step %s)", tuner.step, metrics, result.best_accuracy, result.best_step
        )
    if env.world_size > 1:
        dist.barrier()


def _loop(
    cfg, env, tuner: FineTuner, data: _Data, eval_rows, layout, root, result: FinetuneResult, t_start
) -> None:
    from tqdm.auto import tqdm

    if tuner.step == 0 and cfg.eval_at_start and not result.evals:
        _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
    bar = tqdm(
        total=cfg.max_steps, initial=tuner.step, disable=not (env.is_main and cfg.progress), desc="finetune"
    )
    window: list[tuple[StepStats, float]] = []
    last_saved = tuner.step if result.checkpoint is not None else -1
    last_eval = result.evals[-1]["step"] if result.evals else -1
    end = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    try:
        while tuner.step < end:
            # Reduced over ranks: if one rank is out of time, all stop at the same step.
            over = cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s
            if _all_reduce_sum(torch.tensor([float(over)], device=tuner.device), env).item() > 0:
                result.stopped_by = "time_budget"
                break
            t0 = time.perf_counter()
            stats = tuner.train_step(data.next())
            dt = time.perf_counter() - t0
            result.losses.append(stats.loss)
            result.pairs.append(stats.pairs)
            result.step_times.append(dt)
            window.append((stats, dt))
            bar.update(1)
            if tuner.step % cfg.log_every == 0 or tuner.step == end:
                metrics = {
                    "loss": float(np.mean([s.loss for s, _ in window])),
                    "pairs_per_s": sum(s.pairs for s, _ in window) / max(sum(t for _, t in window), 1e-9),
                    "tokens_per_s": sum(s.tokens for s, _ in window) / max(sum(t for _, t in window), 1e-9),
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                }
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", pairs_s=f"{metrics['pairs_per_s']:.0f}")
                if env.is_main and cfg.mlflow:
                    import mlflow

                    mlflow.log_metrics(metrics, step=tuner.step)
                window = []
            if tuner.step % cfg.eval_every == 0:
                _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
                last_eval = tuner.step
            if tuner.step % cfg.checkpoint_every == 0:
                result.checkpoint = _checkpoint(cfg, env, tuner, data, root, result)
                last_saved = tuner.step
        if result.stopped_by != "time_budget" and tuner.step < cfg.max_steps:
            result.stopped_by = "stop_at_step"
        if last_eval != tuner.step:
            _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
        if last_saved != tuner.step:
            result.checkpoint = _checkpoint(cfg, env, tuner, data, root, result)
    finally:
        bar.close()
    result.step = tuner.step


def _checkpoint(cfg, env: DistEnv, tuner: FineTuner, data: _Data, root: Path, result: FinetuneResult) -> Path:
    """All ranks: gather data positions and RNG states; rank 0 writes step-N/ atomically."""
    data_states = _gather_objects(data.state_dict(), env)
    rngs = _gather_objects(rng_state(), env)
    path = root / f"step-{tuner.step}"
    if env.is_main:
        merged: dict[str, dict] = {}
        for s in data_states:
            merged.update(s)
        extra = {
            "data": merged,
            "rng": rngs,
            "data_shards": data.num_shards,
            "world_size": env.world_size,
            "evals": result.evals,
            "best_accuracy": result.best_accuracy,
            "best_step": result.best_step,
            "mlflow_run_id": result.mlflow_run_id,
        }
        path = save_checkpoint(root, tuner, extra, cfg.keep_checkpoints)
    if env.world_size > 1:
        dist.barrier()
    return path


# ---------------------------------------------------------------------------------------------------
# CLI


def load_config(preset_name: str | None, config: str | None, sets: list[str]) -> FinetuneConfig:
    """Preset, then a JSON file of fields, then `key=value` overrides (values parsed as JSON if they
    can be)."""
    values: dict[str, Any] = {}
    if config:
        values |= json.loads(Path(config).read_text())
    for item in sets:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    if preset_name:
        return PRESETS[preset_name](**values)
    return FinetuneConfig(**values)


def main(argv: list[str] | None = None) -> FinetuneResult:
    parser = argparse.ArgumentParser(
        prog="python -m labse_core.finetune.train",
        description="Dual-encoder AMS fine-tuning of the LaBSE encoder "
        "(run under torchrun for several processes).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe")
    parser.add_argument("--config", help="JSON file of FinetuneConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--home", help="LABSE_HOME (default: $LABSE_HOME or ./labse_home)")
    parser.add_argument("--result", help="write the result summary JSON here (rank 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.preset, args.config, args.set)
    except (ValueError, OSError) as e:  # pydantic's ValidationError is a ValueError; a missing --config file
        parser.error(f"bad configuration: {e}")
    result = run(cfg, Layout.from_env(args.home))
    if DistEnv.from_env().is_main:
        summary = {
            "start_step": result.start_step,
            "step": result.step,
            "stopped_by": result.stopped_by,
            "losses": result.losses,
            "pairs_per_s": result.pairs_per_s,
            "evals": result.evals,
            "best_accuracy": result.best_accuracy,
            "best_step": result.best_step,
            "best_dir": str(result.best_dir),
            "final_dir": str(result.final_dir),
            "checkpoint": str(result.checkpoint),
            "mlflow_run_id": result.mlflow_run_id,
        }
        if args.result:
            Path(args.result).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    return result


if __name__ == "__main__":
    main()
