"""The result of a run on the Dask runner: its state and its counters (gap 4: Beam's ``DaskRunnerResult``
raises ``NotImplementedError`` from ``metrics()``, and every stage checks its counters before publishing)."""

from __future__ import annotations

import collections

from apache_beam.runners.runner import PipelineResult, PipelineState

from beam_jobs.runners.dask.beam_internals import MetricKey, MetricName, MetricResult, MetricResults


class CounterResults(MetricResults):
    """Counter totals of a finished run, answering ``result.metrics().query(...)`` like other runners
    (committed = attempted: only the results the scheduler kept are counted, so a task re-run after a
    lost worker is not counted twice)."""

    def __init__(self, totals: dict[tuple[str, str, str], int]):
        self.results = [MetricResult(MetricKey(step, MetricName(ns, name)), value, value)
                        for (step, ns, name), value in sorted(totals.items())]

    def query(self, filter=None):
        counters = [r for r in self.results if filter is None or self.matches(filter, r.key)]
        return {self.COUNTERS: counters, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: []}


class DaskRunResult(PipelineResult):
    """``futures``: the sinks' sizes, then (if any ParDo ran) one list of per-bundle counters."""

    def __init__(self, client, futures, n_sinks: int, cluster=None):
        super().__init__(PipelineState.RUNNING)
        self.client, self.futures, self.n_sinks, self.cluster = client, futures, n_sinks, cluster
        self._metrics: CounterResults | None = None

    def wait_until_finish(self, duration=None):
        if self._metrics is not None or self._state != PipelineState.RUNNING:
            return self._state
        try:
            results = self.client.gather(self.futures)
            totals: dict = collections.Counter()
            for per_partition in results[self.n_sinks:]:
                for counters in per_partition:
                    totals.update(counters)
            self._metrics = CounterResults(dict(totals))
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self.close()
        return self._state

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def cancel(self):
        self.client.cancel(self.futures)
        self.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self):
        if self._metrics is None:
            raise RuntimeError("the pipeline has not finished")
        return self._metrics
