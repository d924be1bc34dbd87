"""Shared helpers for fault tests: run a real ``labse`` command in a subprocess (optionally with a fault
point armed, see ``storage.faults``) and fingerprint a folder so "intact" means byte-identical."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage import faults

SIGKILLED = -signal.SIGKILL  # subprocess's returncode for a process killed by SIGKILL


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.rc == SIGKILLED

    @property
    def has_traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def labse_env(home: Path, fault: str | None = None, seed: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``labse`` subprocess on ``home``: one thread (2 shared cores), no inherited
    fault spec unless ``fault`` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSE_FAULT_")}
    env.update(LABSE_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200")
    env.pop("PREFECT_HOME", None)  # bootstrap derives it from LABSE_HOME
    if fault is not None:
        env[faults.ENV_AT] = fault
    if seed is not None:
        env[faults.ENV_SEED] = str(seed)
    env.update(extra)
    return env


def labse_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def run_labse(home: Path, *args: str, fault: str | None = None, seed: int | None = None, timeout: float = 300,
              env: dict[str, str] | None = None) -> Result:
    """Run ``labse ARGS`` to completion (or death) in its own session; return rc/stdout/stderr.

    ``start_new_session`` gives the command its own process group so ``reap_group`` can check that no
    worker outlived a killed parent."""
    e = labse_env(home, fault, seed) if env is None else env
    p = subprocess.run(labse_cmd(*args), capture_output=True, text=True, env=e, timeout=timeout,
                       start_new_session=True)
    return Result(p.returncode, p.stdout, p.stderr)


def tree_digest(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (symlinks as ``-> target``), skipping paths
    containing any ``ignore`` substring. Equal digests = the folder is byte-for-byte unchanged."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(s in rel for s in ignore):
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def pids_in_group(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (Linux /proc), excluding zombies."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append(int(d.name))
    return found


@pytest.fixture
def fault_home(tmp_path) -> Path:
    """A fresh, empty platform home for one fault test."""
    home = tmp_path / "home"
    home.mkdir()
    return home
