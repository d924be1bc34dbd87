"""One writer of the lake's stage outputs at a time per platform home.

The data stages (ingest, prepare, vocab, shard) each read what the one before published and replace
what they publish; two of them running at once on one home (two ``labse pipeline`` runs fired by two
schedules, a ``labse prepare`` typed while a pipeline runs) would read a version the other is replacing.
``lake_lock`` is an exclusive ``flock`` on ``LABSE_HOME/run/lake.lock``, held for a whole stage (and by
``labse pipeline`` for the whole run): the second process waits, saying once on stderr which process it
waits for. The kernel drops the lock when its holder dies, SIGKILL included, so a killed run never
leaves the home locked.

The lock is re-entrant within a process (the pipeline holds it while its stage functions take it
again). Appends of results (``storage.append``) do not take it: they serialise per dataset.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from storage.layout import Layout

_held: dict[Path, int] = {}  # lock path -> depth, in this process
_guard = threading.Lock()


def lake_lock_path(layout: Layout) -> Path:
    return layout.home / "run" / "lake.lock"


def holder(layout: Layout) -> str:
    """What the lock file says about its last holder (``pid N: what, since T``), or ``""``."""
    try:
        return lake_lock_path(layout).read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def lake_lock(layout: Layout, what: str) -> Iterator[None]:
    """Hold the home's lake lock for ``what`` (e.g. ``"labse prepare"``), waiting for another process
    that holds it; stale staging folders and interrupted publishes of dead runs are cleaned up first."""
    path = lake_lock_path(layout)
    with _guard:
        if path in _held:
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write(f"{what}: waiting for the run that holds {path} ({holder(layout) or 'unknown'})\n")
            sys.stderr.flush()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}, since {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC\n".encode(), 0)
        with _guard:
            _held[path] = 1
        try:
            from storage.publish import recover

            recover(layout)
            yield
        finally:
            with _guard:
                del _held[path]
    finally:
        os.close(fd)  # releases the flock
