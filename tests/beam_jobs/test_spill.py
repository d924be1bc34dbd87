"""beam_jobs.spill: the shuffle through files that keeps ``prepare``'s memory flat, checked against a
plain in-memory grouping, and its failure modes (a full disk, a run that fails)."""

from __future__ import annotations

import errno
import hashlib
import random

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import spill
from beam_jobs.failures import stage_failures
from storage.layout import Layout


def table(n: int, seed: int = 0, start: int = 0) -> pa.Table:
    rng = random.Random(seed)
    keys = [f"{rng.choice(['de', 'fr', 'zh-Hant'])}:{hashlib.md5(str(rng.randrange(n // 3 + 1)).encode()).hexdigest()}"
            for _ in range(n)]
    return pa.table({"pair_key": keys, "i": list(range(start, start + n))})


@pytest.mark.parametrize("digits", [0, 1, 2])
def test_buckets_and_split_match_a_plain_reference(digits):
    t = table(500)
    ids = spill.bucket_ids(t, "pair_key", digits)
    want = [int(k.split(":")[1][:digits], 16) if digits else 0 for k in t.column("pair_key").to_pylist()]
    assert ids.tolist() == want
    parts = dict(spill.split_by_bucket(t, ids))
    ref: dict[int, list[int]] = {}
    for b, i in zip(want, t.column("i").to_pylist(), strict=True):
        ref.setdefault(b, []).append(i)
    assert {b: p.column("i").to_pylist() for b, p in parts.items()} == ref  # input order kept in a bucket


def _grouped(element):
    bucket, files = element
    rows = spill.read_bucket(files, pa.schema([("pair_key", pa.string()), ("i", pa.int64())]))
    return bucket, sorted(rows.column("i").to_pylist())


def test_spill_group_groups_as_a_plain_group_by(tmp_path):
    """Two collections (each spills in its own stage), tables of 37 rows, buckets flushed early (a
    bundle's file holds several batches): every row reaches its bucket once."""
    a, b = table(900, seed=1), table(700, seed=2, start=900)
    ref: dict[int, list[int]] = {}
    for t in (a, b):
        for k, i in zip(t.column("pair_key").to_pylist(), t.column("i").to_pylist(), strict=True):
            ref.setdefault(int(k.split(":")[1][:2], 16), []).append(i)
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        parts = tuple(p | f"T{j}" >> beam.Create([t.slice(o, 37) for o in range(0, t.num_rows, 37)])
                      for j, t in enumerate((a, b)))
        grouped = parts | spill.SpillGroup(tmp_path / "s", "pair_key", 2) | beam.Map(_grouped)
        assert_that(grouped, equal_to([(k, sorted(v)) for k, v in ref.items()]))
    assert list((tmp_path / "s").glob("*.arrow"))  # the caller removes them (spill_folder)


def test_spill_folder_is_removed_however_the_run_ends(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError), spill.spill_folder(tmp_path, "run1") as folder:
        (folder / "x.arrow").write_bytes(b"x" * 10)
        assert spill.folder_bytes(folder) == 10
        raise RuntimeError("the pipeline failed")
    assert not folder.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setenv("LABSE_SPILL_DIR", str(tmp_path / "elsewhere"))
    # a run killed outright left its folder (no lock held now): the next spill there removes it
    dead = tmp_path / "elsewhere" / "spill-dead"
    dead.mkdir(parents=True)
    (dead / "b00001-x.arrow").write_bytes(b"x")
    with spill.spill_folder(tmp_path / "staging", "run2") as folder:
        assert folder.parent == tmp_path / "elsewhere" and not dead.exists()
    assert not folder.exists()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LABSE_SPILL_DIR", str(tmp_path / "a-file" / "spill"))
    with pytest.raises(OSError, match=f"^.*LABSE_SPILL_DIR={tmp_path}/a-file/spill: cannot write the spill files there"):
        with spill.spill_folder(tmp_path / "staging", "run3"):
            pass


def test_a_full_disk_while_spilling_is_one_line_naming_the_folder_and_the_space(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    fn = spill._SpillWriteFn(str(tmp_path / "s"), "pair_key", 1, needed=3 * 2**30, flush_rows=10)
    fn.start_bundle()
    monkeypatch.setattr(spill.pa.ipc, "new_stream", full)
    with pytest.raises(spill.SpillSpaceError) as e:
        list(fn.process(table(100)))
    text = str(e.value)
    assert f"no space left on device while spilling to {tmp_path / 's'}" in text and "needs about 3.0 GiB" in text
    # As the runner reports it (the worker's traceback in a RuntimeError): one line for the user.
    layout = Layout.from_env(tmp_path / "home")
    with pytest.raises(OSError) as e2, stage_failures("prepare", layout):
        raise RuntimeError(f"Traceback (most recent call last):\n  File ...\nSpillSpaceError: {text}\n\nmore")
    line = str(e2.value)
    assert e2.value.errno == errno.ENOSPC and "\n" not in line
    assert line.startswith("[Errno 28] prepare: no space left on device while spilling to") and "3.0 GiB" in line
