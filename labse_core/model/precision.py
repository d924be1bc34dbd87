"""Inference precision: ``fp32`` (exact) or ``bf16`` (bfloat16 matrix multiplies under ``torch.autocast``).

On this project's CPUs (Intel with AMX / AVX512-BF16) bf16 autocast encodes multilingual-e5-small about
1.9x faster than fp32 with embeddings at cosine >= 0.9999 to fp32 (docs/evaluation.md); without those
instructions oneDNN emulates bf16 and it is slower than fp32. ``auto`` picks bf16 where the hardware
has it (a CUDA device with bf16, or a CPU with ``amx_bf16`` / ``avx512_bf16``), fp32 elsewhere, and the
caller records what ran (``resolve_precision`` returns it): never a silent switch.
"""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


class PrecisionError(ValueError):
    """A precision this machine cannot run; the message is one line for the user."""


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 matrix multiplies run in hardware on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> the fast exact-enough choice for ``device``; an explicit precision is checked."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_fast(device) else "fp32"
    if precision == "bf16" and not bf16_fast(device):
        what = "this GPU" if device.type == "cuda" else f"this CPU (no {' or '.join(BF16_CPU_FLAGS)})"
        raise PrecisionError(f"precision bf16: {what} has no bf16 matrix multiply; use --precision fp32")
    return precision


def autocast(precision: str, device: torch.device):
    """The context that runs a forward pass in ``precision`` (already resolved)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
