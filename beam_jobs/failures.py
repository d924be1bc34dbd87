"""A stage's Beam pipeline failing for a reason outside the data, as one plain error.

The runner reports a worker's exception as a ``RuntimeError`` whose text is the worker's traceback, and a
worker that vanished (killed, out of memory) as ``Channel closed prematurely``; the ``labse`` commands
print a one-line error for ``OSError``, so both become one: a full disk in a worker is an ``OSError``
with ``errno.ENOSPC`` naming the lake, a lost worker a ``WorkerLost`` (a ``ChildProcessError``, so
``flows.stage_cache`` retries it like other I/O failures). Nothing is published in either case: the
stage's staging folders are removed and the previous versions stay.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from storage.layout import Layout

_NO_SPACE = re.compile(r"No space left on device|\[Errno 28\]|errno 28", re.IGNORECASE)
_PATH = re.compile(r"No space left on device: '([^']+)'")
_SPILL = re.compile(r"no space left on device while spilling to [^\n]*?LABSE_SPILL_DIR picks another folder\)")
_LOST = ("Channel closed prematurely", "SDK worker exited", "Worker process exited", "Socket closed")
# A worker stopped by Ctrl-C (the terminal signals the whole process group): its shell exits 130, or
# the worker itself -2. That is the user interrupting the command, not a lost worker.
_INTERRUPTED = re.compile(r"return code (130|-2)\b")


class WorkerLost(ChildProcessError):
    """A Beam worker process died mid-stage (a signal, the out-of-memory killer)."""


def _disk_full(stage: str, layout: Layout, text: str) -> OSError:
    spill = _SPILL.search(text)  # beam_jobs.spill: names its folder and the space it needs
    if spill:
        return OSError(errno.ENOSPC, f"{stage}: {spill.group(0)}; nothing published, the previous version is "
                                     "intact, the spill removed")
    where = _PATH.search(text)
    path = where.group(1) if where else str(layout.lake)
    return OSError(errno.ENOSPC, f"{stage}: no space left on device writing {path}; nothing published, "
                                 "the previous version is intact (free space and run it again)")


def _kill_workers() -> None:
    """SIGKILL this process's Beam worker processes (the ``sh -c`` the runner starts and its Python)."""
    me = str(os.getpid())
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children[d.name] = ((d / "stat").read_text().rsplit(")", 1)[1].split()[1],
                                    (d / "cmdline").read_bytes())
            except OSError:
                continue
    mine = {pid for pid, (ppid, cmd) in children.items() if ppid == me and b"beam_jobs.worker" in cmd}
    mine |= {pid for pid, (ppid, _) in children.items() if ppid in mine}
    for pid in mine:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)


def _on_lost_workers(state: dict, lost: Callable[[threading.Thread, str], None]) -> None:
    """Install a thread exception hook that calls ``lost(worker thread, error text)``, while
    ``state["active"]``, for every Beam worker that dies (the runner's ``run_worker`` thread raises
    ``Worker subprocess exited with return code 137``), and silences the gRPC errors of the data-plane
    threads reading from it (the same loss, seen from another side). The hook stays: the other workers'
    threads end after the stage, quietly."""
    previous_hook = threading.excepthook

    def hook(args) -> None:
        text = str(args.exc_value)
        if args.thread is not None and args.thread.name == "run_worker" and "Worker subprocess exited" in text:
            if state["active"]:
                lost(args.thread, text)
            return
        if type(args.exc_value).__name__ == "RpcError" and "grpc" in type(args.exc_value).__module__:
            return
        previous_hook(args)

    threading.excepthook = hook


@contextlib.contextmanager
def _watch_workers(stage: str) -> Iterator[dict]:
    """Fail the stage when a Beam worker process dies. The direct runner notices only in a side thread
    while the driver can wait forever for the dead worker's answer; that thread's error is turned into a
    signal to the main thread, which raises ``WorkerLost`` there. The other workers are stopped so that no
    thread outlives the stage. In the main thread (a ``labse`` command) only: signal handlers cannot be
    installed elsewhere, and a stage on another thread (a Prefect task) is watched by
    ``_abort_on_lost_worker`` instead."""
    state: dict = {"active": True, "lost": None}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_kill"):
        with _abort_on_lost_worker(state):
            yield state
        return

    def lost(thread: threading.Thread, text: str) -> None:
        if state["lost"] is None:  # a lost worker is reported once, as the stage's error
            state["lost"] = text
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def on_lost(signum, frame) -> None:
        if state["active"]:
            state["active"] = False
            _kill_workers()
            if _INTERRUPTED.search(state["lost"]):
                raise KeyboardInterrupt
            raise WorkerLost(f"{stage}: a Beam worker process died ({state['lost']}: killed, or out of memory); "
                             "nothing published, the previous version is intact")

    previous_handler = signal.signal(signal.SIGUSR1, on_lost)
    _on_lost_workers(state, lost)
    try:
        yield state
    finally:
        state["active"] = False
        signal.signal(signal.SIGUSR1, previous_handler)


@contextlib.contextmanager
def _abort_on_lost_worker(state: dict) -> Iterator[None]:
    """The same watch for a stage run outside the main thread (a Prefect task's thread), where no signal
    handler can be installed: the dead worker's pending instructions are failed instead, as Beam's Docker
    worker handler does for a container that exits, so the runner raises on the stage's thread (caught
    by ``stage_failures`` as a lost worker) instead of waiting forever for an answer."""

    def lost(thread: threading.Thread, text: str) -> None:  # every dead worker's: several can die
        state["lost"] = state["lost"] or text
        for handler in _worker_handlers(thread):
            handler.control_conn.abort(RuntimeError(f"SDK worker exited: {text}"))

    _on_lost_workers(state, lost)
    try:
        yield
    finally:
        state["active"] = False


def _worker_handlers(thread: threading.Thread) -> list:
    """Beam's worker handlers whose worker thread this is (the handler holds it as ``worker_thread``)."""
    import gc

    found = []
    for ref in gc.get_referrers(thread):  # the handler itself, or its __dict__ (how Python keeps it varies)
        owners = [ref] if not isinstance(ref, dict) else [o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref]
        found += [o for o in owners if getattr(o, "worker_thread", None) is thread and getattr(o, "control_conn", None) is not None]
    return found


@contextlib.contextmanager
def stage_failures(stage: str, layout: Layout) -> Iterator[None]:
    """Turn a runner's report of a full disk or a lost worker into one plain error."""
    with _watch_workers(stage) as watch:
        try:
            yield
            return
        except OSError:
            raise  # raised on the driver: it names its file already
        except Exception as e:  # the runner's RuntimeError (or a pyarrow/sentencepiece error) wrapping a worker's
            watch["active"] = False  # this error is the one reported
            text = str(e)
            if _NO_SPACE.search(text):
                raise _disk_full(stage, layout, text) from e
            if any(s in text for s in _LOST):
                _kill_workers()
                if _INTERRUPTED.search(text) or _INTERRUPTED.search(watch["lost"] or ""):
                    raise KeyboardInterrupt from e
                raise WorkerLost(f"{stage}: a Beam worker process died (killed, or out of memory); nothing "
                                 "published, the previous version is intact") from e
            raise
