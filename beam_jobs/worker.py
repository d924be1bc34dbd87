"""Entry point of the direct runner's worker processes (``python -m beam_jobs.worker``, started by
``BeamConfig.pipeline``): Beam's own ``sdk_worker_main``, quietly.

- The import-time warning of optional Google Cloud clients and the harness's start-up notices (five
  lines per command on a machine without them) are dropped; every other message is kept.
- Ctrl-C, which the terminal sends to the whole process group, ends the worker at once without a
  traceback: the driver reports the interruption, once.
"""

from __future__ import annotations

import logging
import os
import signal

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


def main() -> None:
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
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
