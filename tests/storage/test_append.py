"""Appending runs to a dataset keeps every earlier run's rows, atomically, with counts that add up."""

import datetime as dt
import threading

import pytest

from labse_core.evaluation.results import attach_registry_version, publish_rows
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


def test_registry_version_relabels_only_that_runs_folder_rows(layout):
    import os

    import pyarrow.dataset as ds

    from storage.append import rewrite_run_files

    publish_rows(layout, "tatoeba-v1", rows(3), run_id="other", model_uri="/models/a", model_version=None)
    publish_rows(layout, "tatoeba-v1", rows(2), run_id="ev", model_uri="/models/a", model_version=None)
    publish_rows(layout, "bucc-gettext", rows(2, "f1"), run_id="ev", model_uri="/models/a", model_version=None)
    root = layout.dataset_dir(EVAL_RESULTS.relpath)
    other = next(root.rglob("part-other-*.parquet"))
    inode = os.stat(other).st_ino

    assert attach_registry_version(layout, ["ev", None, "ev"], model_uri="/models/a", name="labse", version="7") == 4
    t = ds.dataset(root, partitioning="hive").to_table().to_pylist()
    assert sorted((r["run_id"], r["eval_set"], r["model_uri"], r["model_version"]) for r in t) == sorted(
        [("other", "tatoeba-v1", "/models/a", None)] * 3 + [("ev", "tatoeba-v1", "models:/labse/7", "7")] * 2
        + [("ev", "bucc-gettext", "models:/labse/7", "7")] * 2)
    assert os.stat(next(root.rglob("part-other-*.parquet"))).st_ino == inode  # other runs' files: linked, untouched
    assert current_manifest(layout, EVAL_RESULTS).rows == 7
    # A model it does not name and a run that is not there change nothing.
    assert attach_registry_version(layout, ["other"], model_uri="/models/b", name="labse", version="8") == 3
    assert attach_registry_version(layout, ["nope"], model_uri="/models/a", name="labse", version="8") == 0
    # A run id that begins another's ("ev" vs "ev-2") names only its own files.
    publish_rows(layout, "tatoeba-v1", rows(1), run_id="ev-2", model_uri="/models/a", model_version=None)
    assert attach_registry_version(layout, ["ev"], model_uri="/models/a", name="labse", version="7") == 4
    assert [r["model_version"] for r in ds.dataset(root, partitioning="hive").to_table().to_pylist()
            if r["run_id"] == "ev-2"] == [None]
    assert {r["model_version"] for r in ds.dataset(root, partitioning="hive").to_table().to_pylist()} == {None, "7"}
    # A rewrite that would change the row count is refused and the published version stays.
    before = current_manifest(layout, EVAL_RESULTS)
    with pytest.raises(ValueError, match="changed its rows"):
        rewrite_run_files(layout, EVAL_RESULTS, "ev", lambda t: t.slice(0, 1) if t.num_rows else t)
    assert current_manifest(layout, EVAL_RESULTS) == before and not list(layout.staging.glob("eval_results-*"))
