"""Live progress of a stage whose work runs in Beam worker processes, for a terminal.

Beam's counters reach the driver only when the pipeline ends. Workers call ``count`` instead (as
well): each process keeps its totals and, at most once a second, rewrites one small JSON file in
``<folder>/progress/``; ``watch`` (on the driver) sums those files twice a second into a progress
line on a terminal (pairs read per second, kept, rejected, the spill's size on disk), and nothing in
a log. It also records the spill folder's largest size, on a terminal or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROGRESS = "progress"
_totals: dict[str, Counter] = {}
_written: dict[str, float] = {}


def count(folder: str | None, **values: int) -> None:
    """In a worker: add ``values`` to this process's totals for ``folder`` (None: do nothing)."""
    if not folder:
        return
    totals = _totals.setdefault(folder, Counter())
    totals.update(values)
    now = time.monotonic()
    if now - _written.get(folder, 0.0) >= 1.0:
        _written[folder] = now
        target = Path(folder) / PROGRESS / f"{os.getpid()}.json"
        with contextlib.suppress(OSError):  # progress is best effort: never fail the stage for it
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(totals))
            os.replace(tmp, target)


def read_totals(folder: Path) -> Counter:
    """The sum of every worker's last totals under ``folder``."""
    out: Counter = Counter()
    for f in (folder / PROGRESS).glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.update(json.loads(f.read_text()))
    return out


@dataclass
class Seen:
    peak_bytes: int = 0
    """largest size of the spill folder's files seen (sampled every ~2 s, and at the end)"""


@contextlib.contextmanager
def watch(folder: Path, desc: str, interval: float = 0.5) -> Iterator[Seen]:
    """While the body runs: a progress line on a terminal (stderr), the spill's peak size always."""
    from tqdm import tqdm

    from beam_jobs.spill import _size, folder_bytes

    seen = Seen()
    stop = threading.Event()
    bar = tqdm(desc=desc, unit=" pairs", unit_scale=True, disable=not sys.stderr.isatty(),
               file=sys.stderr, leave=False)

    def poll() -> None:
        tick = 0
        while not stop.wait(interval):
            tick += 1
            if tick % 4 == 0 or not bar.disable:
                seen.peak_bytes = max(seen.peak_bytes, folder_bytes(folder))
            if not bar.disable:
                t = read_totals(folder)
                bar.set_postfix_str(f"kept {t['kept']:,}, rejected {t['rejected']:,}, "
                                    f"spill {_size(seen.peak_bytes)}", refresh=False)
                bar.update(max(0, t["read"] - bar.n))

    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        seen.peak_bytes = max(seen.peak_bytes, folder_bytes(folder))
        bar.close()
