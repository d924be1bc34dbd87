"""The lake of record on an S3-protocol server (moto's standalone server, started here on a free
127.0.0.1 port): ingest -> push, pull -> prepare -> push on a second machine's home, then DuckDB
queries the remote lake read through fsspec (the pinned DuckDB has no httpfs and downloads nothing)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_jobs import gettext_ingest, prepare
from beam_jobs.options import BeamConfig
from storage.catalog import QueryError
from storage.layout import Layout
from storage.remote import LAKE_URL_ENV, RemoteLake, RemoteLakeError
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS
from tests.torchrun_helpers import free_port

DIRECT = BeamConfig(num_workers=1, running_mode="in_memory")
SECRET = "not-a-real-secret-0123456789"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "labse-test", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import boto3

    boto3.client("s3").create_bucket(Bucket="lake")
    yield "s3://lake/labse"
    mp.undo()
    server.stop()


def _texts(table) -> Counter:
    return Counter(zip(table.column("src_text").to_pylist(), table.column("tgt_text").to_pylist(), strict=True))


def test_ingest_prepare_catalog_on_s3(s3, tmp_path, monkeypatch, real_catalogs):
    monkeypatch.setenv(LAKE_URL_ENV, s3)
    lake = RemoteLake.from_env()
    assert SECRET not in repr(lake)  # credentials stay in the environment
    # machine 1: ingest, publish to the remote lake
    one = Layout.from_env(tmp_path / "one")
    gettext_ingest.run(gettext_ingest.GettextIngestConfig(languages=["de", "el"], domains=["glib20"], beam=DIRECT), one)
    raw = lake.push(one, RAW_PAIRS)
    # machine 2: nothing local; pull, prepare, publish
    two = Layout.from_env(tmp_path / "two")
    assert lake.pull(two, RAW_PAIRS).rows == raw.rows
    result = prepare.run(prepare.PrepareConfig(eval_sets=[], beam=DIRECT), two)
    lake.push(two, CLEAN_PAIRS)
    lake.push(two, REJECTS)
    assert result.clean.rows > 500 and result.rejects.rows > 0
    # the catalog reads the remote lake: DuckDB over Arrow datasets read through fsspec
    counts = {r["lang"]: r["n"] for r in lake.query("SELECT lang, count(*) AS n FROM corpus_clean GROUP BY 1").to_pylist()}
    assert counts == {k.split("=")[1]: v for k, v in result.clean.partitions.items()}
    local = pq.read_table(two.dataset_dir(CLEAN_PAIRS.relpath))
    remote = lake.query("SELECT src_text, tgt_text FROM corpus_clean")
    assert _texts(remote) == _texts(local)
    datasets = {r["name"]: r["rows"] for r in lake.query("SELECT * FROM datasets").to_pylist()}
    assert datasets == {"corpus_raw": raw.rows, "corpus_clean": result.clean.rows, "corpus_rejects": result.rejects.rows}
    # a second push of a new version replaces the old one atomically and deletes its files
    old_version = lake.current(CLEAN_PAIRS)[0]
    lake.push(two, CLEAN_PAIRS)
    assert lake.current(CLEAN_PAIRS)[0] != old_version
    assert not lake.fs.exists(f"{lake.dataset_root(CLEAN_PAIRS)}/_versions/{old_version}")
    # the sandbox holds: no file outside, no URL, no writes
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "COPY corpus_clean TO '/tmp/x.csv'",
                "SELECT * FROM read_parquet('s3://lake/labse/corpus/clean/_current.json')"):
        with pytest.raises(QueryError):
            lake.query(sql)


def test_remote_lake_settings_errors(monkeypatch, tmp_path):
    monkeypatch.delenv(LAKE_URL_ENV, raising=False)
    with pytest.raises(RemoteLakeError, match=LAKE_URL_ENV):
        RemoteLake.from_env()
    with pytest.raises(RemoteLakeError, match="not published"):
        RemoteLake(f"file://{tmp_path}/remote").push(Layout.from_env(tmp_path / "h"), CLEAN_PAIRS)


def test_labse_home_as_a_url_is_refused_not_made_a_local_folder(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "flows.cli", "datasets"], cwd=tmp_path, capture_output=True, text=True,
                          env=os.environ | {"LABSE_HOME": "s3://bucket/home", "PYTHONPATH": str(Path(__file__).parents[2])},
                          timeout=120)
    assert proc.returncode == 2 and "LABSE_LAKE_URL" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s3:").exists()
