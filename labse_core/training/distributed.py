"""This process's place in a torchrun job, its device, and the few collectives the trainers use.

One process: everything here is a no-op (no process group is created), so the same loop runs alone
on a CPU and under `torchrun --nproc_per_node=8` on a GPU node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


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


def setup(device_name: str | None) -> tuple[DistEnv, torch.device, bool]:
    """Device and process group; returns (env, device, whether we created the group, so the caller
    destroys it). device_name None: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    env = DistEnv.from_env()
    if device_name is not None:
        device = torch.device(device_name)
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


def teardown(created: bool) -> None:
    """Destroy the process group if `setup` created it (a caller's own group is left alone)."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `t` over ranks, in place (and returned)."""
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. one rank out of time: all stop at
    the same step; a rank leaving alone would hang the others in the next collective)."""
    return all_reduce_sum(torch.tensor([float(flag)], device=device), env).item() > 0


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, compile: bool) -> tuple[DDP | None, nn.Module]:
    """(the DDP wrapper or None alone, the module to call in training: DDP and/or torch.compile'd).
    The unwrapped `model` stays the one to save, evaluate and load state into."""
    ddp = DDP(model, device_ids=[device] if device.type == "cuda" else None) if env.world_size > 1 else None
    net = ddp if ddp is not None else model
    return ddp, torch.compile(net, dynamic=True) if compile else net


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast when asked and the device multiplies bf16 in hardware: CUDA, or a CPU with AMX /
    AVX512-BF16 (e5_cpu fine-tuning: 1.28x the pairs/s of fp32 on 2 cores, the same held-out accuracy);
    a disabled context elsewhere (CPUs without them emulate bf16, slower than fp32)."""
    from labse_core.model.precision import bf16_fast

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and bf16_fast(device))
