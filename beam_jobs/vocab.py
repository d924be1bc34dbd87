"""Stage ``vocab``: a language-balanced sample of the clean corpus -> sentencepiece -> HF tokenizer.

    corpus_clean (both sides; English counted once per distinct sentence) [+ monolingual files]
      -> distinct sentences per language                  (spilled to disk by a hash bucket: beam_jobs.spill)
      -> a deterministic random sample, quota per language ~ n_l^alpha (Beam: Top.PerKey + side input)
      -> one text file per language (only the sample reaches the driver)
      -> sentencepiece unigram model + Hugging Face fast tokenizer (labse_core.vocab)

Writes ``LABSE_HOME/lake/vocab/``: ``spm.model``, ``spm.vocab``, ``hf/`` (``AutoTokenizer``
folder) and ``vocab.json`` (config, per-language counts and quotas), swapped into place at the end.

    labse vocab                        # defaults: 8000 pieces, alpha 0.3, 1 M sampled sentences
    labse vocab --vocab-size 32000 --alpha 0.5
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.failures import stage_failures
from beam_jobs.io import ReadParquetBatches, WriteValue
from beam_jobs.options import BeamConfig
from beam_jobs.spill import SpillSentences, distinct_sentences, spill_folder
from labse_core import vocab as core
from labse_core.readers.mono import read_mono
from labse_core.readers.records import MonoSentence
from storage.datasets import commit, current_manifest, new_staging
from storage.faults import maybe_die
from storage.io import write_json_atomic
from storage.layout import Layout
from storage.locks import lake_lock
from storage.schemas import CLEAN_PAIRS


class VocabStageConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab: core.VocabConfig = Field(default_factory=core.VocabConfig, description="sentencepiece settings.")
    mono_inputs: list[Path] = Field(default_factory=list, description="Monolingual text files (one sentence per line).")
    beam: BeamConfig = Field(default_factory=BeamConfig)


class VocabResult(BaseModel):
    path: str
    vocab_size: int
    languages: int
    sampled: int
    counts: dict[str, int]
    quotas: dict[str, int]
    seconds: float


class VocabError(RuntimeError):
    pass


def _priority(seed: int, lang: str, text: str) -> int:
    """A deterministic pseudo-random rank: the same corpus and seed always give the same sample."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{lang}\x00{text}".encode(), digest_size=8).digest(), "big")


def sentence_bucket(lang: str, text: str, buckets: int = 256) -> int:
    """The spill bucket of a sentence for the distinct step."""
    return zlib.crc32(f"{lang}\t{text}".encode()) % buckets


def _sides(rows: list[dict]):
    for r in rows:
        yield (r["lang"], r["tgt_text"])
        yield (r["src_lang"], r["src_text"])


def _mono(path: str):
    for item in read_mono(path):
        if isinstance(item, MonoSentence) and item.text.strip():
            yield (item.lang, item.text.strip())


class _WriteSampleFn(beam.DoFn):
    """(lang, top candidates) -> the language's quota of them, written to ``<dir>/<lang>.txt``."""

    def __init__(self, out_dir: str, total: int, alpha: float):
        self.out_dir, self.total, self.alpha = out_dir, total, alpha

    def process(self, element, counts):
        lang, candidates = element
        quota = core.sample_quota(counts, self.total, self.alpha)[lang]
        chosen = [text for _, text in sorted(candidates)[:quota]]
        path = Path(self.out_dir) / f"{lang}.txt"
        path.write_text("".join(t.replace("\n", " ") + "\n" for t in chosen), encoding="utf-8")
        maybe_die("vocab.part_written")
        yield lang, len(chosen)


def run(cfg: VocabStageConfig, layout: Layout) -> VocabResult:
    with lake_lock(layout.ensure(), "vocab"), stage_failures("vocab", layout):
        return _run(cfg, layout)


def _run(cfg: VocabStageConfig, layout: Layout) -> VocabResult:
    t0 = time.perf_counter()
    manifest = current_manifest(layout, CLEAN_PAIRS)
    if manifest is None and not cfg.mono_inputs:
        raise VocabError("no clean corpus to build a vocabulary from: run `labse prepare` first")
    for p in cfg.mono_inputs:
        if not p.is_file():
            raise VocabError(f"monolingual input {p} does not exist")
    files = [str(layout.dataset_dir(CLEAN_PAIRS.relpath) / f.path) for f in manifest.files] if manifest else []
    held = new_staging(layout, "vocab")
    staging = held.path
    sample_dir = staging / "_sample"
    sample_dir.mkdir(parents=True)
    counts_path = staging / "_counts.json"
    total, alpha, seed = cfg.vocab.sample_size, cfg.vocab.alpha, cfg.vocab.seed
    try:
        with spill_folder(layout.staging, staging.name) as spill, cfg.beam.pipeline() as p:
            sources = []
            if files:
                sources.append(p | "CleanFiles" >> beam.Create(files, reshuffle=True)
                               | "Read" >> beam.ParDo(ReadParquetBatches()) | "BothSides" >> beam.FlatMap(_sides))
            if cfg.mono_inputs:
                sources.append(p | "MonoFiles" >> beam.Create([str(x) for x in cfg.mono_inputs], reshuffle=True)
                               | "ReadMono" >> beam.FlatMap(_mono))
            # Distinct through spill files (beam_jobs.spill): equal sentences share a bucket.
            sentences = (tuple(sources) | "SpillSentences" >> SpillSentences(spill, sentence_bucket)
                         | "Distinct" >> beam.FlatMap(distinct_sentences))
            counts = sentences | "CountPerLanguage" >> beam.combiners.Count.PerKey()
            _ = (counts | "CollectCounts" >> beam.combiners.ToDict()
                 | "WriteCounts" >> WriteValue(counts_path, json.dumps))
            _ = (
                sentences
                | "Rank" >> beam.Map(lambda kv: (kv[0], (_priority(seed, kv[0], kv[1]), kv[1])))
                # No language can get more than `total` sentences, so the `total` lowest ranks per
                # language contain its sample whatever the quotas turn out to be.
                | "Candidates" >> beam.combiners.Top.PerKey(total, key=lambda pt: -pt[0])
                | "TakeQuota" >> beam.ParDo(_WriteSampleFn(str(sample_dir), total, alpha), counts=beam.pvalue.AsDict(counts))
            )
        counts = json.loads(counts_path.read_text())
        quotas = core.sample_quota(counts, total, alpha)

        def sample():
            for lang in sorted(quotas):
                with open(sample_dir / f"{lang}.txt", encoding="utf-8") as fh:
                    yield from (line.rstrip("\n") for line in fh)

        model = core.train_sentencepiece(sample(), staging, cfg.vocab)
        core.export_hf_tokenizer(model, staging / "hf")
        sampled = sum(quotas.values())
        info = {"config": cfg.model_dump(mode="json"), "counts": dict(sorted(counts.items())),
                "quotas": dict(sorted(quotas.items())), "sampled": sampled, "corpus_manifest_created_at":
                manifest.created_at if manifest else None}
        write_json_atomic(staging / "vocab.json", info)
        import shutil

        shutil.rmtree(sample_dir)
        counts_path.unlink()
        commit(layout, [(staging, layout.vocab)])
        held.release()
    except BaseException:
        held.remove()
        raise
    return VocabResult(path=str(layout.vocab), vocab_size=cfg.vocab.vocab_size, languages=len(counts), sampled=sampled,
                       counts=counts, quotas=quotas, seconds=time.perf_counter() - t0)
