import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.io import atomic_path, write_json_atomic, write_parquet
from storage.schemas import RAW_PAIRS, SchemaError
from tests.storage.test_schemas import _raw_table


def test_atomic_path_publishes_on_success(tmp_path):
    final = tmp_path / "a" / "b.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("hello")
        assert not final.exists()  # not visible under its final name before the block ends
    assert final.read_text() == "hello"
    assert os.listdir(final.parent) == ["b.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    final = tmp_path / "b.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert final.read_text() == "old"
    assert os.listdir(tmp_path) == ["b.txt"]  # temp file cleaned up


def test_killed_writer_never_leaves_a_half_file_under_the_final_name(tmp_path):
    final = tmp_path / "big.bin"
    script = textwrap.dedent(
        f"""
        import os
        from storage.io import atomic_path
        with atomic_path({str(final)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 1_000_000)
                fh.flush()
            os._exit(9)   # the process dies mid-write, no cleanup runs
        """
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert r.returncode == 9
    assert not final.exists()


def test_write_parquet_checks_schema_and_writes_nothing_on_mismatch(tmp_path):
    path = tmp_path / "p.parquet"
    with pytest.raises(SchemaError):
        write_parquet(RAW_PAIRS, _raw_table().drop(["origin"]), path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert write_parquet(RAW_PAIRS, _raw_table(), path) == 2
    back = pq.read_table(path)
    assert back.schema.names == RAW_PAIRS.file_schema.names
    assert back.column("tgt_text").to_pylist() == ["Datei", "Öffnen"]


def test_write_parquet_sorts_rows_for_reproducible_files(tmp_path):
    t = _raw_table(line=pa.array([9, 3], pa.int64()))
    write_parquet(RAW_PAIRS, t, tmp_path / "p.parquet")
    assert pq.read_table(tmp_path / "p.parquet").column("line").to_pylist() == [3, 9]


def test_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text().startswith('{\n  "a"')


# ---------------------------------------------------------------------------------------------------
# Folders: atomic_dir / publish_dir (checkpoints, exported models, the pretraining final/)


def test_atomic_dir_publishes_a_folder_and_replaces_an_older_one(tmp_path):
    from storage.io import atomic_dir

    final = tmp_path / "runs" / "step-3"
    with atomic_dir(final) as tmp:
        (tmp / "model.pt").write_text("v1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.json").write_text("{}")
        assert not final.exists()  # nothing under the final name before the block ends
    assert (final / "model.pt").read_text() == "v1" and (final / "sub" / "x.json").is_file()
    with atomic_dir(final) as tmp:
        (tmp / "model.pt").write_text("v2")
    assert sorted(os.listdir(final)) == ["model.pt"]  # the new folder whole, nothing of the old one
    assert (final / "model.pt").read_text() == "v2"
    assert os.listdir(final.parent) == ["step-3"]  # no temporary or moved-aside folder left


def test_atomic_dir_keeps_the_old_folder_on_error(tmp_path):
    from storage.io import atomic_dir

    final = tmp_path / "best"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("crash")
    assert (final / "model.safetensors").read_text() == "old"
    assert os.listdir(tmp_path) == ["best"]


def test_publish_dir_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    from storage import io

    final, tmp = tmp_path / "final", tmp_path / ".final.tmp"
    final.mkdir()
    (final / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(tmp):
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    monkeypatch.setattr(io, "exchange", lambda a, b: False)  # the two-rename fallback (no RENAME_EXCHANGE)
    with pytest.raises(OSError, match="disk full"):
        io.publish_dir(tmp, final)
    assert (final / "a").read_text() == "old"
