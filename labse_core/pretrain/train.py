"""MLM + TLM pretraining of the LaBSE encoder, from one CPU to multi-GPU nodes.

LaBSE (Feng et al. 2022, Sec. 3-4) pretrains its BERT encoder with masked language modelling on
monolingual text and translation language modelling on translation pairs, growing the model by
progressive stacking (L/4 -> L/2 -> L layers), before the dual-encoder translation ranking stage.
This module is that pretraining loop, written to be read top to bottom:

    config (labse_core.pretrain.config: PretrainConfig, presets tiny_cpu / base_gpu / e5_continue_*)
    -> batches (labse_core.pretrain.data: a ShardStream per source and data shard, PretrainCollator:
       [CLS]/[SEP], pad, mask; the model's own tokenizer when it brings one)
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labse_core.data.batches import special_ids_of
from labse_core.data.masking import IGNORE_INDEX
from labse_core.model import tokenizers
from labse_core.model.encoder import LabseEncoder
from labse_core.pretrain.config import PRESETS, STAGE, PretrainConfig
from labse_core.pretrain.data import PretrainStreams, text_tokenizer
from labse_core.pretrain.model import LabseForPretraining, grow_layers, shrink_layers, stage_layers
from labse_core.training import distributed
from labse_core.training.checkpoint import Checkpoint, Checkpointer
from labse_core.training.cli import train_main
from labse_core.training.distributed import DistEnv, all_reduce_sum, wrap_model
from labse_core.training.optim import clip_and_step, lr_at, make_optimizer, set_lr
from labse_core.training.result import TrainResult
from labse_core.training.stopping import Stopper
from labse_core.training.tracking import abandon_mlflow, end_mlflow, log_metrics, progress_bar, start_mlflow
from storage.io import atomic_dir
from storage.layout import Layout

log = logging.getLogger(__name__)


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
        tokenizers.check_fits(tokenizer, trainer.model.encoder.cfg.vocab_size, cfg.init_from or cfg.encoder_preset)
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
            result.final_dir = save_final(root / "final", trainer.model, tokenizers.own_tokenizer_dir(cfg.init_from))
            end_mlflow(cfg, {"final_dir": result.final_dir})
        distributed.barrier(env)
        return result
    except BaseException:
        if env.is_main:
            abandon_mlflow(result.mlflow_run_id if result is not None else None)
        raise
    finally:
        distributed.teardown(created_group)


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
