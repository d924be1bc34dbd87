import json

import pytest

from storage.datasets import DatasetCountError, DatasetWriter, current_manifest, partition_path
from storage.io import write_parquet
from storage.schemas import RAW_PAIRS
from tests.storage.test_schemas import _raw_table


def _write_version(layout, langs_rows, expected=None):
    with DatasetWriter(layout, RAW_PAIRS) as w:
        for i, (lang, n) in enumerate(langs_rows):
            write_parquet(RAW_PAIRS, _raw_table(n), w.file_path({"lang": lang}, i))
        w.stage(producer={"stage": "test"}, stats={"seen": 3}, expected_rows=expected)
        assert current_manifest(layout, RAW_PAIRS) != w.manifest  # staged, not yet published
    return w, w.manifest


def test_publish_writes_manifest_whose_counts_add_up(layout):
    _, m = _write_version(layout, [("de", 2), ("fr", 1), ("de", 1)])
    assert m.rows == 4
    assert m.partitions == {"lang=de": 3, "lang=fr": 1}
    assert sum(f.rows for f in m.files) == 4
    assert {f.partition["lang"] for f in m.files} == {"de", "fr"}
    on_disk = json.loads((layout.dataset_dir(RAW_PAIRS.relpath) / "_manifest.json").read_text())
    assert on_disk["rows"] == 4 and on_disk["producer"] == {"stage": "test"}
    assert current_manifest(layout, RAW_PAIRS).rows == 4
    assert list(layout.staging.iterdir()) == []  # nothing left behind


def test_new_version_replaces_old_one_whole(layout):
    _write_version(layout, [("de", 2), ("fr", 2)])
    _, m = _write_version(layout, [("ja", 1)])
    root = layout.dataset_dir(RAW_PAIRS.relpath)
    assert m.partitions == {"lang=ja": 1}
    assert sorted(p.name for p in root.iterdir()) == ["_manifest.json", "lang=ja"]


def test_count_mismatch_is_not_published(layout):
    _write_version(layout, [("de", 2)])
    with pytest.raises(DatasetCountError, match="hold 1 rows, the producer counted 5"):
        _write_version(layout, [("fr", 1)], expected=5)
    assert current_manifest(layout, RAW_PAIRS).partitions == {"lang=de": 2}  # old version intact


def test_partition_values_cannot_escape_the_dataset():
    for bad in ("../x", "", ".hidden", "_tmp"):
        with pytest.raises(ValueError, match="invalid value"):
            partition_path(RAW_PAIRS, {"lang": bad})
    assert partition_path(RAW_PAIRS, {"lang": "sr-Latn"}) == "lang=sr-Latn"


def test_an_error_in_the_with_block_publishes_nothing(layout):
    _write_version(layout, [("de", 2)])
    with pytest.raises(RuntimeError, match="the stage failed"), DatasetWriter(layout, RAW_PAIRS) as w:
        write_parquet(RAW_PAIRS, _raw_table(1), w.file_path({"lang": "fr"}, 0))
        w.stage(expected_rows=1)
        raise RuntimeError("the stage failed after staging")
    assert not w.staging.exists() and not w.published
    assert current_manifest(layout, RAW_PAIRS).partitions == {"lang=de": 2}  # old version intact
    assert list(layout.staging.iterdir()) == []  # staging folder and its lock file gone


def test_a_clean_exit_without_stage_publishes_nothing(layout):
    with DatasetWriter(layout, RAW_PAIRS) as w:
        write_parquet(RAW_PAIRS, _raw_table(), w.file_path({"lang": "de"}, 0))
    assert not w.staging.exists() and current_manifest(layout, RAW_PAIRS) is None


def test_publish_together_publishes_every_staged_writer(layout):
    from storage.datasets import publish_together
    from storage.schemas import REJECTS

    with DatasetWriter(layout, RAW_PAIRS) as raw, DatasetWriter(layout, REJECTS, raw.run_id) as rejects:
        write_parquet(RAW_PAIRS, _raw_table(2), raw.file_path({"lang": "de"}, 0))
        raw.stage(expected_rows=2)
        with pytest.raises(RuntimeError, match="corpus_rejects not staged"):
            publish_together(layout, [raw, rejects])
        assert current_manifest(layout, RAW_PAIRS) is None  # nothing published by the refused call
        rejects.stage(expected_rows=0)
        publish_together(layout, [raw, rejects])
        assert current_manifest(layout, RAW_PAIRS).rows == 2 and current_manifest(layout, REJECTS).rows == 0
    assert raw.published and rejects.published and list(layout.staging.iterdir()) == []


def test_abort_removes_staging(layout):
    w = DatasetWriter(layout, RAW_PAIRS).begin()
    write_parquet(RAW_PAIRS, _raw_table(), w.file_path({"lang": "de"}, 0))
    w.abort()
    assert not w.staging.exists() and current_manifest(layout, RAW_PAIRS) is None


def test_an_empty_version_never_silently_replaces_rows(layout):
    from storage.datasets import EmptyReplaceError

    _write_version(layout, [("de", 2)])
    w = DatasetWriter(layout, RAW_PAIRS).begin()
    with pytest.raises(EmptyReplaceError, match=r"0 rows and would replace the 2 rows .*--replace-empty"):
        w.publish(expected_rows=0)
    assert current_manifest(layout, RAW_PAIRS).rows == 2  # old version intact
    w.begin().publish(expected_rows=0, replace_empty=True)
    assert current_manifest(layout, RAW_PAIRS).rows == 0 and w.replaced_rows == 2
    w2, _ = _write_version(layout, [("fr", 1)])
    assert w2.replaced_rows == 0  # replacing an empty version is not a loss
