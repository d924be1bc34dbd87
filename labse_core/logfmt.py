"""Numbers in log lines: rounded for a person to read, never ``0.9390000000000001``.

A log line (a terminal, a Prefect run log, a CI log) is read by people; the exact values go to MLflow,
the results JSON and the Prefect artifacts. Markdown (``**bold**``, backticks) belongs in the Prefect
artifacts only: a log shows it as literal asterisks.

    log.info("best %s at step %d", num(result.best_accuracy, ".3f"), step)   # best 0.939 at step 200
    log.info("step %d: %s", step, numbers(metrics))                          # step 40: eval/acc 0.939, n 500
"""

from __future__ import annotations

import math
import numbers as _numbers
from collections.abc import Mapping


def num(value: object, spec: str | None = None) -> str:
    """``value`` for a log line. None -> ``none``; booleans and integers as they are; any other real
    number with ``spec`` (a format spec such as ``.3f``), else to 4 significant digits without an
    exponent below 10,000 (0.9390000000000001 -> 0.939, 1.019283 -> 1.019, 4075.68 -> 4076,
    2e-05 -> 2e-05); anything else as ``str``."""
    if value is None:
        return "none"
    if isinstance(value, bool | _numbers.Integral):
        return str(value)
    if isinstance(value, _numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x)
        if spec is not None:
            return format(x, spec)
        return f"{x:.0f}" if abs(x) >= 10_000 else f"{x:.4g}"
    return str(value)


def numbers(values: Mapping[str, object], spec: str | None = None) -> str:
    """A mapping as ``key value, key value`` with every number through ``num``:
    ``{"eval/acc": 0.9390000000000001, "step": 40}`` -> ``eval/acc 0.939, step 40``."""
    return ", ".join(f"{k} {num(v, spec)}" for k, v in values.items())
