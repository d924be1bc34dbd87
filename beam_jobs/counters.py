"""Reading a finished pipeline's Beam counters: one helper for every stage.

Each stage counts what it saw (``beam.metrics.Metrics.counter(namespace, name).inc(n)``) inside its
DoFns; the driver reads the totals here and checks them against the files before publishing.
"""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter


def counters(result, namespace: str) -> dict[str, int]:
    """``{counter name: total}`` for one namespace of a finished pipeline result.

    A counter incremented in several steps (e.g. ``rejected.duplicate`` in two DoFns) has one entry
    per step in Beam's query result: they are summed here, never overwritten. Committed values are
    used where the runner reports them (they exclude retried bundles), attempted ones otherwise.
    """
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    out: dict[str, int] = {}
    for c in query["counters"]:
        name = c.key.metric.name
        out[name] = out.get(name, 0) + int(c.committed or c.attempted or 0)
    return out
