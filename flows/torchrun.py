"""Training stages on several devices: the Prefect task launches ``torchrun`` as a subprocess.

A task runs in the serving process; a data-parallel job needs one process per device. With more than
one CUDA device (or ``LABSE_TORCHRUN_NPROC`` set, e.g. to test the path on a CPU), the pretrain and
finetune tasks run the trainer's own command line::

    torchrun --standalone --nproc_per_node=N -m labse_core.STAGE.train --config CONFIG.json --result RESULT.json

Every rank runs the trainer (``labse_core.*.train.run``, which already works under torchrun); rank 0
writes the whole result as JSON (``TrainResult.to_json``, atomically), which the task reads back with
the result's own types (``read_result``: every field checked), so the pipeline sees the same result as
from an in-process run. Nothing is unpickled. The files live in the run's own scratch folder
(``LABSE_HOME/runs/torchrun-STAGE-*``, with the job's log).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from storage.layout import Layout

NPROC_ENV = "LABSE_TORCHRUN_NPROC"
TRAINER_MODULES = {"pretrain": "labse_core.pretrain.train", "finetune": "labse_core.finetune.train"}


def device_count() -> int:
    """Processes per node for a training stage: ``LABSE_TORCHRUN_NPROC`` if set, else the CUDA device count."""
    if os.environ.get(NPROC_ENV):
        return int(os.environ[NPROC_ENV])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _trainer(stage: str):
    """The stage's run function and its result class."""
    if stage == "pretrain":
        from labse_core.pretrain.train import PretrainResult, run
        return run, PretrainResult
    if stage == "finetune":
        from labse_core.finetune.train import FinetuneResult, run
        return run, FinetuneResult
    raise ValueError(f"unknown training stage {stage!r}")


def train(stage: str, cfg: Any, layout: Layout) -> Any:
    """Run the stage's trainer: in this process on one device, under ``torchrun`` on several."""
    from labse_core.training.result import read_result

    nproc = device_count()
    explicit = bool(os.environ.get(NPROC_ENV))
    run, result_cls = _trainer(stage)
    if nproc <= 1 and not explicit:
        return run(cfg, layout)
    work = layout.runs / f"torchrun-{stage}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    config, result = work / "config.json", work / "result.json"
    config.write_text(cfg.model_dump_json(), encoding="utf-8")
    torchrun = Path(sys.executable).parent / "torchrun"
    argv = [str(torchrun), "--standalone", f"--nproc_per_node={max(nproc, 1)}", "-m", TRAINER_MODULES[stage],
            "--config", str(config), "--home", str(layout.home), "--result", str(result)]
    env = os.environ | {"LABSE_HOME": str(layout.home)}
    with (work / "torchrun.log").open("wb") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = (work / "torchrun.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"torchrun {stage} exited with {proc.returncode}; see {work / 'torchrun.log'}: "
                           + " | ".join(tail))
    return read_result(result, result_cls)
