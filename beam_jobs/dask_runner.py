"""Beam's Dask runner (``apache_beam.runners.dask``) with the gaps closed that our pipelines hit.

``labse prepare|vocab|shard|ingest --runner dask [--dask-address tcp://scheduler:8786]`` runs the same
pipelines on a ``dask.distributed`` cluster: an existing one (``--dask-address``) or a
``LocalCluster`` of ``--workers`` processes started for the run and stopped after it.

Beam 2.77's ``DaskRunner`` translates a pipeline into ``dask.bag`` operations. As shipped, it cannot run
a pipeline with more than one sink correctly (each point below was checked on this machine, and
``tests/infra/test_dask_runner.py`` runs a pipeline that hits every one of them):

1. it computes only the bag of the *last* transform applied: a sink on another branch (the rejects
   next to the clean corpus) never runs;
2. a ``ParDo`` with tagged outputs yields one bag holding every output, and each consumer reads all
   of it: the rejects would reach the clean sink;
3. outputs of ``finish_bundle`` are collected before ``finish_bundle`` runs and are lost (our buffered
   Parquet sinks emit their last files there);
4. it has no metrics (``result.metrics()`` raises ``NotImplementedError``), and every stage checks its
   counters before publishing;
5. a side input is computed inside each consuming task with ``list(bag)``: its whole upstream runs
   again there. This is why Beam's ``WriteToText`` fails at finalize on it (its temp-dir init runs
   several times), and it also re-runs the input of every ``CombineGlobally`` (``ToList``), whose
   default value is a side input.

This runner keeps Beam's overrides and its translations of ``Create``, ``GroupByKey`` and
``Flatten`` and replaces the ``ParDo`` translation and the graph assembly:

- ``GroupByKey`` uses dask's task shuffle (the default chosen at graph-building time is an on-disk
  store per process, which splits groups across worker processes: sentences went missing);
- every PCollection gets its own bag (a tagged output is selected from its ParDo's bundle results);
- a ParDo runs one Beam bundle per dask partition with ``start_bundle`` / ``process`` /
  ``finish_bundle`` and a Beam metrics container, and returns its outputs and counters together;
- side inputs are whole-bag dependencies of the consuming tasks, computed once in the same graph;
- all sinks (PCollections nobody consumes) and all counters are computed in ONE ``client.compute``,
  so a branch that feeds several consumers runs once; counters come from the results the scheduler
  kept (one per task), so a task re-run after a lost worker is not counted twice.

A task can still run twice (a worker dies after finishing it); our sinks are written for that:
content-derived or key-derived file names, atomic writes, and publication by the driver only
(``beam_jobs.io``, ``storage.datasets.DatasetWriter.publish``).

Not supported (refused with a clear error, never run wrongly): ``beam.io.Read`` sources, stateful or
splittable DoFns, and non-global windowing. None of our stages uses them.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricKey, MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.metrics.metricbase import MetricName
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.overrides import _Create, _GroupByKeyOnly, _Read, dask_overrides
from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, NoOp, get_windowed_value
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

log = logging.getLogger(__name__)

# -- worker side ------------------------------------------------------------------------------------
# DoFns set up on a worker thread, reused for later bundles of the same transform (Beam's contract:
# setup once, then any number of bundles one at a time). Keyed by a digest of the pickled transform.
_CACHE = threading.local()
_CACHE_SIZE = 64


class _Receiver(Receiver):
    """Collects one output's values (unwrapped from their global-window ``WindowedValue``)."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def receive(self, windowed_value) -> None:
        self.out.append(windowed_value.value)


class _Receivers(dict):
    """tag -> receiver (``None`` is the main output); ``take()`` returns and clears what they got."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[str | None, list] = {}

    def __missing__(self, tag):
        receiver = self[tag] = _Receiver(self.outputs.setdefault(tag, []))
        return receiver

    def take(self) -> dict[str | None, list]:
        out = {tag: list(values) for tag, values in self.outputs.items() if values}
        for values in self.outputs.values():
            values.clear()
        return out


class _Bundle:
    """What one partition of a ParDo produced: outputs per tag and counter totals."""

    __slots__ = ("outputs", "counters")

    def __init__(self, outputs: dict, counters: dict):
        self.outputs, self.counters = outputs, counters


def _invoker(payload: bytes, side_inputs: list | None):
    import cloudpickle
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    from apache_beam.transforms.core import DoFn
    from apache_beam.transforms.sideinputs import SideInputMap

    fn, args, kwargs, label, views = cloudpickle.loads(payload)
    receivers = _Receivers()
    maps = None
    if views:
        maps = [SideInputMap(view_cls, options, [GlobalWindows.windowed_value(v) for v in values])
                for (view_cls, options), values in zip(views, side_inputs, strict=True)]
    handler = _OutputHandler(window_fn=None, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(label, state=None), side_inputs=maps,
        input_args=list(args), input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    return label, invoker, receivers


def _run_bundle(items, payload: bytes, key: str, side_inputs: list | None = None) -> list[_Bundle]:
    """One dask partition = one Beam bundle of one ParDo. Runs on a worker."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    cache: collections.OrderedDict = getattr(_CACHE, "fns", None) or collections.OrderedDict()
    _CACHE.fns = cache
    if side_inputs is not None:  # the side input's value belongs to this run: not cached
        label, invoker, receivers = _invoker(payload, side_inputs)
    elif key in cache:
        cache.move_to_end(key)
        label, invoker, receivers = cache[key]
    else:
        label, invoker, receivers = cache[key] = _invoker(payload, None)
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)[1][1].invoke_teardown()

    container = MetricsContainer(label)
    previous = statesampler.get_current_tracker()
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(get_windowed_value(item, None))
            invoker.invoke_finish_bundle()
    finally:
        statesampler.set_current_tracker(previous)
    if side_inputs is not None:
        invoker.invoke_teardown()
    counters = {(k.step, k.metric.namespace, k.metric.name): v
                for k, v in container.get_cumulative().counters.items()}
    return [_Bundle(receivers.take(), counters)]


def _select(bundles: list[_Bundle], tag: str | None) -> list:
    out: list = []
    for b in bundles:
        out.extend(b.outputs.get(tag, ()))
    return out


def _counters_of(bundles: list[_Bundle]) -> list[dict]:
    return [b.counters for b in bundles]


def _concat(*parts) -> list:
    return [x for part in parts for x in part]


def _key(item):
    return item[0]


def _group_values(group):
    key, items = group
    return key, [v.value if isinstance(v, WindowedValue) else v for _, v in items]


def _size(partition) -> list[int]:
    return [sum(1 for _ in partition)]


# -- driver side ------------------------------------------------------------------------------------
class _CounterResults(MetricResults):
    """Counter totals of a finished run, answering ``result.metrics().query(...)`` like other runners
    (committed = attempted: only the results the scheduler kept are counted)."""

    def __init__(self, totals: dict[tuple[str, str, str], int]):
        self.results = [MetricResult(MetricKey(step, MetricName(ns, name)), value, value)
                        for (step, ns, name), value in sorted(totals.items())]

    def query(self, filter=None):
        counters = [r for r in self.results if filter is None or self.matches(filter, r.key)]
        return {self.COUNTERS: counters, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: []}


class DaskRunResult(PipelineResult):
    def __init__(self, client, futures, n_sinks: int, cluster=None):
        super().__init__(PipelineState.RUNNING)
        self.client, self.futures, self.n_sinks, self.cluster = client, futures, n_sinks, cluster
        self._metrics: _CounterResults | None = None

    def wait_until_finish(self, duration=None):
        if self._metrics is not None or self._state != PipelineState.RUNNING:
            return self._state
        try:
            results = self.client.gather(self.futures)
            totals: dict = collections.Counter()
            for per_partition in results[self.n_sinks:]:
                for counters in per_partition:
                    totals.update(counters)
            self._metrics = _CounterResults(dict(totals))
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


class _BagBuilder(PipelineVisitor):
    """PCollection -> dask bag, for every leaf transform of the (overridden) pipeline."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set[pvalue.PCollection] = set()
        self.counter_bags: list = []

    def _input_bags(self, node: AppliedPTransform) -> list:
        bags = []
        for pc in node.inputs:
            if isinstance(pc, pvalue.PBegin):
                continue
            self.consumed.add(pc)
            bags.append(self.bags[pc])
        return bags

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = self._input_bags(node)
        for si in node.side_inputs:
            self.consumed.add(si.pvalue)
        if isinstance(transform, _Read):
            raise NotImplementedError(f"{node.full_label}: beam.io.Read sources are not supported on the Dask runner")
        if isinstance(transform, beam.WindowInto) and not isinstance(transform.windowing.windowfn, GlobalWindows):
            raise NotImplementedError(f"{node.full_label}: windowing other than global on the Dask runner")
        if transform.__class__ is beam.ParDo:
            self._pardo(node, inputs[0])
            return
        if node.side_inputs:
            raise NotImplementedError(f"{node.full_label}: side inputs of {type(transform).__name__} on the Dask runner")
        if isinstance(transform, _Create):
            bag = self._create(list(transform.values))
        elif isinstance(transform, _GroupByKeyOnly):
            # Beam's translation leaves the shuffle to dask's default, chosen when the graph is built,
            # before the client exists: "disk" (partd), a per-process store, which splits and loses
            # groups across worker processes. The task shuffle hashes keys with dask's tokenize,
            # the same in every process.
            bag = inputs[0].groupby(_key, shuffle="tasks").map(_group_values)
        else:
            op = TRANSLATIONS.get(transform.__class__, NoOp)(node, bag_kwargs=self.bag_kwargs)
            if isinstance(op, NoOp) and len(inputs) != 1:
                raise NotImplementedError(f"{node.full_label}: {type(transform).__name__} on the Dask runner")
            bag = op.apply(inputs if len(inputs) != 1 or op.__class__.__name__ == "Flatten" else inputs[0])
        for pc in node.outputs.values():
            self.bags[pc] = bag

    def _create(self, items: list):
        import dask.bag as db

        if not items:
            return db.from_sequence([], npartitions=1)
        npartitions = self.bag_kwargs.get("npartitions")
        partition_size = self.bag_kwargs.get("partition_size")
        if not npartitions and not partition_size:
            # Our Create elements are files or planned output files (coarse work items): one per
            # partition spreads them over the workers; a long list is capped at 1024 partitions.
            npartitions = min(len(items), 1024)
        if npartitions:
            return db.from_sequence(items, npartitions=min(npartitions, len(items)))
        return db.from_sequence(items, partition_size=partition_size)

    def _pardo(self, node: AppliedPTransform, input_bag) -> None:
        import cloudpickle
        import dask
        from apache_beam.runners.common import DoFnSignature

        transform = node.transform
        fn = transform.fn
        signature = DoFnSignature(fn)
        if signature.is_stateful_dofn() or signature.is_splittable_dofn():
            raise NotImplementedError(f"{node.full_label}: stateful/splittable DoFns on the Dask runner")
        args, kwargs = transform.raw_side_inputs
        views = [(type(si), si._view_options()) for si in node.side_inputs]
        payload = cloudpickle.dumps((fn, args, kwargs, node.full_label, views))
        key = hashlib.blake2b(payload, digest_size=16).hexdigest()
        side = None
        if node.side_inputs:
            side = [dask.delayed(_concat, pure=True)(*self.bags[si.pvalue].to_delayed(optimize_graph=False))
                    for si in node.side_inputs]
            side = dask.delayed(list, pure=True)(side)
        # The pickled DoFn is one key of the graph: shipped to a worker once, not with every task.
        shared = dask.delayed(payload, pure=True)
        bundles = input_bag.map_partitions(_run_bundle, shared, key, side) if side is not None \
            else input_bag.map_partitions(_run_bundle, shared, key)
        self.counter_bags.append(bundles.map_partitions(_counters_of))
        for pc in node.outputs.values():
            self.bags[pc] = bundles.map_partitions(_select, pc.tag)  # tag None: the main output

    def sinks(self) -> list:
        return [bag for pc, bag in self.bags.items() if pc not in self.consumed]


class DaskRunner(BeamDaskRunner):
    """Runs a Beam pipeline on a ``dask.distributed`` cluster (see the module docstring).

    ``local_workers``: with no ``--dask_client_address``, a ``LocalCluster`` of this many worker
    processes (one thread each) is started for the run and closed after it.
    """

    def __init__(self, local_workers: int = 2):
        super().__init__()
        self.local_workers = local_workers

    def run_pipeline(self, pipeline, options):
        import dask.bag as db
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        pipeline.replace_all(dask_overrides())
        builder = _BagBuilder(bag_kwargs)
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
                                         preload=["beam_jobs.worker"])
            dask_options["address"] = cluster
        try:
            client = ddist.Client(**dask_options)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        # One graph for everything: a task that several sinks or counters depend on runs once.
        collections_ = [*sinks, *([db.concat(counters)] if counters else [])]
        futures = client.compute(collections_, optimize_graph=True)
        n_sinks = len(sinks)
        return DaskRunResult(client, futures, n_sinks, cluster)
