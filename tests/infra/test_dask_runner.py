"""The Beam stages on the Dask runner (``--runner dask``, ``beam_jobs.dask_runner``) against the
direct runner, on real gettext catalogs; a ``dask.distributed.LocalCluster`` of 2 worker processes
is a real multi-process cluster. Outputs are compared as row multisets and contents, not file names
(file boundaries depend on how a runner splits bundles)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs import gettext_ingest, prepare, shard, vocab
from beam_jobs.counters import counters
from beam_jobs.options import BeamConfig
from labse_core.vocab import VocabConfig
from storage.layout import Layout
from storage.manifest import read_manifest
from storage.schemas import CLEAN_PAIRS, REJECTS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM

TATOEBA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tatoeba" / "v1"
DIRECT = BeamConfig(num_workers=1, running_mode="in_memory")
LANGS = ["de", "ja", "el"]
DOMAINS = ["glib20", "iso_3166-1"]


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as c:
        yield c


def _rows(layout: Layout, spec) -> Counter:
    root = layout.dataset_dir(spec.relpath)
    table = pq.read_table(root) if any(root.rglob("*.parquet")) else pa.table({})
    names = sorted(table.column_names)
    return Counter(tuple(_hashable(r[c]) for c in names) for r in table.to_pylist())


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _manifest_view(layout: Layout, spec) -> dict:
    """What a manifest says about the data (not the run: ids, time, config, file names)."""
    m = read_manifest(layout.dataset_dir(spec.relpath)).model_dump()
    stats = {k: v for k, v in m["stats"].items() if not isinstance(v, list)}
    return {"rows": m["rows"], "partitions": m["partitions"], "stats": stats, "fields": m["schema_fields"]}


def _pipeline(layout: Layout, beam_cfg: BeamConfig, eval_sets: list[Path]):
    # Few rows per file: each dataset spans several files and bundles on both runners.
    prep = prepare.run(prepare.PrepareConfig(eval_sets=eval_sets, rows_per_file=700, batch_size=500,
                                             max_translations_per_source=3, beam=beam_cfg), layout)
    voc = vocab.run(vocab.VocabStageConfig(vocab=VocabConfig(vocab_size=1200, sample_size=3000), beam=beam_cfg), layout)
    sh = shard.run(shard.ShardConfig(rows_per_shard=800, max_len=24, beam=beam_cfg), layout)
    return prep, voc, sh


@pytest.fixture(scope="module")
def both(tmp_path_factory, cluster, real_catalogs):
    eval_sets = [TATOEBA / "tatoeba.deu-eng.deu", TATOEBA / "tatoeba.deu-eng.eng"] if TATOEBA.is_dir() else []
    direct = Layout.from_env(tmp_path_factory.mktemp("direct") / "home")
    on_dask = Layout.from_env(tmp_path_factory.mktemp("dask") / "home")
    gettext_ingest.run(gettext_ingest.GettextIngestConfig(languages=LANGS, domains=DOMAINS, beam=DIRECT), direct)
    shutil.copytree(direct.lake, on_dask.lake)  # the same corpus_raw (ingest's own sink: tests/beam_jobs)
    d = _pipeline(direct, DIRECT, eval_sets)
    k = _pipeline(on_dask, BeamConfig(runner="dask", dask_address=cluster.scheduler_address), eval_sets)
    return direct, on_dask, d, k


def test_corpus_outputs_equal_the_direct_runner(both):
    direct, on_dask, (d_prep, *_), (k_prep, *_) = both
    assert d_prep.stats["input_pairs"] > 1500 and d_prep.stats["rejected"] > 0  # a real, mixed input
    assert k_prep.stats == d_prep.stats  # counters come back from the cluster, each counted once
    for spec in (CLEAN_PAIRS, REJECTS):
        assert _rows(on_dask, spec) == _rows(direct, spec), spec.name
        assert _manifest_view(on_dask, spec) == _manifest_view(direct, spec), spec.name
    files = read_manifest(on_dask.dataset_dir(CLEAN_PAIRS.relpath)).files
    assert len(files) > len(LANGS)  # several files per partition: the sink's commit really ran
    assert not list(on_dask.staging.iterdir())  # no attempts or staging folders left behind


def test_vocab_and_shards_equal_the_direct_runner(both):
    direct, on_dask, (_, d_voc, d_sh), (_, k_voc, k_sh) = both
    assert (k_voc.counts, k_voc.quotas) == (d_voc.counts, d_voc.quotas)
    # the same deterministic sample -> the same sentencepiece model, byte for byte
    assert (on_dask.vocab / "spm.model").read_bytes() == (direct.vocab / "spm.model").read_bytes()
    assert k_sh.rows == d_sh.rows and k_sh.files == d_sh.files
    for spec in (SHARD_PAIRS, SHARD_TLM, SHARD_MLM):
        assert _rows(on_dask, spec) == _rows(direct, spec), spec.name
        assert _manifest_view(on_dask, spec) == _manifest_view(direct, spec), spec.name
        # shard files are named by a content hash of the pair: the same rows in the same file
        for f in read_manifest(direct.dataset_dir(spec.relpath)).files:
            assert pq.read_table(on_dask.dataset_dir(spec.relpath) / f.path).equals(
                pq.read_table(direct.dataset_dir(spec.relpath) / f.path))
    tfr = sorted(p.name for p in direct.tfrecords.glob("*.tfrecord"))
    assert tfr and tfr == sorted(p.name for p in on_dask.tfrecords.glob("*.tfrecord"))
    for name in tfr:
        assert (on_dask.tfrecords / name).read_bytes() == (direct.tfrecords / name).read_bytes()


# -- the runner's own semantics, where Beam's DaskRunner 2.77 goes wrong (see beam_jobs/dask_runner.py)
class _Split(beam.DoFn):
    def process(self, x):
        beam.metrics.Metrics.counter("t", "seen").inc()
        if x % 2:
            yield beam.pvalue.TaggedOutput("odd", x)
        else:
            yield x


class _CountInBundle(beam.DoFn):
    def start_bundle(self):
        self.n = 0

    def process(self, x):
        self.n += 1

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        yield GlobalWindows.windowed_value(self.n)


def _write(path: str):
    def write(values):
        Path(path).write_text(json.dumps(sorted(values)))
    return write


def test_runner_tagged_outputs_finish_bundle_side_inputs_and_counters(cluster, tmp_path):
    out = {n: str(tmp_path / n) for n in ("even", "odd", "bundles", "scaled", "empty")}
    cfg = BeamConfig(runner="dask", dask_address=cluster.scheduler_address)
    with cfg.pipeline() as p:
        split = p | beam.Create(range(10)) | beam.ParDo(_Split()).with_outputs("odd", main="even")
        _ = split.even | "E" >> beam.combiners.ToList() | "WE" >> beam.Map(_write(out["even"]))
        _ = split.odd | "O" >> beam.combiners.ToList() | "WO" >> beam.Map(_write(out["odd"]))
        _ = (p | "C2" >> beam.Create(range(7)) | beam.ParDo(_CountInBundle())
             | "B" >> beam.combiners.ToList() | "WB" >> beam.Map(_write(out["bundles"])))
        total = split.odd | beam.CombineGlobally(sum)
        _ = (split.even | "Scale" >> beam.Map(lambda x, t: x * t, t=beam.pvalue.AsSingleton(total))
             | "S" >> beam.combiners.ToList() | "WS" >> beam.Map(_write(out["scaled"])))
        _ = (p | "C3" >> beam.Create([]) | "N" >> beam.combiners.ToList() | "WN" >> beam.Map(_write(out["empty"])))
    odd_sum = sum(range(1, 10, 2))
    assert json.loads(Path(out["even"]).read_text()) == list(range(0, 10, 2))
    assert json.loads(Path(out["odd"]).read_text()) == list(range(1, 10, 2))
    assert sum(json.loads(Path(out["bundles"]).read_text())) == 7  # finish_bundle outputs kept
    assert json.loads(Path(out["scaled"]).read_text()) == [x * odd_sum for x in range(0, 10, 2)]
    assert json.loads(Path(out["empty"]).read_text()) == []
    assert counters(p.result, "t") == {"seen": 10}


def test_sink_publishes_each_row_once_when_bundles_run_again(tmp_path):
    """A bundle re-executed (or retried) writes the same attempt names; only the attempts listed by
    the commit step are published, on the driver, and identical batches of two bundles both land."""
    from beam_jobs.io import _BufferedWriteFn
    from storage.datasets import ATTEMPTS, DatasetWriter, record_commit

    layout = Layout.from_env(tmp_path / "home").ensure()
    writer = DatasetWriter(layout, REJECTS).begin()
    rows = [{"src_lang": "en", "lang": "de", "src_text": f"s{i}", "tgt_text": f"t{i}", "reason": "too_long", "source": "tsv",
             "origin": "f", "line": i, "detail": None} for i in range(10)]

    def bundle(batch):
        fn = _BufferedWriteFn(REJECTS, str(writer.staging), rows_per_file=4, max_buffered_rows=100)
        fn.start_bundle()
        infos = [i for r in batch for i in fn.process(r)]
        return infos + [wv.value for wv in fn.finish_bundle()]

    first = bundle(rows)
    again = bundle(rows)  # the same bundle once more: same names, files rewritten in place
    assert sorted(i["attempt"] for i in first) == sorted(i["attempt"] for i in again)
    twin = bundle(rows[:4])  # another bundle with exactly the rows of the first file
    stray = bundle(rows[:3])  # a bundle whose output never reached the commit (failed, retried)
    assert stray and all(Path(i["attempt"]).exists() for i in stray)
    record_commit(again + twin, str(writer.staging))
    record_commit(again + twin, str(writer.staging))  # the commit step running twice changes nothing
    assert not list(writer.staging.rglob("part-*.parquet"))  # nothing is moved on the worker
    manifest = writer.publish(expected_rows=14)
    assert manifest.rows == 14 and not (layout.dataset_dir(REJECTS.relpath) / ATTEMPTS).exists()
    got = Counter(r["src_text"] for r in pq.read_table(layout.dataset_dir(REJECTS.relpath)).to_pylist())
    assert got == Counter({f"s{i}": 1 for i in range(10)}) + Counter({f"s{i}": 1 for i in range(4)})


def test_runner_dask_and_address_options():
    assert BeamConfig(runner="dask").pipeline_options().get_all_options()["runner"] is None
    opts = BeamConfig(runner="dask", dask_address="tcp://10.0.0.1:8786").pipeline_options().get_all_options()
    assert opts["address"] == "tcp://10.0.0.1:8786"
    with pytest.raises(ValueError, match="needs runner 'dask'"):
        BeamConfig(dask_address="tcp://10.0.0.1:8786")


def test_runner_refuses_what_it_cannot_run(cluster):
    from apache_beam.transforms.window import FixedWindows

    cfg = BeamConfig(runner="dask", dask_address=cluster.scheduler_address)
    with pytest.raises(NotImplementedError, match="windowing other than global"):
        with cfg.pipeline() as p:
            _ = p | beam.Create([1, 2]) | beam.WindowInto(FixedWindows(10)) | beam.Map(print)
