"""Entry point of the direct runner's worker processes (``python -m beam_jobs.worker``, started by
``BeamConfig.pipeline``): Beam's own ``sdk_worker_main``, quietly.

- The import-time warning of optional Google Cloud clients and the harness's start-up notices (five
  lines per command on a machine without them) are dropped, and so are a failed bundle's tracebacks
  logged or printed by Beam in the worker and the driver (the driver raises the same error); every other
  message is kept.
- Ctrl-C, which the terminal sends to the whole process group, ends the worker at once without a
  traceback: the driver reports the interruption, once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

# Start-up notices that say nothing about the user's pipeline.
NOISE = (
    "apitools not found",
    "No semi_persistent_directory found",
    "Discarding unparseable args",
    "Logging handler created",
    "direct_running_mode should be",  # BeamConfig.pipeline runs N subprocess workers in mode in_memory
)


class DropBeamNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.name.startswith("apache_beam") and (record.exc_info or "Traceback (most recent call last)" in msg):
            # A failed bundle, logged by the worker and relayed by the driver: the driver raises the same
            # error as the stage's (a `labse` command turns a full disk or a lost worker into one line).
            return False
        return not any(n in msg for n in NOISE)


def quiet_beam_logging() -> None:
    """Install the filter on the root logger's handlers (a plain stderr one if there is none yet:
    Beam's import-time ``logging.warning`` would otherwise create one without the filter)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, DropBeamNoise) for f in handler.filters):
            handler.addFilter(DropBeamNoise())


class _DropBundleTracebacks:
    """The worker's stderr, less the traceback Beam's harness prints (in one ``print``) for a failed bundle:
    the same error reaches the driver, which raises it; a `labse` command reports it once."""

    def __init__(self, stream):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        whole = text.startswith("Traceback (most recent call last)") and text.count("\n") > 2
        if whole or (self._dropped and text == "\n"):  # print() writes its end="\n" separately
            self._dropped = whole
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main() -> None:
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    sys.stderr = _DropBundleTracebacks(sys.stderr)
    quiet_beam_logging()
    from apache_beam.runners.worker import sdk_worker_main

    quiet_beam_logging()
    sdk_worker_main.main(None)


if __name__ == "__main__":
    main()


def dask_setup(worker) -> None:
    """Dask worker preload hook (``LocalCluster(preload=["beam_jobs.worker"])``; on a remote cluster
    ``dask worker --preload beam_jobs.worker``): the same quiet logging in Dask's worker processes."""
    quiet_beam_logging()
