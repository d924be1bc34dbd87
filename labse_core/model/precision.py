"""Inference precision: ``fp32`` (exact), ``bf16`` (bfloat16 weights and matrix multiplies) or ``int8``
(int8 weights and activations, CPU only, through CTranslate2: ``labse_core.model.int8``).

Measured on multilingual-e5-small (docs/inference.md): on a CPU with AMX / AVX512-BF16, bf16 encodes
about 2.5x faster than fp32 at cosine >= 0.9999 to fp32, and int8 is slower than bf16 and less exact;
on an AVX2-only CPU bf16 is emulated (5x slower than fp32) and int8 is 1.8x faster than fp32 at cosine
>= 0.99. So ``auto`` picks bf16 where the hardware has it (a CUDA device with bf16, or a CPU with
``amx_bf16`` / ``avx512_bf16``), else int8 on a CPU when the model folder holds its int8 files
(``labse quantize``), else fp32; the caller records what ran (``resolve_precision`` returns it): never
a silent switch.
"""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")
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


def resolve_precision(precision: str, device: torch.device, int8_ready: bool = False) -> str:
    """``auto`` -> the fast exact-enough choice for ``device``; an explicit precision is checked.
    ``int8_ready``: the model folder holds its int8 files (``labse_core.model.int8.has_int8``)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if bf16_fast(device):
            return "bf16"
        return "int8" if int8_ready and device.type == "cpu" else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(f"precision int8 runs on the CPU only (device {device}); use --precision bf16 "
                             "or --device cpu")
    if precision == "bf16" and not bf16_fast(device):
        what = "this GPU" if device.type == "cuda" else f"this CPU (no {' or '.join(BF16_CPU_FLAGS)})"
        raise PrecisionError(f"precision bf16: {what} has no bf16 matrix multiply; use --precision fp32")
    return precision


def autocast(precision: str, device: torch.device):
    """The context that runs a forward pass in ``precision`` (already resolved)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
