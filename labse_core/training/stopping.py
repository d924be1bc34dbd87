"""When a training loop stops: the schedule's end (max_steps), a session's end (stop_at_step), or
this invocation's time budget (time_budget_s), agreed by all ranks."""

from __future__ import annotations

import time
from typing import Literal, Protocol

import torch

from labse_core.training.distributed import DistEnv, any_rank

StopReason = Literal["max_steps", "stop_at_step", "time_budget"]


class StopConfig(Protocol):
    max_steps: int
    stop_at_step: int | None
    time_budget_s: float | None


class Stopper:
    """`should_stop(step)` before every step; `stopped_by` says why the loop ended. The clock starts
    when the run starts (set-up and the resume count against the budget)."""

    def __init__(self, cfg: StopConfig, env: DistEnv, device: torch.device, t_start: float | None = None):
        self.cfg, self.env, self.device = cfg, env, device
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.end = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        """The last step of this invocation (without a time budget)."""
        self.stopped_by: StopReason = "max_steps"

    def should_stop(self, step: int) -> bool:
        """All ranks call it together (a collective inside when a step is still to run): if one rank
        is out of time, all stop at the same step."""
        if step >= self.end:
            self.stopped_by = "max_steps" if step >= self.cfg.max_steps else "stop_at_step"
            return True
        budget = self.cfg.time_budget_s
        if any_rank(budget is not None and time.perf_counter() - self.t_start > budget, self.env, self.device):
            self.stopped_by = "time_budget"
            return True
        return False
