"""Every Beam name the Dask runner relies on beyond Beam's public API, imported in one place, after
the version check (``version.py``): on another Beam version the runner stops with one line here,
instead of failing on a missing name mid-run or, worse, running with changed semantics.

Private names (a leading underscore: Beam may change them in any release):

- ``_Create``, ``_GroupByKeyOnly``, ``_Read``: the primitives Beam's ``dask_overrides()`` replaces
  ``Create``, ``GroupByKey`` and ``io.Read`` with; the translation recognizes them by class;
- ``_OutputHandler``: routes a DoFn's outputs (main and tagged) to receivers, in ``bundle.py``;
- ``AsSideInput._view_options``: how a side input view wants its values (singleton, list, dict ...).

(A sixth, ``DaskOptions._extract_bag_kwargs``, is no longer used: ``runner.py`` reads its two options itself.)

Public but runner-internal (no compatibility promise either): Beam's Dask ``TRANSLATIONS`` / ``NoOp``
/ ``get_windowed_value`` / ``dask_overrides`` / ``DaskOptions``, the ``DoFnInvoker`` machinery,
``MetricsContainer`` and the state sampler that scopes it, ``SideInputMap``.
"""

from __future__ import annotations

from beam_jobs.runners.dask.version import check_beam_version

check_beam_version()

# ruff: noqa: E402  (the check above must run first)
from apache_beam.metrics.execution import MetricKey, MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.metrics.metricbase import MetricName
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.overrides import _Create, _GroupByKeyOnly, _Read, dask_overrides
from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, NoOp, get_windowed_value
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils.counters import CounterFactory


def view_options(side_input) -> tuple:
    """``(view class, view options)`` of a side input (``AsSingleton(...)`` etc.), as ``SideInputMap`` takes them."""
    return type(side_input), side_input._view_options()


__all__ = [
    "TRANSLATIONS", "BeamDaskRunner", "CounterFactory", "DaskOptions", "DoFnContext", "DoFnInvoker", "DoFnSignature",
    "MetricKey", "MetricName", "MetricResult", "MetricResults", "MetricsContainer", "NoOp", "Receiver", "SideInputMap",
    "_Create", "_GroupByKeyOnly", "_OutputHandler", "_Read", "dask_overrides", "get_windowed_value", "statesampler",
    "view_options",
]
