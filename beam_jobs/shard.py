"""Stage ``shard``: clean pairs (+ monolingual text) -> tokenized training shards.

    corpus_clean --tokenize (sentencepiece, ids without [CLS]/[SEP], max_len per side)--+
        -> shards_pairs  (dual encoder)         Parquet, num_shards balanced files (Beam WriteToParquet)
        -> shards/tfrecord/pairs-*.tfrecord     tf.train.Example: src_raw, tgt_raw, src_ids, tgt_ids, langs
        -> shards_tlm    [CLS] src [SEP] tgt [SEP], segment ids, positions reset at the target; without
                         the pairs fine-tuning holds out for evaluation (held_out_fraction)
    both sides of the pairs (distinct per language) + monolingual files
        -> shards_mlm    (lang, text, input_ids)

Each pair goes to shard ``crc32(pair) % num_shards`` (balanced, stable across reruns); one
spill to disk (``beam_jobs.spill``) brings a shard's rows together and one writer emits its pairs, TLM and TFRecord files
(atomic, named by shard number, so a retried bundle rewrites the same files). Beam's round-robin
sharded sinks were not used: they restart the round robin at a random shard in every bundle, which
left shards empty on small inputs. Row counts are checked against the stage's counters before
anything is published.

    labse shard                        # after `labse vocab`
    labse shard --mono news.de.txt.gz --rows-per-shard 50000
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
import zlib
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.counters import counters
from beam_jobs.failures import stage_failures
from beam_jobs.io import ReadParquetBatches
from beam_jobs.options import BeamConfig
from beam_jobs.spill import SpillGroup, SpillSentences, distinct_sentences, read_bucket, spill_folder
from beam_jobs.vocab import _mono
from labse_core.data.held_out import is_held_out
from labse_core.data.masking import make_tlm_example
from labse_core.vocab import CLS_ID, MODEL_FILENAME, SEP_ID
from storage.datasets import DatasetWriter, current_manifest, new_staging, publish_together
from storage.faults import maybe_die
from storage.io import atomic_path, write_json_atomic, write_parquet
from storage.layout import Layout
from storage.locks import lake_lock
from storage.schemas import CLEAN_PAIRS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM

NAMESPACE = "shard"


class ShardConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_len: int = Field(64, ge=4, description="Most tokens per sentence, before [CLS]/[SEP] (longer is cut).")
    tlm_max_len: int = Field(128, ge=8, description="Most tokens of a TLM example, specials included.")
    rows_per_shard: int = Field(100_000, ge=1, description="Target rows per shard file.")
    tfrecord: bool = Field(True, description="Also write the pair shards as TFRecord tf.train.Example files.")
    tlm: bool = Field(True, description="Write TLM shards.")
    held_out_fraction: float = Field(
        0.01, ge=0.0, lt=1.0,
        description="Fine-tuning's eval_fraction (FinetuneConfig's default 0.01): TLM leaves out the pairs "
        "fine-tuning holds out (labse_core.data.held_out.is_held_out), which held-out retrieval and BUCC "
        "evaluate on, so TLM pretraining never reads them side by side. 0: TLM takes every pair.",
    )
    mlm_from_pairs: bool = Field(True, description="Use both sides of the clean pairs as MLM sentences.")
    mono_inputs: list[Path] = Field(default_factory=list, description="Monolingual text files for MLM.")
    beam: BeamConfig = Field(default_factory=BeamConfig)


class ShardResult(BaseModel):
    rows: dict[str, int]
    files: dict[str, int]
    tfrecord_files: list[str]
    seconds: float


class ShardError(RuntimeError):
    pass


def _count(name: str, n: int = 1) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(n)


class _TokenizePairsFn(beam.DoFn):
    """A batch of clean rows -> pair-shard rows (sentencepiece in C++, one call per batch and side)."""

    def __init__(self, spm_model: str, max_len: int, num_shards: int):
        self.spm_model, self.max_len, self.num_shards = spm_model, max_len, num_shards

    def setup(self):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=self.spm_model)

    def process(self, rows: list[dict]):
        """One table of the batch's pair-shard rows, with the ``shard`` each belongs to."""
        src = self.sp.encode([r["src_text"] for r in rows])
        tgt = self.sp.encode([r["tgt_text"] for r in rows])
        out = []
        for r, s, t in zip(rows, src, tgt, strict=True):
            _count("tokenized")
            _count("truncated_sides", (len(s) > self.max_len) + (len(t) > self.max_len))
            out.append({"src_lang": r["src_lang"], "tgt_lang": r["lang"], "src_text": r["src_text"],
                        "tgt_text": r["tgt_text"], "src_ids": s[: self.max_len], "tgt_ids": t[: self.max_len]})
        if out:
            shards = [pair_shard(r, self.num_shards) for r in out]
            yield pa.Table.from_pylist(out, schema=SHARD_PAIRS.file_schema).append_column(
                "shard", pa.array(shards, pa.int64()))


def tlm_row(pair: dict, max_len: int) -> dict:
    ex = make_tlm_example(pair["src_ids"], pair["tgt_ids"], CLS_ID, SEP_ID, max_len)
    return {"src_lang": pair["src_lang"], "tgt_lang": pair["tgt_lang"], "input_ids": ex.input_ids.tolist(),
            "token_type_ids": ex.token_type_ids.tolist(), "position_ids": ex.position_ids.tolist()}


def example_bytes(pair: dict) -> bytes:
    """A pair as a serialized ``tf.train.Example`` (built with the ``tfrecord`` package's protobuf
    classes, no TensorFlow): bytes features src_raw/tgt_raw/src_lang/tgt_lang, int64 src_ids/tgt_ids."""
    from tfrecord import example_pb2

    ex = example_pb2.Example()
    f = ex.features.feature
    f["src_raw"].bytes_list.value.append(pair["src_text"].encode())
    f["tgt_raw"].bytes_list.value.append(pair["tgt_text"].encode())
    f["src_lang"].bytes_list.value.append(pair["src_lang"].encode())
    f["tgt_lang"].bytes_list.value.append(pair["tgt_lang"].encode())
    f["src_ids"].int64_list.value.extend(pair["src_ids"])
    f["tgt_ids"].int64_list.value.extend(pair["tgt_ids"])
    return ex.SerializeToString(deterministic=True)  # map keys sorted: the same bytes in every process


def write_tfrecord(path: Path, records: list[bytes]) -> None:
    """TFRecord framing (length, masked CRC32C of the length, data, masked CRC32C of the data),
    written atomically; Beam's record writer does the framing."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for r in records:
            _TFRecordUtil.write_record(fh, r)


def shard_of(text: str, num_shards: int) -> int:
    """Deterministic, content-based shard: balanced in expectation, stable across reruns."""
    return zlib.crc32(text.encode()) % num_shards


def pair_shard(pair: dict, num_shards: int) -> int:
    return shard_of(f"{pair['tgt_lang']}\t{pair['src_text']}\t{pair['tgt_text']}", num_shards)


class SentenceShard:
    """The shard of an MLM sentence (``bucket_of`` of ``beam_jobs.spill.SpillSentences``)."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def __call__(self, lang: str, text: str) -> int:
        return shard_of(f"{lang}\t{text}", self.num_shards)


def both_sides(batch: list[dict]) -> list[tuple[str, str]]:
    """A batch of clean rows -> its sentences as (lang, text), targets first (MLM reads both sides)."""
    return [(r["lang"], r["tgt_text"]) for r in batch] + [(r["src_lang"], r["src_text"]) for r in batch]


class _WritePairShardFn(beam.DoFn):
    """One shard's pairs -> pairs Parquet + TLM Parquet + TFRecord files, all with the same rows.
    File names depend only on the shard number, so a retried bundle rewrites the same files."""

    def __init__(self, cfg: ShardConfig, n: int, pairs_dir: str, tlm_dir: str, tfr_dir: str):
        self.cfg, self.n, self.pairs_dir, self.tlm_dir, self.tfr_dir = cfg, n, pairs_dir, tlm_dir, tfr_dir

    def process(self, element):
        shard, files = element  # the shard's rows, spilled (beam_jobs.spill)
        rows = read_bucket(files, SHARD_PAIRS.file_schema).drop_columns(["shard"]).to_pylist()
        rows = sorted(rows, key=lambda r: (r["tgt_lang"], r["src_text"], r["tgt_text"]))
        name = f"{shard:05d}-of-{self.n:05d}"
        write_parquet(SHARD_PAIRS, pa.Table.from_pylist(rows, schema=SHARD_PAIRS.file_schema),
                      Path(self.pairs_dir) / f"part-{name}.parquet")
        _count("pairs", len(rows))
        if self.cfg.tlm:
            frac = self.cfg.held_out_fraction
            tlm = [tlm_row(r, self.cfg.tlm_max_len) for r in rows if not is_held_out(r["src_text"], r["tgt_text"], frac)]
            write_parquet(SHARD_TLM, pa.Table.from_pylist(tlm, schema=SHARD_TLM.file_schema),
                          Path(self.tlm_dir) / f"part-{name}.parquet")
            _count("tlm", len(tlm))
            _count("tlm_held_out", len(rows) - len(tlm))
        if self.cfg.tfrecord:
            write_tfrecord(Path(self.tfr_dir) / f"pairs-{name}.tfrecord", [example_bytes(r) for r in rows])
        maybe_die("shard.part_written")


class _WriteMonoShardFn(beam.DoFn):
    def __init__(self, spm_model: str, max_len: int, n: int, out_dir: str):
        self.spm_model, self.max_len, self.n, self.out_dir = spm_model, max_len, n, out_dir

    def setup(self):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=self.spm_model)

    def process(self, element):
        shard = element[0]
        sentences = distinct_sentences(element)  # sorted
        ids = self.sp.encode([text for _, text in sentences])
        rows = [{"lang": lang, "text": text, "input_ids": i[: self.max_len]}
                for (lang, text), i in zip(sentences, ids, strict=True)]
        write_parquet(SHARD_MLM, pa.Table.from_pylist(rows, schema=SHARD_MLM.file_schema),
                      Path(self.out_dir) / f"part-{shard:05d}-of-{self.n:05d}.parquet")
        _count("mlm", len(rows))
        maybe_die("shard.part_written")


def count_tfrecords(path: Path) -> int:
    """Records in a TFRecord file, reading only the length headers."""
    import struct

    n = 0
    with open(path, "rb") as fh:
        while header := fh.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            fh.seek(length + 4, 1)
            n += 1
    return n


def run(cfg: ShardConfig, layout: Layout) -> ShardResult:
    with lake_lock(layout.ensure(), "shard"), stage_failures("shard", layout):
        return _run(cfg, layout)


def _run(cfg: ShardConfig, layout: Layout) -> ShardResult:
    t0 = time.perf_counter()
    manifest = current_manifest(layout, CLEAN_PAIRS)
    spm_model = layout.vocab / MODEL_FILENAME
    if manifest is None:
        raise ShardError("no clean corpus: run `labse prepare` first")
    if not spm_model.exists():
        raise ShardError(f"no vocabulary at {spm_model}: run `labse vocab` first")
    for p in cfg.mono_inputs:
        if not p.is_file():
            raise ShardError(f"monolingual input {p} does not exist")
    files = [str(layout.dataset_dir(CLEAN_PAIRS.relpath) / f.path) for f in manifest.files]
    n_pairs = max(1, math.ceil(manifest.rows / cfg.rows_per_shard))
    n_mono = max(1, math.ceil(2 * manifest.rows / cfg.rows_per_shard))
    with contextlib.ExitStack() as stack:
        writers = {spec.name: stack.enter_context(DatasetWriter(layout, spec)) for spec in (SHARD_PAIRS, SHARD_TLM, SHARD_MLM)}
        tfr_held = new_staging(layout, "tfrecord")
        stack.callback(tfr_held.remove)  # published by then, or (an error, tfrecord off) removed
        tfr_staging = tfr_held.path
        spill = stack.enter_context(spill_folder(layout.staging, f"shard-{uuid.uuid4().hex[:12]}"))
        with cfg.beam.pipeline() as p:
            rows = (p | "CleanFiles" >> beam.Create(files, reshuffle=True)
                    | "Read" >> beam.ParDo(ReadParquetBatches(2000)))
            # A shard's rows meet on disk (beam_jobs.spill), not in the runner's memory.
            _ = (
                rows
                | "TokenizePairs" >> beam.ParDo(_TokenizePairsFn(str(spm_model), cfg.max_len, n_pairs))
                | "GroupShards" >> SpillGroup(spill / "pairs", "shard", None)
                | "WritePairShards" >> beam.ParDo(_WritePairShardFn(
                    cfg, n_pairs, str(writers["shards_pairs"].staging), str(writers["shards_tlm"].staging), str(tfr_staging)))
            )
            sentences = []
            if cfg.mlm_from_pairs:
                sentences.append(rows | "BothSides" >> beam.FlatMap(both_sides))
            if cfg.mono_inputs:
                sentences.append(p | "MonoFiles" >> beam.Create([str(x) for x in cfg.mono_inputs], reshuffle=True)
                                 | "ReadMono" >> beam.FlatMap(_mono))
            if sentences:
                # distinct per shard: equal sentences share a shard
                _ = (tuple(sentences) | "GroupMonoShards" >> SpillSentences(spill / "mlm", SentenceShard(n_mono))
                     | "WriteMonoShards" >> beam.ParDo(_WriteMonoShardFn(
                         str(spm_model), cfg.max_len, n_mono, str(writers["shards_mlm"].staging))))
        stats = counters(p.result, NAMESPACE)
        expected = {"shards_pairs": stats.get("pairs", 0), "shards_tlm": stats.get("tlm", 0),
                    "shards_mlm": stats.get("mlm", 0)}
        if not stats.get("tokenized", 0) == stats.get("pairs", 0) == manifest.rows:
            raise ShardError(f"tokenized {stats.get('tokenized', 0)} and wrote {stats.get('pairs', 0)} pairs, "
                             f"the clean corpus has {manifest.rows}; nothing published")
        if cfg.tlm and stats.get("tlm", 0) + stats.get("tlm_held_out", 0) != manifest.rows:
            raise ShardError(f"TLM shards hold {stats.get('tlm', 0)} pairs and left out {stats.get('tlm_held_out', 0)} "
                             f"held-out ones, the clean corpus has {manifest.rows}; nothing published")
        tfr = sorted(tfr_staging.glob("*.tfrecord")) if cfg.tfrecord else []
        tfr_counts = {f.name: count_tfrecords(f) for f in tfr}
        if cfg.tfrecord and sum(tfr_counts.values()) != manifest.rows:
            raise ShardError(f"TFRecord files hold {sum(tfr_counts.values())} records, expected {manifest.rows}")
        info = {"stage": "shard", "config": cfg.model_dump(mode="json"), "vocab": str(spm_model)}
        # A writer left unstaged (TLM off, no MLM sentences) publishes nothing: its folder is removed.
        staged = [w for name, w in writers.items()
                  if not (name == "shards_tlm" and not cfg.tlm or name == "shards_mlm" and not expected[name])]
        published = {w.spec.name: w.stage(producer=info, stats=stats, expected_rows=expected[w.spec.name]) for w in staged}
        folders = []
        if cfg.tfrecord:
            write_json_atomic(tfr_staging / "_manifest.json",
                              {"records": sum(tfr_counts.values()), "files": tfr_counts, "producer": info,
                               "features": {"src_raw": "bytes", "tgt_raw": "bytes", "src_lang": "bytes",
                                            "tgt_lang": "bytes", "src_ids": "int64 list", "tgt_ids": "int64 list"}})
            folders.append((tfr_staging, layout.tfrecords))
        # every shard dataset and the TFRecord copies, or (after a crash) none
        publish_together(layout, staged, folders)
    return ShardResult(rows={k: m.rows for k, m in published.items()},
                       files={k: len(m.files) for k, m in published.items()},
                       tfrecord_files=[str(layout.tfrecords / f.name) for f in tfr], seconds=time.perf_counter() - t0)


