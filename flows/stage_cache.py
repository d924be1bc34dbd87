"""Stage caching for the Prefect flows: an unchanged rerun skips a finished stage, a changed input reruns
exactly the stages downstream of it.

A stage's cache key is the hash of: the stage's name, its config (JSON), the signatures of its inputs
(the manifests of the datasets it reads, the vocabulary, the model folder it starts from, the files it
ingests), the stage's code version (``stage_code_version``: the import closure of the modules the stage
runs, so a change in any helper it calls counts; Prefect's ``TASK_SOURCE`` hashes only the task's own
source) and the platform home. What each stage reads and runs is said once, in its record
(``flows.stages``). The key is given to Prefect (``cache_key_fn``), whose persisted result is returned on
a hit: the task run shows as ``Cached`` in the UI.

A key alone would also "hit" after the stage's outputs were replaced or deleted (another run with other
settings writes the same lake folders). So each stage records, in a small ledger
(``LABSE_HOME/runs/stage_cache/<stage>.json``), the key it last ran with and the signatures of what it
wrote; the cached result is used only when both still match (``refresh_cache`` otherwise). A stage's
outputs are its downstream stages' inputs: when a stage reruns, it publishes new manifests, and every
stage that reads them gets a new key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flows.lineage import code_version_of, manifest_hash, stable_hash, vocab_hash
from storage.io import write_json_atomic
from storage.layout import Layout


def folder_signature(folder: str | Path | None) -> str | None:
    """Cheap signature of a folder: every file's relative path, size and mtime (a model folder of hundreds of
    MB is not read). None when there is no folder."""
    if folder is None or not Path(folder).is_dir():
        return None
    root = Path(folder)
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            entries.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return stable_hash(entries)


def files_signature(paths: Iterable[str | Path], patterns: tuple[str, ...] = ("*",)) -> str:
    """Signature of files and folders (searched for ``patterns``): paths, sizes, mtimes."""
    entries = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            st = path.stat()
            entries.append((str(path), st.st_size, st.st_mtime_ns))
        elif path.is_dir():
            for pattern in patterns:
                for p in sorted(path.rglob(pattern)):
                    if p.is_file():
                        st = p.stat()
                        entries.append((str(p), st.st_size, st.st_mtime_ns))
        else:
            entries.append((str(path), None, None))
    return stable_hash(entries)


def dataset(name: str) -> str:
    """Ledger item: a published dataset (its manifest's hash)."""
    return f"dataset:{name}"


def folder(path: str | Path) -> str:
    """Ledger item: a folder (``folder_signature``)."""
    return f"folder:{path}"


VOCAB = "vocab"
"""Ledger item: the lake's vocabulary (``spm.model``)."""


def signature(layout: Layout, item: str) -> str | None:
    """The current signature of a ledger item (None: it does not exist)."""
    if item == VOCAB:
        return vocab_hash(layout)
    kind, _, name = item.partition(":")
    if kind == "dataset":
        return manifest_hash(layout, name)
    if kind == "folder":
        return folder_signature(name)
    raise ValueError(f"unknown ledger item {item!r}")


def signatures(layout: Layout, items: Iterable[str]) -> dict[str, str | None]:
    return {item: signature(layout, item) for item in items}


def ledger_path(layout: Layout, stage: str) -> Path:
    return layout.runs / "stage_cache" / f"{stage}.json"


STAGE_FILES = ("flows/tasks.py", "flows/stages.py", "flows/stage_cache.py")
"""Hashed into every stage's code version with the import closure of its own modules (``Stage.code`` in
``flows.stages``): the tasks, the stage records and this module. A change to a module no stage imports
(the CLI, benchmarks, the flows that only chain stages) invalidates nothing."""


def stage_code_version(code: tuple[str, ...]) -> str:
    """The code version of a stage whose work starts from the modules ``code`` (``flows.lineage.module_closure``)."""
    return code_version_of(code, STAGE_FILES)


def stage_key(layout: Layout, stage: str, config: Any, inputs: Mapping[str, Any], code: tuple[str, ...]) -> str:
    """The cache key of a stage run (see the module docstring)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return f"labse-{stage}-" + stable_hash({"stage": stage, "config": config, "inputs": dict(inputs),
                                            "code": stage_code_version(code), "home": str(layout.home)})


def still_valid(layout: Layout, stage: str, key: str) -> bool:
    """Whether the stage last ran with ``key`` and what it wrote is still there, unchanged."""
    try:
        record = json.loads(ledger_path(layout, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if record.get("key") != key:
        return False
    outputs = record.get("outputs", {})
    return all(v is not None for v in outputs.values()) and signatures(layout, outputs) == outputs


def record(layout: Layout, stage: str, key: str, outputs: Iterable[str]) -> None:
    """After the stage ran: its key and the signatures of what it wrote."""
    path = ledger_path(layout, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "outputs": signatures(layout, outputs)})


def enabled() -> bool:
    """``LABSE_STAGE_CACHE=0`` turns caching off for a process (every stage runs)."""
    return os.environ.get("LABSE_STAGE_CACHE", "1") not in ("0", "false", "no")


def run_stage(task, stage: str, config: Any, inputs: Mapping[str, Any], outputs_of: Callable[[Any], Iterable[str]],
              *args: Any, code: tuple[str, ...], use_cache: bool = True, **kwargs: Any) -> tuple[Any, bool]:
    """Call ``task(*args, **kwargs)`` with the stage's cache key; returns (result, whether it was cached).
    ``flows.stages.Stage.run`` calls it with the stage's record.

    ``inputs``: what the key depends on besides ``config`` (signatures: use ``signatures``/``dataset``).
    ``outputs_of``: the ledger items the result wrote (checked before a later run trusts the cache).
    ``code``: the modules the stage's work starts from (``stage_code_version``).
    """
    layout = Layout.from_env()
    key = stage_key(layout, stage, config, inputs, code)
    if TRAINING_TAG in getattr(task, "tags", ()):  # a training stage resumes its own killed attempt (resume_attempt)
        kwargs["attempt"] = key
    use = use_cache and enabled()
    valid = use and still_valid(layout, stage, key)
    t = task.with_options(cache_key_fn=lambda context, parameters: key, persist_result=True,
                          refresh_cache=not valid, cache_expiration=None)
    state = t(*args, return_state=True, **kwargs)
    result = state.result()  # raises the task's exception when it failed
    cached = state.name == "Cached"
    if not cached:
        record(layout, stage, key, outputs_of(result))
    return result, cached


# ---------------------------------------------------------------------------------------------------
# Retries and exclusive training


def _io_error(task, task_run, state) -> bool:
    """Retry a stage only for I/O failures (a full disk, a dropped connection to the MLflow or Prefect
    server); a bad setting or bad data fails the same way again, so it is not retried."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) and not isinstance(exc, FileNotFoundError)


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": _io_error}
"""Task options for stages that read or write the lake, MLflow or the registry. Each such stage publishes
atomically (staging folder + rename, manifest last), so running it again after a failure is safe."""

TRAINING_TAG = "labse-training"
"""Prefect tag of the training tasks; ``labse serve`` sets a concurrency limit of 1 on it."""


ATTEMPT_FILE = "flow-attempt.json"
"""In a training stage's run folder (its checkpoints'): the stage key of the flow's last attempt at it, and
whether that attempt finished."""


def resume_attempt(root: Path, key: str) -> bool:
    """Whether a flow's training stage (run folder ``root``) continues from its newest checkpoint: True when
    the folder's last flow attempt had this same stage key (config, inputs, code) and never finished
    (killed, or failed), so the checkpoints there are this very run's; False otherwise, and the run starts
    over (the trainer drops an earlier run's step folders at its first checkpoint). Records this attempt
    as unfinished; ``attempt_finished`` marks it done."""
    try:
        last = json.loads((root / ATTEMPT_FILE).read_text())
    except (OSError, ValueError):
        last = None
    resume = isinstance(last, dict) and last.get("key") == key and last.get("finished") is False
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / ATTEMPT_FILE, {"key": key, "finished": False})
    return resume


def attempt_finished(root: Path, key: str) -> None:
    write_json_atomic(root / ATTEMPT_FILE, {"key": key, "finished": True})


class training_lock:  # noqa: N801 (used as a context manager, like a function)
    """One training run at a time per platform home: an exclusive ``flock`` on ``LABSE_HOME/run/training.lock``,
    held for the whole run, so two runs (two deployments, a scheduled retrain and a UI run) never write the
    same checkpoint folders. Works with or without a Prefect server; released when the process dies."""

    def __init__(self, layout: Layout, what: str):
        self.path = layout.home / "run" / "training.lock"
        self.what = what

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from prefect import get_run_logger

            try:
                get_run_logger().info("%s: waiting for the training run holding %s", self.what, self.path)
            except Exception:  # noqa: BLE001 (outside a Prefect run: no logger, still wait)
                pass
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
