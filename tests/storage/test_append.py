"""Appending runs to a dataset keeps every earlier run's rows, atomically, with counts that add up."""

import datetime as dt
import threading

import pytest

from labse_core.evaluation.results import publish_rows
from storage.datasets import current_manifest
from storage.schemas import EVAL_RESULTS


def rows(n, metric="accuracy"):
    return [{"split": "test", "scope": "language", "language": f"l{i}", "direction": "both", "metric": metric,
             "value": i / 10, "n": 1000} for i in range(n)]


def test_append_keeps_earlier_runs_and_refuses_a_run_twice(layout):
    import pyarrow.dataset as ds

    publish_rows(layout, "tatoeba-v1", rows(3), run_id="r1", model_uri="m", model_version="1")
    publish_rows(layout, "bucc-gettext", rows(2, "f1"), run_id="r2", model_uri="m", model_version=None)
    m = publish_rows(layout, "tatoeba-v1", rows(4), run_id="r3", model_uri="m2", model_version="2",
                     created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert m.rows == 9 and m.partitions == {"eval_set=bucc-gettext": 2, "eval_set=tatoeba-v1": 7}
    table = ds.dataset(layout.dataset_dir(EVAL_RESULTS.relpath), partitioning="hive").to_table()
    assert sorted(table.column("run_id").to_pylist()) == ["r1"] * 3 + ["r2"] * 2 + ["r3"] * 4
    with pytest.raises(ValueError, match="already wrote"):
        publish_rows(layout, "tatoeba-v1", rows(1), run_id="r3", model_uri="m", model_version=None)
    assert current_manifest(layout, EVAL_RESULTS).rows == 9  # the refused append changed nothing
    assert not list(layout.staging.glob("eval_results-*"))  # and left no staging folder


def test_concurrent_appends_all_land(layout):
    errors = []

    def run(i):
        try:
            publish_rows(layout, "tatoeba-v1", rows(5), run_id=f"t{i}", model_uri="m", model_version=None)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and current_manifest(layout, EVAL_RESULTS).rows == 20
