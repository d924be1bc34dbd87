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
