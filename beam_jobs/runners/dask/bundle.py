"""Worker side: one dask partition of a ParDo's input = one Beam bundle (gaps 2, 3 and 4).

Beam's translation (``transform_evaluator.apply_dofn_to_bundle``) collects a bundle's outputs before
``finish_bundle`` runs (its outputs are lost: gap 3), tags none of them apart (every consumer reads
every output: gap 2) and keeps no metrics (gap 4). Here a bundle returns a ``Bundle``: its outputs
per tag, ``finish_bundle``'s included, and the counters of a Beam ``MetricsContainer`` scoped to it.

DoFns are set up once per worker thread and reused for later bundles of the same transform (Beam's
contract: ``setup``, then any number of bundles one at a time), so a model or a table loaded in
``DoFn.setup()`` is loaded once per worker, not once per bundle.
"""

from __future__ import annotations

import collections
import threading

from apache_beam.transforms.window import GlobalWindows

from beam_jobs.runners.dask.beam_internals import (
    CounterFactory,
    DoFnContext,
    DoFnInvoker,
    DoFnSignature,
    MetricsContainer,
    Receiver,
    SideInputMap,
    _OutputHandler,
    get_windowed_value,
    statesampler,
)

# Keyed by a digest of the pickled transform; a thread's least recently used DoFns are torn down.
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


class Bundle:
    """What one partition of a ParDo produced: outputs per tag and counter totals
    (``{(step, namespace, name): value}``)."""

    __slots__ = ("outputs", "counters")

    def __init__(self, outputs: dict, counters: dict):
        self.outputs, self.counters = outputs, counters


def _invoker(payload: bytes, side_inputs: list | None):
    import cloudpickle
    from apache_beam.transforms.core import DoFn

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


def run_bundle(items, payload: bytes, key: str, side_inputs: list | None = None) -> list[Bundle]:
    """Run one Beam bundle of the ParDo pickled in ``payload`` (``key``: its digest) over ``items``.
    Runs on a worker; returns a one-element list (a dask bag partition)."""
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
            invoker.invoke_finish_bundle()  # before the outputs are taken: finish_bundle's count (gap 3)
    finally:
        statesampler.set_current_tracker(previous)
    if side_inputs is not None:
        invoker.invoke_teardown()
    counters = {(k.step, k.metric.namespace, k.metric.name): v
                for k, v in container.get_cumulative().counters.items()}
    return [Bundle(receivers.take(), counters)]


def select(bundles: list[Bundle], tag: str | None) -> list:
    """One output of a ParDo's bundles: the main one (``tag`` None) or a tagged one (gap 2)."""
    out: list = []
    for b in bundles:
        out.extend(b.outputs.get(tag, ()))
    return out


def counters_of(bundles: list[Bundle]) -> list[dict]:
    return [b.counters for b in bundles]
