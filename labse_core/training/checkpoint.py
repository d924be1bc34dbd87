"""Checkpoints that resume a run exactly, on any process layout with the same number of data shards.

    <Layout.checkpoints(stage, run)>/step-N/
      model.pt       the model's state_dict
      optimizer.pt   AdamW state_dict
      trainer.pt     step, every rank's RNG states ("rng"), every data shard's stream position ("data"),
                     data_shards, world_size, the MLflow run id, and what the trainer adds
      config.json    the run's config

A step-N/ folder is written under a temporary name and renamed into place (storage.io.atomic_dir),
so a crash never leaves a half-written checkpoint that `latest_checkpoint` would pick (the hidden
.step-N.*.partial a killed writer leaves is removed by the next save). The newest `keep` of them are
kept.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel

from labse_core.training.config import RunConfig
from labse_core.training.distributed import DistEnv, barrier, gather_objects
from labse_core.training.result import TrainResult
from storage.faults import maybe_die
from storage.io import atomic_dir

log = logging.getLogger(__name__)


class DataState(Protocol):
    """A rank's data: its streams' positions, keyed so that the ranks' keys never collide at the
    leaves (e.g. by data shard), and restorable from the merged state of all ranks."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# ---------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
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
# step-N/ folders


def checkpoint_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every published step-N/ under root, oldest first."""
    return sorted(
        (int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit()
    )


def latest_checkpoint(root: Path) -> Path | None:
    steps = checkpoint_steps(root)
    return steps[-1][1] if steps else None


def _to_safe(obj: Any) -> Any:
    """``obj`` with NumPy arrays and scalars replaced by what ``torch.load(weights_only=True)`` accepts
    (tensors, Python numbers, str, tuples, lists, dicts), so resuming unpickles no arbitrary object;
    ``_from_safe`` undoes it. An array travels as {"__ndarray__": tensor, "dtype": its dtype}: torch has
    no uint32 arithmetic on every version, so the values go as int64 and the dtype restores them."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "iub"
                                                                                   else np.float64)),
                "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_safe(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_to_safe(v) for v in obj)
    return obj


def _from_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj and set(obj) == {"__ndarray__", "dtype"}:
            return obj["__ndarray__"].numpy().astype(np.dtype(obj["dtype"]))
        return {k: _from_safe(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_from_safe(v) for v in obj)
    return obj


def save_checkpoint(
    root: Path,
    step: int,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    trainer_state: dict,
    config: BaseModel,
    keep: int,
) -> Path:
    """Write root/step-<step>/ atomically and delete all but the newest `keep` step folders.

    A step folder above `step` belongs to an earlier run of this run_name that this one started over
    from (resume off): it is removed too, so that pruning and a later resume only see this run's
    checkpoints (a run's steps only increase). Until this run writes its first checkpoint, the earlier
    run's stay as they were."""
    final = root / f"step-{step}"
    with atomic_dir(final) as tmp:
        torch.save(model_state, tmp / "model.pt")
        maybe_die("checkpoint.writing")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(_to_safe({"step": step} | trainer_state), tmp / "trainer.pt")
        (tmp / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    steps = checkpoint_steps(root)
    earlier_run = [old for s, old in steps if s > step]
    this_run = [old for s, old in steps if s <= step]
    for old in earlier_run + this_run[: max(0, len(this_run) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    # What a process killed inside an earlier write left (never read: hidden names, see
    # checkpoint_steps); one writer per run folder, so none of these is still being written.
    for leftover in root.glob(".step-*"):
        if leftover.name.endswith(".partial") or ".old-" in leftover.name:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def merge_rank_states(states: list[dict]) -> dict:
    """One data state from every rank's: the union of their keys, and of the dicts under a key that
    several ranks share (e.g. {"mlm": {shard: state}} from each rank -> all shards under "mlm")."""
    merged: dict[str, Any] = {}
    for s in states:
        for k, v in s.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = merged[k] | v
            else:
                merged[k] = v
    return merged


class Trainer(Protocol):
    """What a checkpoint saves of a trainer (Pretrainer, FineTuner)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int


class Checkpointer:
    """When a training loop writes step-N/: every cfg.checkpoint_every steps (`after_step`) and after
    its last step (`at_end`, unless that step was just written); each one becomes result.checkpoint
    (a resumed run starts from the one it resumed). `extra_state` gives what the trainer adds to
    trainer.pt at that moment; the MLflow run id is always there (a resumed run reopens it)."""

    def __init__(
        self,
        cfg: RunConfig,
        env: DistEnv,
        root: Path,
        trainer: Trainer,
        data: DataState,
        data_shards: int,
        result: TrainResult,
        extra_state: Callable[[], dict],
    ):
        self.cfg, self.env, self.root, self.trainer = cfg, env, root, trainer
        self.data, self.data_shards, self.result, self.extra_state = data, data_shards, result, extra_state
        self._saved_step = trainer.step if result.checkpoint is not None else -1

    def after_step(self) -> None:
        if self.trainer.step % self.cfg.checkpoint_every == 0:
            self.save()
        maybe_die("train.step")

    def at_end(self) -> None:
        if self._saved_step != self.trainer.step:
            self.save()

    def save(self) -> Path:
        """All ranks: gather data positions and RNG states; rank 0 writes step-N/; all wait for it."""
        t, env = self.trainer, self.env
        data_states = gather_objects(self.data.state_dict(), env)
        rngs = gather_objects(rng_state(), env)
        path = self.root / f"step-{t.step}"
        if env.is_main:
            state = self.extra_state() | {
                "mlflow_run_id": self.result.mlflow_run_id,
                "data": merge_rank_states(data_states),
                "rng": rngs,
                "data_shards": self.data_shards,
                "world_size": env.world_size,
            }
            model_state, optimizer_state = t.model.state_dict(), t.optimizer.state_dict()
            path = save_checkpoint(self.root, t.step, model_state, optimizer_state, state, self.cfg, self.cfg.keep_checkpoints)
        barrier(env)
        self.result.checkpoint, self._saved_step = path, t.step
        return path


# ---------------------------------------------------------------------------------------------------
# Resume


@dataclass
class Checkpoint:
    """A step-N/ folder being resumed from; `meta` is its trainer.pt."""

    path: Path
    meta: dict

    @classmethod
    def latest(cls, root: Path, resume: bool) -> Checkpoint | None:
        """The newest step-N/ under root when resuming is on, else None."""
        path = latest_checkpoint(root) if resume else None
        if path is None:
            return None
        return cls(path, _from_safe(torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)))

    @property
    def step(self) -> int:
        return self.meta["step"]

    def model_state(self, device: torch.device) -> dict:
        return torch.load(self.path / "model.pt", map_location=device, weights_only=True)

    def optimizer_state(self, device: torch.device) -> dict:
        return torch.load(self.path / "optimizer.pt", map_location=device, weights_only=True)

    def load_into(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
        """Load the model's and the optimizer's state; returns the checkpoint's step."""
        model.load_state_dict(self.model_state(device))
        optimizer.load_state_dict(self.optimizer_state(device))
        return self.step

    def restore(self, env: DistEnv, data: DataState, data_shards: int, split: str) -> None:
        """Data positions and this rank's RNG states. The global batch is a function of the number
        of data shards only, so another process layout with the same number resumes exactly; `split`
        names the product in the error (e.g. "world_size x grad_accum")."""
        if self.meta["data_shards"] != data_shards:
            raise ValueError(
                f"{self.path} was written with {split} = {self.meta['data_shards']} data shards, now "
                f"{data_shards}: the data positions do not carry over"
            )
        data.load_state_dict(self.meta["data"])
        if len(self.meta["rng"]) == env.world_size:
            set_rng_state(self.meta["rng"][env.rank])
        else:
            log.warning("resuming on %d ranks from %d: RNG streams re-seeded", env.world_size, len(self.meta["rng"]))
        log.info("resumed from %s (step %d)", self.path, self.step)
