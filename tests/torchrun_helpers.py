"""Running a training module under torchrun from a test: two CPU gloo ranks, one thread each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous or a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_ranks(module: str, cfg: BaseModel, tmp_path: Path) -> dict:
    """``torchrun --nproc_per_node=2 -m <module> --config cfg.json --home tmp_path/ddp --result ...``;
    the run's typed result (labse_core.training.result) as a dict. Fails the test with the ranks' stderr."""
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", module, "--config", str(tmp_path / "cfg.json"), "--home", str(tmp_path / "ddp"),
           "--result", str(tmp_path / "ddp.json")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "ddp.json").read_text())
