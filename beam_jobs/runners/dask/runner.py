"""``DaskRunner``: runs a Beam pipeline on a ``dask.distributed`` cluster (see the package docstring)."""

from __future__ import annotations

import logging
import os

from beam_jobs.runners.dask.beam_internals import BeamDaskRunner, DaskOptions, dask_overrides
from beam_jobs.runners.dask.result import DaskRunResult
from beam_jobs.runners.dask.translate import BagBuilder
from beam_jobs.runners.dask.version import check_beam_version


def _size(partition) -> list[int]:
    return [sum(1 for _ in partition)]


def _bag_kwargs(dask_options: dict) -> dict:
    """Take ``--dask_npartitions`` / ``--dask_partition_size`` out of the client's options."""
    out = {}
    for name in ("npartitions", "partition_size"):
        value = dask_options.pop(name, None)
        if value:
            out[name] = value
    return out


class DaskRunner(BeamDaskRunner):
    """Runs a Beam pipeline on a ``dask.distributed`` cluster: the one at ``--dask_client_address``
    (``BeamConfig.dask_address``), or a ``LocalCluster`` of ``local_workers`` worker processes (one
    thread each) started for the run and closed after it. Beam's overrides and its translations of
    ``Create``/``Flatten`` are kept; ParDo, GroupByKey, side inputs and the graph's outputs are ours."""

    def __init__(self, local_workers: int = 2, memory_limit: str | None = "2GiB"):
        check_beam_version()
        super().__init__()
        self.local_workers, self.memory_limit = local_workers, memory_limit

    def run_pipeline(self, pipeline, options):
        import dask.bag as db
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = _bag_kwargs(dask_options)
        pipeline.replace_all(dask_overrides())
        builder = BagBuilder(bag_kwargs)
        pipeline.visit(builder)
        sinks = [bag.map_partitions(_size) for bag in builder.sinks()]
        counters = builder.counter_bags
        cluster = None
        if not dask_options.get("address") and not dask_options.get("scheduler_file"):
            # Arrow tables arrive in a worker unpickled, their buffers not 64-byte aligned; Acero
            # (pyarrow group_by) warns once per batch about it unless told to realign them.
            os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "reallocate")
            # The scheduler runs in this process: its start/stop notices would fill the terminal.
            if logging.getLogger("distributed").getEffectiveLevel() < logging.WARNING:
                logging.getLogger("distributed").setLevel(logging.WARNING)
            cluster = ddist.LocalCluster(n_workers=self.local_workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", silence_logs=logging.ERROR,
                                         memory_limit=self.memory_limit or "auto",
                                         preload=["beam_jobs.worker"])
            dask_options["address"] = cluster
        try:
            client = ddist.Client(**dask_options)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        # One graph for everything (gap 1: Beam's runner computes the last transform's bag only):
        # a task that several sinks or counters depend on runs once.
        collections_ = [*sinks, *([db.concat(counters)] if counters else [])]
        futures = client.compute(collections_, optimize_graph=True)
        return DaskRunResult(client, futures, len(sinks), cluster)
