"""Publishing folders into the lake: all of a stage's outputs at once, or (after a crash) none.

A stage that publishes several datasets (prepare: clean + rejects; shard: pairs, TLM, MLM, TFRecord)
publishes them as one group (``commit``): a journal listing the swaps is written first, each swap is one
atomic ``renameat2(RENAME_EXCHANGE)``, and removing the journal is the commit point. A process killed
before that point (SIGKILL, power loss) leaves a journal; ``recover`` swaps the old versions back, so the
lake holds the complete previous versions of all the group's datasets, never a mix of old and new. It
runs when any ``labse`` command starts (``flows.env.bootstrap``) and when a data stage takes the lake
lock (``storage.locks``). Each staging folder is held by its writer with an ``flock``
(``_staging/.<name>.lock``), which dies with the process: a staging folder or journal whose lock is free
belongs to a dead run and is cleaned up; one whose lock is held belongs to a live writer and is left alone.

Kept free of heavy imports: every ``labse`` command runs ``recover`` at start-up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

from storage.faults import maybe_die
from storage.layout import Layout

# ---------------------------------------------------------------------------------------------------
# Staging folders, owned by a live process


def _lock_path(staging: Path) -> Path:
    return staging.parent / f".{staging.name}.lock"


def _try_lock(path: Path, *, block: bool = False) -> int | None:
    """An open fd holding an exclusive flock on ``path`` (created), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class StagingDir:
    """A folder under ``_staging/`` that this process is building; its lock file tells ``sweep_staging``
    and ``recover`` in other processes that it is alive (the kernel drops the lock when the process dies)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def create(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._fd is None:
            self._fd = _try_lock(_lock_path(self.path), block=True)  # the name is this run's: nobody else waits
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        return self.path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(_aside(self.path), ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                _lock_path(self.path).unlink()
            os.close(self._fd)
            self._fd = None


def new_staging(layout: Layout, name: str) -> StagingDir:
    """A fresh, locked staging folder ``_staging/<name>-<random>`` (for outputs that are folders, not
    datasets: the vocabulary, the TFRecord copies)."""
    d = StagingDir(layout.staging / f"{name}-{uuid.uuid4().hex[:12]}")
    d.create()
    return d


def _aside(staging: Path) -> Path:
    return staging.with_name(staging.name + ".old")


# ---------------------------------------------------------------------------------------------------
# Publishing a group of folders, all or none

JOURNAL_PREFIX = ".publish-"


def commit(layout: Layout, moves: list[tuple[Path, Path]]) -> None:
    """Swap each finished staging folder into its final place, all of them or (after a crash, once
    ``recover`` ran) none. The caller holds each staging folder (``StagingDir``/``DatasetWriter``);
    manifests are already written inside them."""
    from storage.io import _fsync_dir, _fsync_tree, write_json_atomic

    maybe_die("dataset.staged")
    for staging, _ in moves:
        _fsync_tree(staging)  # no renamed folder may hold unwritten data after a power loss
    token = uuid.uuid4().hex[:12]
    journal = layout.staging / f"{JOURNAL_PREFIX}{token}.json"
    entries = [{"staging": str(st), "final": str(fi), "ino": st.stat().st_ino} for st, fi in moves]
    write_json_atomic(journal, entries)  # from here a crash is rolled back by recover()
    try:
        for e in entries:
            _swap(Path(e["staging"]), Path(e["final"]))
            maybe_die("dataset.swap")
    except BaseException:
        for e in entries:  # an error (not a kill) mid-way: put every previous version back now
            _roll_back(e)
        journal.unlink()
        raise
    journal.unlink()  # the commit point
    _fsync_dir(journal.parent)
    for e in entries:
        shutil.rmtree(e["staging"], ignore_errors=True)  # the previous version, now
        shutil.rmtree(_aside(Path(e["staging"])), ignore_errors=True)


def _swap(staging: Path, final: Path) -> None:
    from storage.io import _fsync_dir, exchange

    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.replace(staging, final)
    elif not exchange(staging, final):
        # No atomic exchange on this filesystem: two renames; recover() puts the old one back if a crash
        # falls between them.
        os.replace(final, _aside(staging))
        os.replace(staging, final)
    _fsync_dir(final.parent)


def swap_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` (a folder, maybe absent) with ``staging``: readers see the old folder or the new
    one, never a mix. Prefer ``commit`` for a stage's outputs (journalled, several folders at once)."""
    _swap(staging, final)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(_aside(staging), ignore_errors=True)


def _roll_back(e: dict) -> None:
    from storage.io import exchange

    staging, final, aside = Path(e["staging"]), Path(e["final"]), _aside(Path(e["staging"]))
    if final.exists() and final.stat().st_ino == e["ino"]:  # the new version went in: take it out
        if staging.exists():  # an exchange left the previous version at the staging path
            if not exchange(staging, final):
                raise OSError(f"{final}: cannot swap the previous version back from {staging}")
        else:
            os.replace(final, staging)
    if not final.exists() and aside.exists():  # killed between the two fallback renames
        os.replace(aside, final)


def recover(layout: Layout) -> list[str]:
    """Roll back publishes whose process died before their commit point, then remove staging folders of
    dead runs. Folders and journals of live writers (their locks held) are left alone. Returns the
    final paths restored (for a message); safe to run at any time, by any number of processes."""
    if not layout.staging.is_dir():
        return []
    restored = []
    for journal in sorted(layout.staging.glob(f"{JOURNAL_PREFIX}*.json")):
        try:
            entries = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue  # being written, or already gone: its writer is alive or another process recovered it
        fds = [_try_lock(_lock_path(Path(e["staging"]))) for e in entries]
        try:
            if all(fd is not None for fd in fds) and journal.exists():
                from storage.io import _fsync_dir

                for e in entries:
                    _roll_back(e)
                    restored.append(e["final"])
                journal.unlink()
                _fsync_dir(journal.parent)
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
    sweep_staging(layout)
    return restored


def sweep_staging(layout: Layout) -> None:
    """Remove staging folders (and their ``.old`` companions) whose writer is gone."""
    sweep_dead(layout.staging)


def sweep_dead(folder: Path, pattern: str = "*") -> None:
    """Remove the ``StagingDir`` folders in ``folder`` named like ``pattern`` (and their ``.old``
    companions) whose writer is gone (their lock is free)."""
    for path in sorted(folder.glob(pattern)):
        if path.name.startswith(".") or not path.is_dir():
            continue
        base = path.with_name(path.name.removesuffix(".old"))
        lock = _lock_path(base)
        fd = _try_lock(lock)
        if fd is None:
            continue  # a live writer
        try:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(_aside(base), ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
