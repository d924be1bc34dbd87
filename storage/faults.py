"""Fault injection: let a test SIGKILL a real process at a named point of the real code.

A stage calls ``maybe_die("dataset.swap")`` where a crash would hurt most (a part half-written, staging
complete but not yet committed, a swap half done). Nothing happens unless the environment asks for it::

    LABSE_FAULT_AT=dataset.swap              # die the 1st time the point is reached
    LABSE_FAULT_AT=shard.part_written:3      # die the 3rd time (counted per process)
    LABSE_FAULT_AT=shard.part_written:random # die at hit Random(LABSE_FAULT_SEED).randint(1, 3)

The death is ``os.kill(os.getpid(), SIGKILL)``: no ``finally``, no ``atexit``, no flush of Python buffers,
exactly what an OOM killer or a preempted node does. One line naming the point is written to fd 2 first
(unbuffered ``os.write``) so a test can tell which point fired. Counts are per process: a Beam or torchrun
worker inherits the variable and counts its own hits.

The point names below are a stable contract between the code and the fault tests: ``KNOWN_POINTS`` is the
one list of them. A name in ``LABSE_FAULT_AT`` that is not in it is a one-line ``FaultSpecError`` raised at
the first ``maybe_die`` call, so a typo in a test cannot silently turn a kill test into a no-op. Add a point
here in the same change that places its ``maybe_die`` call.

It lives in ``storage`` (the bottom layer, standard library only) so that every layer can place a
point: storage's own publish and manifest writes as well as the Beam jobs, trainers and miner above it.

Cost when ``LABSE_FAULT_AT`` is unset: the environment is read once; each call is one global lookup and a
``None`` check.
"""

from __future__ import annotations

import os
import random
import signal
import sys

ENV_AT = "LABSE_FAULT_AT"
ENV_SEED = "LABSE_FAULT_SEED"
# ``point:random`` picks the hit number in 1..RANDOM_MAX_HIT: small, so a point reached only a few
# times in a tiny test run is still likely to fire.
RANDOM_MAX_HIT = 3

KNOWN_POINTS: tuple[str, ...] = (
    # storage/datasets.py: publishing a dataset version (staging -> live)
    "dataset.staged",  # every file is in staging, nothing committed yet
    "dataset.swap",  # after the N-th folder of a publish group is swapped in, before the commit point
    "dataset.manifest",  # inside the manifest write (temp file written, not yet renamed)
    # beam_jobs: a stage's Beam workers writing into staging (each worker process counts its own hits)
    "prepare.part_written",  # an attempt file of corpus_clean / corpus_rejects written (beam_jobs.io sink)
    "vocab.part_written",  # a language's sample file written
    "shard.part_written",  # a pair shard's Parquet / TLM / TFRecord files, or an MLM shard, written
    # labse_core/training: pretraining and fine-tuning (every rank counts its own hits)
    "train.step",  # an optimizer step done (and its checkpoint, when one was due)
    "checkpoint.writing",  # inside a step-N/ folder's write: model.pt written, the rest not yet
    # labse_core/mining + `labse mine`
    "mine.chunk_embedded",  # an embedding chunk's shard written
    "mine.scored",  # kNN and margin scores computed, nothing published yet
    "mine.published",  # the pairs appended to `mined`, the run not yet finished
)


class FaultSpecError(ValueError):
    """``LABSE_FAULT_AT`` (or ``LABSE_FAULT_SEED``) names no known point / is malformed."""


def parse(spec: str, seed: str | None = None) -> tuple[str, int]:
    """``"point[:N|:random]"`` -> ``(point, hit)``; pure, so tests can check a spec without dying."""
    point, _, count = spec.strip().partition(":")
    if point not in KNOWN_POINTS:
        raise FaultSpecError(f"{ENV_AT}={spec!r}: unknown fault point {point!r} (known: {', '.join(KNOWN_POINTS)})")
    if not count:
        return point, 1
    if count == "random":
        if seed is None or not seed.strip().lstrip("-").isdigit():
            raise FaultSpecError(f"{ENV_AT}={spec!r} needs an integer {ENV_SEED} (got {seed!r})")
        return point, random.Random(int(seed)).randint(1, RANDOM_MAX_HIT)
    if not count.isdigit() or int(count) < 1:
        raise FaultSpecError(f"{ENV_AT}={spec!r}: hit count must be a positive integer or 'random'")
    return point, int(count)


def _from_env() -> str | None:
    return os.environ.get(ENV_AT) or None


_SPEC: str | None = _from_env()
_TARGET: tuple[str, int] | None = None
_HITS = 0


def reload() -> None:
    """Re-read the environment (for in-process unit tests; subprocesses read it at import)."""
    global _SPEC, _TARGET, _HITS
    _SPEC, _TARGET, _HITS = _from_env(), None, 0


def maybe_die(point: str) -> None:
    """SIGKILL this process if ``LABSE_FAULT_AT`` names ``point`` and this is the chosen hit."""
    if _SPEC is None:
        return
    _check(point)


def _check(point: str) -> None:
    global _TARGET, _HITS
    if _TARGET is None:
        _TARGET = parse(_SPEC or "", os.environ.get(ENV_SEED))
    if point not in KNOWN_POINTS:
        # A call site with a name missing from the contract: fail the test run loudly.
        raise FaultSpecError(f"maybe_die({point!r}): not in storage.faults.KNOWN_POINTS")
    if point != _TARGET[0]:
        return
    _HITS += 1
    if _HITS == _TARGET[1]:
        os.write(2, f"fault injected: {point}:{_HITS} (pid {os.getpid()})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(137)  # unreachable: SIGKILL cannot be caught
