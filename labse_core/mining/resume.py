"""A mining run that can be killed at any point and rerun: the work folder it resumes from.

    LABSE_HOME/runs/mine-work/<key>/
        run.json    the MLflow run id of the first attempt: a rerun reopens that run, and its id names the
                    run's files in ``mined`` (``part-<run_id>-*``), so pairs an attempt already appended
                    are recognised and never appended twice
        src/, tgt/  the embedding shards (``labse_core.mining.shards``: one per chunk, written
                    atomically, named by a digest of the chunk's sentences): a rerun embeds only the
                    chunks that are missing

``key`` is a digest of everything the output depends on: both inputs' contents (the bytes of a file,
the file list of a published lake dataset, whose files are written once and never changed), the model
folder's files (name, size, modification time: a model folder is written whole, never edited in place),
the languages, the batch size (padding changes the floats) and every mining setting, the threshold
resolved. Other inputs, another model or other settings get another folder; the same command after a
crash gets the same one.

A run that finishes, or fails with an error (bad input: a rerun would fail the same way), removes its
folder; only a process that died (SIGKILL, out of memory, power) leaves one behind, and only for its
rerun. The pairs themselves are published by ``storage.append.append_tables`` (atomic: all of a run's
pairs or none).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.io import write_json_atomic
from storage.layout import Layout

WORK = "mine-work"
RUN_FILE = "run.json"


def _file_digest(h: Any, path: Path) -> None:
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)


def _tree_stats(h: Any, root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts):
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def input_digest(inp: Any) -> str:
    """Digest of one side's sentences (and precomputed embeddings): ``miner.MiningInput``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{inp.kind}\0{inp.column}\0{sorted(inp.partition.items())}\n".encode())
    if inp.documents is not None:  # a folder of documents: its sentences, as read and cut
        for text in inp.documents.sentences:
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()
    for path in (inp.path, inp.text_path):
        if path is not None:
            _file_digest(h, Path(path))
    if inp.dataset_root is not None:
        _tree_stats(h, Path(inp.dataset_root))
    return h.hexdigest()


def work_key(src: Any, tgt: Any, model_folder: Path | None, settings: dict[str, Any]) -> str:
    """The work folder's name for mining ``src`` x ``tgt`` with this model and these settings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{input_digest(src)}\0{input_digest(tgt)}\n".encode())
    if model_folder is not None:
        _tree_stats(h, Path(model_folder))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class MiningWork:
    """The work folder of one mining run (module docstring)."""

    path: Path

    @classmethod
    def open(cls, layout: Layout, key: str) -> MiningWork:
        path = layout.runs / WORK / key
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def run_id(self) -> str | None:
        """The MLflow run of an interrupted earlier attempt, if there was one."""
        f = self.path / RUN_FILE
        try:
            return json.loads(f.read_text())["mlflow_run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_run(self, run_id: str) -> None:
        write_json_atomic(self.path / RUN_FILE, {"mlflow_run_id": run_id})

    def finish(self, keep_embeddings_in: Path | None = None) -> None:
        """The run is over: move the embeddings to ``keep_embeddings_in`` if given, remove the folder."""
        if keep_embeddings_in is not None:
            keep_embeddings_in.mkdir(parents=True, exist_ok=True)
            for side in ("src", "tgt"):
                if (self.path / side).is_dir():
                    target = keep_embeddings_in / side
                    shutil.rmtree(target, ignore_errors=True)
                    os.replace(self.path / side, target)
        # run.json last: killed before it goes, a rerun still reopens this run and finds its pairs
        # published (it only re-embeds); without it, a rerun would be a new run appending them again.
        for side in ("src", "tgt"):
            shutil.rmtree(self.path / side, ignore_errors=True)
        (self.path / RUN_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)
