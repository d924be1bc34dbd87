"""MLM + TLM pretraining of the LaBSE encoder, from one CPU to multi-GPU nodes.

LaBSE (Feng et al. 2022, Sec. 3-4) pretrains its BERT encoder with masked language modelling on
monolingual text and translation language modelling on translation pairs, growing the model by
progressive stacking (L/4 -> L/2 -> L layers), before the dual-encoder translation ranking stage.
This module is that pretraining loop, written to be read top to bottom:

    config (PretrainConfig, presets tiny_cpu / base_gpu)
    -> batches (ShardStream per source and data shard, PretrainCollator: [CLS]/[SEP], pad, mask)
    -> Pretrainer.train_step (global-batch-normalised loss, accumulation, DDP, AdamW, clipping)
    -> checkpoints (atomic step-N/ dirs: everything needed for a bit-exact resume)
    -> final encoder (HF BertModel folder + labse_pooler.pt) for the fine-tuning stage.

Run it (what it writes: LABSE_HOME/checkpoints/pretrain/<run_name>/step-N/ and final/, an MLflow run):

    # CPU, one process (shards under LABSE_HOME/lake/shards/{mlm,tlm}/):
    python -m labse_core.pretrain.train --preset tiny_cpu --set max_steps=300
    # one node, 8 GPUs (each rank reads its own slice of the shards):
    torchrun --nproc_per_node=8 -m labse_core.pretrain.train --preset base_gpu
    # several nodes: the same with --nnodes/--node_rank/--rdzv_endpoint; any JSON config:
    torchrun ... -m labse_core.pretrain.train --config pretrain.json --set lr=2e-4

Global batch and data split. One optimizer step consumes `world_size x grad_accum` micro-batches.
Micro-batch j of rank r is read from *data shard* v = r * grad_accum + j of V = world_size x
grad_accum shards (labse_core.data.shards): the global batch is a function of V only, not of how
it is laid out over processes. A 2-process run and a 1-process run with grad_accum=2 therefore see
exactly the same batches, and, since the loss of every micro-batch is divided by the number of MLM
targets of the whole global batch (all-reduced before the backward), compute the same gradient.
The same V also lets a checkpoint resume on another layout with the same product.

MLM/TLM mixing: before each step, every rank draws the step's source (TLM with probability
`tlm_ratio`) from one seeded RNG that is identical on all ranks and saved in checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from labse_core.data.shards import ShardLoader, ShardStream, StreamConfig, pad_sequences
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.pretrain.masking import IGNORE_INDEX, MaskingConfig, make_tlm_example, mask_tokens
from labse_core.pretrain.model import LabseForPretraining, grow_layers, shrink_layers, stage_layers
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_TLM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids; the defaults are labse_core.vocab's fixed layout."""

    pad: int = 0
    unk: int = 1
    cls: int = 2
    sep: int = 3
    mask: int = 4


# ---------------------------------------------------------------------------------------------------
# Config


class RunConfig(BaseModel):
    """What every training run of this package shares (pretraining and fine-tuning): optimizer,
    schedule shape, stopping, systems, checkpoints and logging. The stages' configs add their model,
    data and the values that differ (lr, warm-up, horizon); all fields stay flat (`--set lr=...`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    run_name: str = "run"
    """Checkpoints go to LABSE_HOME/checkpoints/<stage>/<run_name>/; the MLflow run's name."""

    # -- optimization ------------------------------------------------------------------------------
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (BERT: 0.9, 0.999)."""
    eps: float = 1e-6
    """AdamW epsilon (BERT: 1e-6)."""
    weight_decay: float = 0.01
    """Decoupled weight decay (BERT: 0.01); never on biases or LayerNorm weights."""
    decay: Literal["linear", "cosine"] = "linear"
    """Decay from lr to min_lr_ratio * lr between warmup_steps and max_steps (BERT: linear)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (BERT: 1.0); 0 disables."""

    # -- duration ----------------------------------------------------------------------------------
    time_budget_s: float | None = None
    """Stop cleanly (checkpoint, final output) when this many seconds of this invocation are spent."""
    stop_at_step: int | None = None
    """Stop cleanly after this step without changing the schedule (max_steps): cut a run into
    sessions, e.g. to fit a scheduler's wall-time limit; the next invocation resumes."""

    # -- systems -----------------------------------------------------------------------------------
    device: str | None = None
    """None: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU, where it is slow); fine-tuning's loss stays float32."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs; off by default, it costs minutes of compile on CPU)."""

    # -- checkpoints and logging -------------------------------------------------------------------
    checkpoint_every: int = 1000
    """Write step-N/ every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """Keep the newest this many step-N/ folders."""
    resume: bool = True
    """Continue from the newest step-N/ of this run_name if there is one."""
    log_every: int = 10
    """Steps between MLflow metric logs (rank 0)."""
    mlflow: bool = True
    """Log params and metrics to MLflow (rank 0 only)."""
    mlflow_parent_run_id: str | None = None
    """Log as a child of this MLflow run (the pipeline's parent run)."""
    progress: bool = True
    """tqdm progress bar on rank 0."""


class PretrainConfig(RunConfig):
    """Everything a pretraining run depends on (with RunConfig's fields). Defaults are BERT/LaBSE
    values where those exist."""

    run_name: str = "pretrain"
    """Checkpoints go to LABSE_HOME/checkpoints/pretrain/<run_name>/; the MLflow run's name."""

    # -- model -------------------------------------------------------------------------------------
    encoder_preset: Literal["tiny", "small", "base"] = "base"
    """Encoder geometry (labse_core.model.encoder presets); `base` is LaBSE's BERT-base."""
    vocab_size: int = 501_153
    """Must equal the tokenizer's vocabulary (LaBSE: 501,153)."""
    dropout: float = 0.1
    """Hidden and attention dropout (BERT: 0.1)."""
    init_from: str | None = None
    """Warm start from a local HF BERT checkpoint folder (e.g. multilingual BERT, or a `final/`
    folder of an earlier run, whose mlm_head.pt is then loaded too); its geometry wins over
    encoder_preset/vocab_size/dropout."""
    special_ids: SpecialIds = SpecialIds()
    """[PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids of the vocabulary."""

    # -- data --------------------------------------------------------------------------------------
    mlm_shards: str | None = None
    """Folder of SHARD_MLM part files; None: LABSE_HOME/lake/shards/mlm."""
    tlm_shards: str | None = None
    """Folder of SHARD_TLM part files; None: LABSE_HOME/lake/shards/tlm."""
    tlm_ratio: float = 0.5
    """Probability that a step's batch is TLM rather than MLM. LaBSE trains both objectives but does
    not give a mixture; 0.5 weighs them equally. 0 or 1 needs only one kind of shard."""
    max_len: int = 128
    """Longest sequence, [CLS]/[SEP] included; longer examples are truncated (BERT phase 1: 128)."""
    batch_size: int = 32
    """Most sentences (MLM) or pairs (TLM) per micro-batch, per rank."""
    batch_tokens: int | None = None
    """Most padded tokens (B x T) per micro-batch; None: batches are batch_size examples."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step; global batch = world_size x grad_accum micro-batches."""
    buffer_rows: int = 10_000
    """Shuffle/bucketing window of each data stream, in rows (bounded memory per stream)."""
    num_workers: int = 0
    """DataLoader worker processes per stream (0: read in the training process)."""
    masking: MaskingConfig = MaskingConfig()
    """BERT masking rates: 15% of tokens, 80/10/10 [MASK]/random/kept."""
    seed: int = 0
    """Seeds model init, data order, masking, the MLM/TLM draws and dropout."""

    # -- optimization (and RunConfig's) ------------------------------------------------------------
    lr: float = 1e-4
    """Peak AdamW learning rate (BERT: 1e-4)."""
    warmup_steps: int = 10_000
    """Linear warm-up from ~0 to lr (BERT: 10k)."""

    # -- duration ----------------------------------------------------------------------------------
    max_steps: int = 1_000_000
    """Optimizer steps of the whole run (sets the schedule's horizon; BERT: 1M)."""
    stacking_steps: tuple[int, ...] = ()
    """Progressive stacking: () off, or (s1, s2): train L/4 layers up to step s1, L/2 up to s2, then L."""

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if not 0.0 <= self.tlm_ratio <= 1.0:
            raise ValueError(f"tlm_ratio must be in [0, 1], got {self.tlm_ratio}")
        if self.max_len < 5:
            raise ValueError("max_len must be >= 5 ([CLS] a [SEP] b [SEP])")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.checkpoint_every < 1:
            raise ValueError("max_steps, batch_size, grad_accum and checkpoint_every must be >= 1")
        if self.stacking_steps and (
            len(self.stacking_steps) != 2 or not 0 < self.stacking_steps[0] < self.stacking_steps[1]
        ):
            raise ValueError(
                f"stacking_steps must be () or (s1, s2) with 0 < s1 < s2, got {self.stacking_steps}"
            )
        return self


def tiny_cpu(**overrides: Any) -> PretrainConfig:
    """A run that learns something in a minute on 2 CPU cores: tiny encoder, 8k vocab, short sequences,
    no dropout (a few hundred steps do not overfit; dropout only slows them), a high learning rate."""
    values: dict[str, Any] = dict(
        run_name="tiny-cpu",
        encoder_preset="tiny",
        vocab_size=8000,
        dropout=0.0,
        max_len=64,
        batch_size=64,
        lr=2e-3,
        warmup_steps=30,
        max_steps=400,
        buffer_rows=4096,
        checkpoint_every=100,
        log_every=10,
        bf16=False,
    )
    return PretrainConfig(**(values | overrides))


def base_gpu(**overrides: Any) -> PretrainConfig:
    """LaBSE's encoder (BERT-base geometry, 501k vocabulary) on GPU nodes: bf16, 4 loader workers per
    stream, 128 sentences per GPU micro-batch at max_len 128, and progressive stacking
    L/4 -> L/2 -> L over the first 40% of the run (LaBSE's three stages; scale to your budget)."""
    values: dict[str, Any] = dict(
        run_name="base-gpu",
        encoder_preset="base",
        max_len=128,
        batch_size=128,
        lr=1e-4,
        warmup_steps=10_000,
        max_steps=1_000_000,
        stacking_steps=(100_000, 400_000),
        num_workers=4,
        buffer_rows=50_000,
        bf16=True,
        compile=True,
        checkpoint_every=5000,
        log_every=50,
    )
    return PretrainConfig(**(values | overrides))


PRESETS = {"tiny_cpu": tiny_cpu, "base_gpu": base_gpu}


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class PretrainCollator:
    """Shard rows -> a masked, padded batch. `kind` "mlm": rows hold ids without [CLS]/[SEP], which are
    added here; "tlm": rows hold packed `[CLS] src [SEP] tgt [SEP]` (make_tlm_example), re-packed if
    longer than max_len. Masking uses the stream's per-batch seed, so a batch is a pure function of
    its position in the stream."""

    kind: Literal["mlm", "tlm"]
    max_len: int
    vocab_size: int
    special: SpecialIds = SpecialIds()
    masking: MaskingConfig = MaskingConfig()

    def __call__(self, rows: list[dict], seed: int) -> dict[str, torch.Tensor]:
        sp = self.special
        if self.kind == "mlm":
            ids = [np.concatenate([[sp.cls], r["input_ids"][: self.max_len - 2], [sp.sep]]) for r in rows]
            types = [np.zeros(len(x), np.int64) for x in ids]
            positions = [np.arange(len(x)) for x in ids]
        else:
            ids, types, positions = [], [], []
            for r in rows:
                x, t, p = r["input_ids"], r["token_type_ids"], r["position_ids"]
                if len(x) > self.max_len:  # re-pack so both sentences are cut fairly, [SEP]s kept
                    n_src = int((t == 0).sum()) - 2
                    ex = make_tlm_example(x[1 : 1 + n_src], x[n_src + 2 : -1], sp.cls, sp.sep, self.max_len)
                    x, t, p = ex.input_ids.numpy(), ex.token_type_ids.numpy(), ex.position_ids.numpy()
                ids.append(x)
                types.append(t)
                positions.append(p)
        input_ids = pad_sequences(ids, sp.pad)  # (B, T)
        attention_mask = (pad_sequences([np.ones(len(x)) for x in ids], 0)).long()  # (B, T)
        token_type_ids = pad_sequences(types, 0)  # (B, T)
        position_ids = pad_sequences(positions, 0)  # (B, T)
        gen = torch.Generator().manual_seed(seed)
        masked, labels = mask_tokens(
            input_ids,
            mask_token_id=sp.mask,
            vocab_size=self.vocab_size,
            special_ids=(sp.pad, sp.cls, sp.sep),
            generator=gen,
            attention_mask=attention_mask,
            cfg=self.masking,
        )
        return {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "labels": labels,
        }


def make_loader(
    cfg: PretrainConfig, kind: Literal["mlm", "tlm"], files: Path, shard: int, num_shards: int
) -> ShardLoader:
    columns = ("input_ids",) if kind == "mlm" else ("input_ids", "token_type_ids", "position_ids")
    stream_cfg = StreamConfig(
        seed=cfg.seed + (0 if kind == "mlm" else 1),
        batch_size=cfg.batch_size,
        max_tokens=cfg.batch_tokens,
        buffer_rows=cfg.buffer_rows,
        extra_tokens=2 if kind == "mlm" else 0,
        max_len=cfg.max_len,
    )
    collate = PretrainCollator(kind, cfg.max_len, cfg.vocab_size, cfg.special_ids, cfg.masking)
    stream = ShardStream(
        files, columns=columns, shard_index=shard, num_shards=num_shards, cfg=stream_cfg, collate=collate
    )
    return ShardLoader(stream, num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------------
# Distributed set-up


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (RANK / WORLD_SIZE / LOCAL_RANK; 0 / 1 / 0 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: PretrainConfig) -> tuple[DistEnv, torch.device, bool]:
    """Device and process group; returns (env, device, whether we created the group)."""
    env = DistEnv.from_env()
    if cfg.device is not None:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return env, device, created


def _all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------
# Optimizer and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and LayerNorm weights (as BERT). The tied
    decoder weight is the word embedding, listed once. Frozen parameters (the pooler) are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to cfg.lr over warmup_steps,
    then linear or cosine decay to min_lr_ratio * lr at max_steps. A pure function of the step, so
    the step in a checkpoint restores the schedule exactly."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    f = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * f)


def stage_at(step: int, cfg: PretrainConfig) -> int:
    """Progressive stacking stage (0, 1, 2) at a step; always 2 without stacking."""
    if not cfg.stacking_steps:
        return 2
    return sum(step >= s for s in cfg.stacking_steps)


# ---------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class StepStats:
    source: str
    loss: float
    """Mean MLM cross-entropy over the global batch's targets."""
    accuracy: float
    """Fraction of the global batch's targets predicted exactly."""
    tokens: int
    """Real (non-pad) tokens in the global batch."""
    padded: int
    """Padded tokens (B x T summed over micro-batches) in the global batch."""
    grad_norm: float
    lr: float


def build_model(cfg: PretrainConfig) -> LabseForPretraining:
    """Fresh (seeded) or warm-started encoder + MLM head, with the pooler frozen (unused by MLM)."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
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
    model = LabseForPretraining(encoder)
    head = Path(cfg.init_from or "") / "mlm_head.pt"
    if cfg.init_from and head.is_file():
        # strict=False: the head's tied word embedding is the encoder's, already loaded.
        model.head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True), strict=False)
    encoder.pooler_dense.requires_grad_(False)
    return model


class Pretrainer:
    """Model, optimizer, step counter and the one training step. No data, no files: `run` owns those."""

    def __init__(
        self, cfg: PretrainConfig, env: DistEnv, device: torch.device, num_layers: int | None = None
    ):
        self.cfg, self.env, self.device = cfg, env, device
        self.model = build_model(cfg)
        self.full_layers = self.model.encoder.cfg.num_layers
        layers = num_layers if num_layers is not None else stage_layers(self.full_layers, stage_at(0, cfg))
        if layers < self.full_layers:
            shrink_layers(self.model, layers)
        self.model.to(device)
        self.optimizer = self._new_optimizer()
        self._wrap()
        self.step = 0
        self.mix_rng = random.Random(cfg.seed)  # same draws on every rank: all ranks pick the same source
        # Dropout differs per rank (as it would across a big batch) but is reproducible.
        torch.manual_seed(cfg.seed + 1 + env.rank)
        np.random.seed(cfg.seed + env.rank)
        random.seed(cfg.seed + env.rank)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {}
        if self.device.type == "cuda":
            kwargs["fused"] = True
        return torch.optim.AdamW(
            param_groups(self.model, self.cfg.weight_decay),
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            eps=self.cfg.eps,
            **kwargs,
        )

    def _wrap(self) -> None:
        self.ddp = (
            DDP(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            if self.env.world_size > 1
            else None
        )
        net = self.ddp if self.ddp is not None else self.model
        self.net = torch.compile(net, dynamic=True) if self.cfg.compile else net

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.bert.encoder.layer)

    def maybe_grow(self) -> bool:
        """Progressive stacking: grow to the layer count of the current stage. The optimizer is rebuilt
        and every new parameter starts from a copy of its source layer's AdamW moments, so the copied
        layers continue with the statistics of the layer they were copied from."""
        want = stage_layers(self.full_layers, stage_at(self.step, self.cfg))
        if want <= self.num_layers:
            return False
        old_names = {id(p): n for n, p in self.model.named_parameters()}
        old_params = dict(self.model.named_parameters())
        old_state = self.optimizer.state
        source = grow_layers(self.model, want)
        self.model.to(self.device)
        self.optimizer = self._new_optimizer()
        prefix = "encoder.bert.encoder.layer."
        for name, p in self.model.named_parameters():
            src_name = old_names.get(id(p))
            if src_name is None and name.startswith(prefix):
                i, rest = name[len(prefix) :].split(".", 1)
                src_name = f"{prefix}{source[int(i)]}.{rest}"
            q = old_params.get(src_name) if src_name else None
            if q is not None and q in old_state:
                self.optimizer.state[p] = {k: v.clone() for k, v in old_state[q].items()}
        self._wrap()
        log.info("progressive stacking: step %d, %d layers (copied from %s)", self.step, want, source)
        return True

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], source: str = "mlm") -> StepStats:
        """One optimizer step on this rank's micro-batches (all ranks call it together).

        loss_j = CE_sum_j * world / N_global, so that DDP's gradient average over ranks and the sum
        over micro-batches give d(sum of all CE / N_global): the gradient of the mean loss over the
        global batch, independent of how it is split.
        """
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        # Counts from the host copies: no device sync before the forward passes.
        n_local = sum(int((mb["labels"] != IGNORE_INDEX).sum()) for mb in micro_batches)
        tokens = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
        padded = sum(mb["attention_mask"].numel() for mb in micro_batches)
        n_global = _all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=self.device), env)
        scale = env.world_size / n_global.clamp(min=1).float()
        self.model.train()
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and cfg.bf16
        )
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        for j, mb in enumerate(micro_batches):
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            last = j == len(micro_batches) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    out = self.net(**mb)
                (out.loss_sum * scale).backward()
            loss_sum += out.loss_sum.detach().double()
            correct += out.num_correct.double()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        counts = torch.tensor([tokens, padded], dtype=torch.float64, device=self.device)
        totals = _all_reduce_sum(torch.cat([torch.stack([loss_sum, correct]), counts]), env)
        # One device -> host transfer per step (the per-step loss is part of the result).
        loss_total, correct_total, tokens_total, padded_total, norm, n = torch.cat(
            [totals, torch.stack([grad_norm.double(), n_global])]
        ).tolist()
        n = max(n, 1.0)
        return StepStats(
            source=source,
            loss=loss_total / n,
            accuracy=correct_total / n,
            tokens=int(tokens_total),
            padded=int(padded_total),
            grad_norm=norm,
            lr=lr,
        )

    # -- checkpoint state ----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "num_layers": self.num_layers,
            "mix_rng": self.mix_rng.getstate(),
        }

    def load(self, model_state: dict, optimizer_state: dict, step: int, mix_rng: Any) -> None:
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        self.step = step
        self.mix_rng.setstate(mix_rng)


# ---------------------------------------------------------------------------------------------------
# Checkpoints
#
#   checkpoints/pretrain/<run>/step-N/
#     model.pt       LabseForPretraining state_dict (encoder, frozen pooler, MLM head)
#     optimizer.pt   AdamW state_dict
#     trainer.pt     step, layers, schedule, MLflow run id, MLM/TLM draw RNG, every rank's RNG states,
#                    the position of every data stream (per source and data shard)
#     config.json    the PretrainConfig of the run
#   checkpoints/pretrain/<run>/final/
#     config.json + model.safetensors   HF BertModel (with our pooler as pooler.dense)
#     labse_pooler.pt, labse_encoder.json, mlm_head.pt


def run_dir(layout: Layout, cfg: PretrainConfig) -> Path:
    return layout.home / "checkpoints" / "pretrain" / cfg.run_name


def latest_checkpoint(root: Path) -> Path | None:
    steps = [
        (int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit()
    ]
    return max(steps)[1] if steps else None


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp dir into place (replacing an older one of the same name)."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(root: Path, trainer: Pretrainer, extra: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{trainer.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        state = trainer.state()
        torch.save(state.pop("model"), tmp / "model.pt")
        torch.save(state.pop("optimizer"), tmp / "optimizer.pt")
        torch.save(state | extra, tmp / "trainer.pt")
        (tmp / "config.json").write_text(trainer.cfg.model_dump_json(indent=2) + "\n")
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


def save_final(out: Path, model: LabseForPretraining) -> Path:
    """The encoder as a HF BertModel folder whose pooler is ours, so that
    `LabseEncoder.from_pretrained_bert(out)` restores bert + pooler_dense, plus labse_pooler.pt,
    labse_encoder.json and mlm_head.pt (continue pretraining with init_from=out)."""
    from transformers.models.bert.modeling_bert import BertPooler

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    encoder = model.encoder
    try:
        bert = encoder.bert
        bert.pooler = BertPooler(bert.config)
        bert.pooler.dense = encoder.pooler_dense
        try:
            bert.save_pretrained(tmp)
        finally:
            bert.pooler = None
        torch.save(encoder.pooler_dense.state_dict(), tmp / "labse_pooler.pt")
        head = {k: v for k, v in model.head.state_dict().items() if not k.startswith("word_embeddings")}
        torch.save(head, tmp / "mlm_head.pt")
        (tmp / "labse_encoder.json").write_text(json.dumps(asdict(encoder.cfg), indent=2) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class PretrainResult:
    start_step: int
    """Step the run started (or resumed) from."""
    step: int
    """Step reached."""
    stopped_by: str
    """"max_steps", "stop_at_step" or "time_budget"."""
    losses: list[float] = field(default_factory=list)
    """Global-batch MLM loss of every step of this invocation."""
    accuracies: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """"mlm" or "tlm" for every step."""
    layers: list[int] = field(default_factory=list)
    """Transformer layers of every step (progressive stacking)."""
    tokens: list[int] = field(default_factory=list)
    """Real tokens of every step's global batch."""
    step_times: list[float] = field(default_factory=list)
    """Wall seconds of every step, data loading included."""
    real_tokens: int = 0
    """Real tokens processed by this invocation (sum of `tokens`)."""
    padded_tokens: int = 0
    """Positions processed, padding included (B x T summed over all micro-batches)."""
    checkpoint: Path | None = None
    """Newest step-N/ folder."""
    final_dir: Path | None = None
    """The final encoder folder (rank 0; None on other ranks)."""
    mlflow_run_id: str | None = None

    @property
    def tokens_per_s(self) -> float:
        """Real tokens per second over this invocation's steps (all ranks together)."""
        return sum(self.tokens) / max(sum(self.step_times), 1e-9)

    @property
    def padding_ratio(self) -> float:
        """Fraction of the processed positions that were padding."""
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)


class _Sources:
    """This rank's data: one loader per source and local data shard, and their iterators."""

    def __init__(self, cfg: PretrainConfig, layout: Layout, env: DistEnv):
        self.cfg = cfg
        shards = env.world_size * cfg.grad_accum
        self.shard_ids = [env.rank * cfg.grad_accum + j for j in range(cfg.grad_accum)]
        dirs = {
            "mlm": Path(cfg.mlm_shards) if cfg.mlm_shards else layout.dataset_dir(SHARD_MLM.relpath),
            "tlm": Path(cfg.tlm_shards) if cfg.tlm_shards else layout.dataset_dir(SHARD_TLM.relpath),
        }
        wanted = {"mlm": cfg.tlm_ratio < 1.0, "tlm": cfg.tlm_ratio > 0.0}
        self.loaders: dict[str, dict[int, ShardLoader]] = {}
        for kind in ("mlm", "tlm"):
            if wanted[kind]:
                self.loaders[kind] = {
                    v: make_loader(cfg, kind, dirs[kind], v, shards) for v in self.shard_ids
                }
        self._iters: dict[tuple[str, int], Iterator] = {}

    def next(self, kind: str) -> list[dict]:
        out = []
        for v in self.shard_ids:
            if (kind, v) not in self._iters:
                self._iters[kind, v] = iter(self.loaders[kind][v])
            out.append(next(self._iters[kind, v]))
        return out

    def state_dict(self) -> dict:
        return {
            kind: {str(v): ld.state_dict() for v, ld in lds.items()} for kind, lds in self.loaders.items()
        }

    def load_state_dict(self, state: dict) -> None:
        for kind, lds in self.loaders.items():
            for v, ld in lds.items():
                if str(v) in state.get(kind, {}):
                    ld.load_state_dict(state[kind][str(v)])
        self._iters.clear()


def start_mlflow(cfg: RunConfig, layout: Layout, run_id: str | None, env: DistEnv, stage: str) -> str:
    """Rank 0: open (or, resuming, reopen) the run's MLflow run, a child of mlflow_parent_run_id if
    set; a new run gets every config field as a parameter (nested values as JSON) plus the stage."""
    import mlflow

    from storage import tracking

    tracking.configure(layout)
    parent = {"parent_run_id": cfg.mlflow_parent_run_id, "nested": True} if cfg.mlflow_parent_run_id else {}
    run = mlflow.start_run(run_id=run_id, **parent) if run_id else mlflow.start_run(run_name=cfg.run_name, **parent)
    if run_id is None:
        flat = {
            k: json.dumps(v) if isinstance(v, dict | list | tuple) else v
            for k, v in cfg.model_dump(mode="json").items()
        }
        mlflow.log_params(flat | {"world_size": env.world_size, "stage": stage})
    return run.info.run_id


def run(cfg: PretrainConfig, layout: Layout | None = None) -> PretrainResult:
    """Pretrain (or resume) as configured; every rank of a torchrun job calls this. Rank 0 logs and
    writes; all ranks return the same losses."""
    layout = layout or Layout.from_env()
    env, device, created_group = setup_distributed(cfg)
    root = run_dir(layout, cfg)
    t_start = time.perf_counter()
    try:
        ckpt = latest_checkpoint(root) if cfg.resume else None
        meta = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False) if ckpt else None
        trainer = Pretrainer(cfg, env, device, num_layers=meta["num_layers"] if meta else None)
        sources = _Sources(cfg, layout, env)
        if meta is not None:
            if meta["data_shards"] != env.world_size * cfg.grad_accum:
                raise ValueError(
                    f"{ckpt} was written with world_size x grad_accum = {meta['data_shards']} data shards, "
                    f"now {env.world_size} x {cfg.grad_accum}: the data positions do not carry over"
                )
            trainer.load(
                torch.load(ckpt / "model.pt", map_location=device, weights_only=True),
                torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True),
                meta["step"],
                meta["mix_rng"],
            )
            sources.load_state_dict(meta["data"])
            if len(meta["rng"]) == env.world_size:
                set_rng_state(meta["rng"][env.rank])
            else:
                log.warning(
                    "resuming on %d ranks from %d: RNG streams re-seeded", env.world_size, len(meta["rng"])
                )
            log.info("resumed from %s (step %d)", ckpt, trainer.step)
        mlflow_run = None
        if env.is_main and cfg.mlflow:
            mlflow_run = start_mlflow(cfg, layout, meta.get("mlflow_run_id") if meta else None, env, "pretrain")
        result = PretrainResult(
            start_step=trainer.step, step=trainer.step, stopped_by="max_steps", mlflow_run_id=mlflow_run
        )
        result.checkpoint = ckpt
        result = _loop(cfg, env, device, trainer, sources, root, result, t_start)
        if env.is_main:
            result.final_dir = save_final(root / "final", trainer.model)
            if cfg.mlflow:
                import mlflow

                mlflow.set_tag("final_dir", str(result.final_dir))
                mlflow.end_run()
        if env.world_size > 1:
            dist.barrier()
        return result
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _loop(
    cfg: PretrainConfig,
    env: DistEnv,
    device: torch.device,
    trainer: Pretrainer,
    sources: _Sources,
    root: Path,
    result: PretrainResult,
    t_start: float,
) -> PretrainResult:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.max_steps, initial=trainer.step, disable=not (env.is_main and cfg.progress), desc="pretrain"
    )
    window: list[StepStats] = []  # steps since the last log
    last_saved = trainer.step if result.checkpoint is not None else -1
    end = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    try:
        while trainer.step < end:
            # The budget is checked on every rank and reduced: if one rank is out of time, all stop
            # at the same step (a rank leaving alone would hang the others in the next all-reduce).
            over = cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s
            if _all_reduce_sum(torch.tensor([float(over)], device=device), env).item() > 0:
                result.stopped_by = "time_budget"
                break
            trainer.maybe_grow()  # progressive stacking: a no-op unless a stage starts at this step
            t0 = time.perf_counter()
            source = "tlm" if trainer.mix_rng.random() < cfg.tlm_ratio else "mlm"
            stats = trainer.train_step(sources.next(source), source)  # syncs: its loss is read back
            dt = time.perf_counter() - t0
            result.losses.append(stats.loss)
            result.accuracies.append(stats.accuracy)
            result.sources.append(source)
            result.layers.append(trainer.num_layers)
            result.tokens.append(stats.tokens)
            result.step_times.append(dt)
            result.real_tokens += stats.tokens
            result.padded_tokens += stats.padded
            window.append(stats)
            bar.update(1)
            if trainer.step % cfg.log_every == 0 or trainer.step == end:
                metrics = {
                    "loss": float(np.mean([w.loss for w in window])),
                    "mlm_accuracy": float(np.mean([w.accuracy for w in window])),
                    "tokens_per_s": sum(w.tokens for w in window)
                    / max(sum(result.step_times[-len(window) :]), 1e-9),
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                    "padding_ratio": result.padding_ratio,
                    "layers": trainer.num_layers,
                }
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                if env.is_main and cfg.mlflow:
                    import mlflow

                    mlflow.log_metrics(metrics, step=trainer.step)
                window = []
            if trainer.step % cfg.checkpoint_every == 0:
                result.checkpoint = _checkpoint(cfg, env, trainer, sources, root, result.mlflow_run_id)
                last_saved = trainer.step
        if result.stopped_by != "time_budget" and trainer.step < cfg.max_steps:
            result.stopped_by = "stop_at_step"
        if last_saved != trainer.step:
            result.checkpoint = _checkpoint(cfg, env, trainer, sources, root, result.mlflow_run_id)
    finally:
        bar.close()
    result.step = trainer.step
    return result


def _checkpoint(cfg, env: DistEnv, trainer: Pretrainer, sources: _Sources, root: Path, mlflow_run_id) -> Path:
    """All ranks: gather data positions and RNG states; rank 0 writes step-N/ atomically."""
    data_states = _gather_objects(sources.state_dict(), env)
    rngs = _gather_objects(rng_state(), env)
    path = root / f"step-{trainer.step}"
    if env.is_main:
        data: dict[str, dict] = {}
        for s in data_states:
            for kind, per_shard in s.items():
                data.setdefault(kind, {}).update(per_shard)
        extra = {
            "data": data,
            "rng": rngs,
            "data_shards": env.world_size * cfg.grad_accum,
            "world_size": env.world_size,
            "lr": lr_at(trainer.step, cfg),
            "mlflow_run_id": mlflow_run_id,
        }
        path = save_checkpoint(root, trainer, extra, cfg.keep_checkpoints)
    if env.world_size > 1:
        dist.barrier()
    return path


# ---------------------------------------------------------------------------------------------------
# CLI


def load_config(preset_name: str | None, config: str | None, sets: list[str]) -> PretrainConfig:
    """Preset, then a JSON file of fields, then `key=value` overrides (values parsed as JSON if they can be)."""
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
    return PretrainConfig(**values)


def main(argv: list[str] | None = None) -> PretrainResult:
    parser = argparse.ArgumentParser(
        prog="python -m labse_core.pretrain.train",
        description="MLM+TLM pretraining of the LaBSE encoder (run under torchrun for several processes).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe")
    parser.add_argument("--config", help="JSON file of PretrainConfig fields")
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
            "tokens_per_s": result.tokens_per_s,
            "padding_ratio": result.padding_ratio,
            "checkpoint": str(result.checkpoint),
            "final_dir": str(result.final_dir),
            "mlflow_run_id": result.mlflow_run_id,
        }
        if args.result:
            Path(args.result).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    return result


if __name__ == "__main__":
    main()
