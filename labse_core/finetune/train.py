"""Dual-encoder fine-tuning: LaBSE's translation ranking stage, from one CPU to multi-GPU nodes.

LaBSE (Feng et al. 2022, Sec. 3) trains one shared encoder on translation pairs (x_i, y_i) with the
bidirectional additive margin softmax loss (labse_core.losses.ams, m = 0.3), every other pair of the
*global* batch serving as a negative ("cross-accelerator negative sampling"). This module is that
loop, written to be read top to bottom:

    config (labse_core.finetune.config: FinetuneConfig with its loss, AmsLossConfig; presets tiny_cpu /
       base_gpu / e5_cpu / e5_gpu)
    -> held-out split + language counts (one scan of the pair shards: labse_core.finetune.data)
    -> batches (labse_core.finetune.data.PairStreams: drop held-out pairs, per-language rejection
       sampling, exactly B pairs per data shard per step; the model's own tokenizer when it brings one)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labse_core.data.batches import special_ids_of
from labse_core.data.shards import shard_files
from labse_core.evaluation.retrieval import pair_rows_accuracy
from labse_core.finetune.config import LOSS_ALIASES, PRESETS, STAGE, FinetuneConfig
from labse_core.finetune.data import (
    PairStreams,
    acceptance_probs,
    model_tokenizer_dir,
    retokenize,
    scan_pairs,
    shards_tokenizer_dir,
    text_tokenizer,
)
from labse_core.logfmt import numbers
from labse_core.losses.ams import AdditiveMarginSoftmaxLoss, grad_cache_chunks_backward
from labse_core.model import tokenizers
from labse_core.model.encoder import LabseEncoder, is_sentence_transformers_folder
from labse_core.training import distributed
from labse_core.training.checkpoint import Checkpoint, Checkpointer
from labse_core.training.cli import train_main
from labse_core.training.distributed import DistEnv, all_reduce_sum, wrap_model
from labse_core.training.optim import clip_and_step, lr_at, make_optimizer, set_lr
from labse_core.training.result import TrainResult
from labse_core.training.stopping import Stopper
from labse_core.training.tracking import abandon_mlflow, end_mlflow, log_metrics, progress_bar, start_mlflow
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# The model


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


def _check_vocab(cfg: FinetuneConfig, layout: Layout, encoder: LabseEncoder, tokenizer: Any) -> None:
    """The ids fed to the model (the text tokenizer's, or else the shards') fit its embedding table."""
    from labse_core.vocab import load_tokenizer

    if tokenizer is None:
        shards_dir = shards_tokenizer_dir(cfg, layout)
        tokenizer = load_tokenizer(shards_dir) if tokenizers.has_tokenizer(shards_dir) else None
    tokenizers.check_fits(tokenizer, encoder.cfg.vocab_size, cfg.init_from or cfg.encoder_preset)


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
    return export_model(encoder, model_tokenizer_dir(cfg, layout), out, model_card=card, overwrite=True)


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

            tokenizer = load_tokenizer(model_tokenizer_dir(cfg, layout))
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
