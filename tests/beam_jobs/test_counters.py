"""One helper reads every stage's Beam counters; a counter incremented in two steps is summed."""

import apache_beam as beam

from beam_jobs import gettext_ingest, prepare, shard
from beam_jobs.counters import counters
from beam_jobs.options import BeamConfig


def _inc(x, name):
    beam.metrics.Metrics.counter("t", name).inc(x)
    return x


def test_counters_sum_over_steps():
    with BeamConfig(running_mode="in_memory", num_workers=1).pipeline() as p:
        xs = p | beam.Create([1, 2, 3])
        _ = xs | "A" >> beam.Map(_inc, name="seen") | "B" >> beam.Map(_inc, name="seen")
        _ = xs | "C" >> beam.Map(_inc, name="other")
    assert counters(p.result, "t") == {"seen": 12, "other": 6}
    assert counters(p.result, "nothing") == {}


def test_every_stage_uses_the_shared_helper():
    for module in (gettext_ingest, prepare, shard):
        assert module.counters is counters and not hasattr(module, "_counters")


def test_multi_process_direct_runner_runs_its_workers_quietly(capfd):
    """The workers start through beam_jobs.worker: results as Beam's own, none of its start-up noise."""
    with BeamConfig(num_workers=2).pipeline() as p:
        _ = p | beam.Create(list(range(50)), reshuffle=True) | beam.Map(_inc, name="n")
    assert counters(p.result, "t") == {"n": sum(range(50))}
    err = capfd.readouterr().err
    assert "apitools" not in err and "semi_persistent_directory" not in err and "Traceback" not in err
