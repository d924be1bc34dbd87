"""Apache Beam jobs: thin ``PTransform``/``DoFn`` shells over the pure functions in ``labse_core``.

Every job runs on the direct runner by default (several worker processes) and, unchanged, on
Flink, Spark or Dataflow when given the standard Beam pipeline options (see ``infra/beam.md``).
"""
