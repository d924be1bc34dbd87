"""AdamW as BERT sets it up (no decay on biases and LayerNorm), its warm-up + decay schedule, and the
optimizer step with gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import nn


class ScheduleConfig(Protocol):
    """The fields the schedule reads (RunConfig's, plus the stage's lr / warm-up / horizon)."""

    lr: float
    warmup_steps: int
    max_steps: int
    decay: str
    min_lr_ratio: float


class OptimizerConfig(Protocol):
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and LayerNorm weights (as BERT). A tied weight
    is listed once (named_parameters deduplicates). Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module, cfg: OptimizerConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over `param_groups`. fused: the fused kernel (one pass over each parameter's state instead
    of a chain of foreach ops; on CPU too); None: on CUDA only. On CPU it rounds differently from
    foreach (~1e-5 relative on a loss curve), so it is opt-in there."""
    if fused is None:
        fused = device.type == "cuda"
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs
    )


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to cfg.lr over warmup_steps,
    then linear or cosine decay to min_lr_ratio * lr at max_steps. A pure function of the step, so
    the step in a checkpoint restores the schedule exactly."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    f = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * f)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def clip_and_step(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], grad_clip: float
) -> torch.Tensor:
    """Clip the global gradient norm of `params` to grad_clip (0: no clipping, the norm is still
    measured), step, zero the gradients. Returns the norm before clipping (a device tensor: reading
    it syncs, so the caller reads it with the step's other numbers)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params), grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
