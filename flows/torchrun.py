"""Training stages on several devices: the Prefect task launches ``torchrun`` as a subprocess.

A task runs in the serving process; a data-parallel job needs one process per device. With more than
one CUDA device (or ``LABSE_TORCHRUN_NPROC`` set, e.g. to test the path on a CPU), the pretrain and
finetune tasks run::

    torchrun --standalone --nproc_per_node=N -m flows.torchrun STAGE CONFIG.json RESULT.pkl

Every rank runs the trainer (``labse_core.*.train.run``, which already works under torchrun); rank 0
writes the trainer's result object (a dataclass) to ``RESULT.pkl``, which the task reads back, so the
pipeline sees the same result as from an in-process run. The files live in the run's own scratch
folder (``LABSE_HOME/runs``), written and read by this code only.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from storage.layout import Layout

NPROC_ENV = "LABSE_TORCHRUN_NPROC"


def device_count() -> int:
    """Processes per node for a training stage: ``LABSE_TORCHRUN_NPROC`` if set, else the CUDA device count."""
    if os.environ.get(NPROC_ENV):
        return int(os.environ[NPROC_ENV])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _trainer(stage: str):
    if stage == "pretrain":
        from labse_core.pretrain.train import PretrainConfig, run
        return PretrainConfig, run
    if stage == "finetune":
        from labse_core.finetune.train import FinetuneConfig, run
        return FinetuneConfig, run
    raise ValueError(f"unknown training stage {stage!r}")


def train(stage: str, cfg: Any, layout: Layout) -> Any:
    """Run the stage's trainer: in this process on one device, under ``torchrun`` on several."""
    nproc = device_count()
    explicit = bool(os.environ.get(NPROC_ENV))
    _, run = _trainer(stage)
    if nproc <= 1 and not explicit:
        return run(cfg, layout)
    work = layout.runs / f"torchrun-{stage}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    config, result = work / "config.json", work / "result.pkl"
    config.write_text(cfg.model_dump_json(), encoding="utf-8")
    torchrun = Path(sys.executable).parent / "torchrun"
    argv = [str(torchrun), "--standalone", f"--nproc_per_node={max(nproc, 1)}", "-m", "flows.torchrun",
            stage, str(config), str(result)]
    env = os.environ | {"LABSE_HOME": str(layout.home)}
    with (work / "torchrun.log").open("wb") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = (work / "torchrun.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"torchrun {stage} exited with {proc.returncode}; see {work / 'torchrun.log'}: "
                           + " | ".join(tail))
    with result.open("rb") as f:
        return pickle.load(f)  # noqa: S301 (written by rank 0 of the job above, in this run's folder)


def main(argv: list[str]) -> int:
    stage, config, result = argv
    cls, run = _trainer(stage)
    cfg = cls.model_validate_json(Path(config).read_text(encoding="utf-8"))
    out = run(cfg, Layout.from_env())
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = Path(result).with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(out, f)
        os.replace(tmp, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
