"""vocab and shard stages on real catalogs: ingest -> prepare -> vocab -> shard, then every output
checked against a plain re-computation (sentencepiece, a TFRecord reader that needs no TensorFlow)."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from beam_jobs import gettext_ingest, prepare, shard, vocab
from beam_jobs.options import BeamConfig
from labse_core.data.held_out import is_held_out
from labse_core.vocab import CLS_ID, SEP_ID, VocabConfig, load_tokenizer
from storage.layout import Layout
from storage.schemas import CLEAN_PAIRS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM

BEAM = BeamConfig(num_workers=2)
HELD_OUT = 0.2  # fine-tuning's eval_fraction as the shard stage is told it


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, real_catalogs):
    layout = Layout.from_env(tmp_path_factory.mktemp("vs") / "home")
    gettext_ingest.run(gettext_ingest.GettextIngestConfig(
        languages=["de", "ru", "ja", "ar", "el"], domains=["coreutils", "glib20", "iso_3166-1"], beam=BEAM), layout)
    prepare.run(prepare.PrepareConfig(eval_sets=[], beam=BEAM), layout)
    v = vocab.run(vocab.VocabStageConfig(vocab=VocabConfig(vocab_size=3000, sample_size=8_000), beam=BEAM), layout)
    s = shard.run(shard.ShardConfig(rows_per_shard=5000, max_len=32, held_out_fraction=HELD_OUT, beam=BEAM), layout)
    return layout, v, s


def test_vocab_is_balanced_and_loads_offline(sharded):
    layout, v, _ = sharded
    info = json.loads((layout.vocab / "vocab.json").read_text())
    assert set(info["counts"]) == {"en", "de", "ru", "ja", "ar", "el"}
    assert sum(info["quotas"].values()) == info["sampled"] == 8_000 < sum(info["counts"].values())
    # alpha = 0.3 flattens the distribution: the smallest language gets a larger share than its data share
    small = min(info["counts"], key=info["counts"].get)
    total = sum(info["counts"].values())
    assert info["quotas"][small] / info["sampled"] > info["counts"][small] / total
    tok = load_tokenizer(layout.vocab / "hf")
    sp = spm.SentencePieceProcessor(model_file=str(layout.vocab / "spm.model"))
    clean = pq.read_table(layout.dataset_dir(CLEAN_PAIRS.relpath)).slice(0, 500)
    for text in clean.column("tgt_text").to_pylist():
        assert tok(text)["input_ids"] == [CLS_ID, *sp.encode(text), SEP_ID]


def test_pair_shards_hold_every_clean_pair_with_its_ids(sharded):
    layout, _, s = sharded
    sp = spm.SentencePieceProcessor(model_file=str(layout.vocab / "spm.model"))
    clean = pq.read_table(layout.dataset_dir(CLEAN_PAIRS.relpath))
    pairs = pq.read_table(layout.dataset_dir(SHARD_PAIRS.relpath))
    assert pairs.num_rows == clean.num_rows == s.rows["shards_pairs"]
    assert Counter(zip(pairs.column("src_text").to_pylist(), pairs.column("tgt_text").to_pylist(), strict=True)) == \
        Counter(zip(clean.column("src_text").to_pylist(), clean.column("tgt_text").to_pylist(), strict=True))
    for r in pairs.slice(0, 300).to_pylist():
        assert r["src_ids"] == sp.encode(r["src_text"])[:32] and r["tgt_ids"] == sp.encode(r["tgt_text"])[:32]
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in sorted(layout.dataset_dir(SHARD_PAIRS.relpath).glob("*.parquet"))]
    assert len(sizes) >= 2 and max(sizes) <= 1.5 * min(sizes)  # balanced shard files


def test_tfrecords_parse_without_tensorflow(sharded):
    from tfrecord.reader import tfrecord_loader

    layout, _, s = sharded
    pairs = pq.read_table(layout.dataset_dir(SHARD_PAIRS.relpath))
    want = Counter((r["src_text"], r["tgt_text"], tuple(r["src_ids"]), tuple(r["tgt_ids"])) for r in pairs.to_pylist())
    got = Counter()
    desc = {"src_raw": "byte", "tgt_raw": "byte", "src_ids": "int", "tgt_ids": "int", "src_lang": "byte", "tgt_lang": "byte"}
    for path in s.tfrecord_files:
        for rec in tfrecord_loader(path, None, desc):  # checks every record's CRC as it reads
            got[(bytes(rec["src_raw"]).decode(), bytes(rec["tgt_raw"]).decode(),
                 tuple(int(x) for x in rec["src_ids"]), tuple(int(x) for x in rec["tgt_ids"]))] += 1
    assert got == want
    manifest = json.loads((layout.tfrecords / "_manifest.json").read_text())
    assert manifest["records"] == pairs.num_rows


def test_tlm_and_mlm_shards_and_tlm_leaves_out_the_held_out_pairs(sharded):
    layout, _, s = sharded
    tlm = pq.read_table(layout.dataset_dir(SHARD_TLM.relpath)).slice(0, 200).to_pylist()
    for r in tlm:
        ids, types = r["input_ids"], r["token_type_ids"]
        assert ids[0] == CLS_ID and ids[-1] == SEP_ID and ids.count(SEP_ID) == 2
        first_sep = ids.index(SEP_ID)
        assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
        assert r["position_ids"][first_sep + 1] == 1  # positions restart at the target
    # TLM holds every pair but the ones fine-tuning holds out for its evaluation, as [CLS] src [SEP] tgt [SEP]
    pairs = pq.read_table(layout.dataset_dir(SHARD_PAIRS.relpath)).to_pylist()
    held = [is_held_out(r["src_text"], r["tgt_text"], HELD_OUT) for r in pairs]
    expected = Counter((CLS_ID, *r["src_ids"], SEP_ID, *r["tgt_ids"], SEP_ID) for r, h in zip(pairs, held, strict=True) if not h)
    got = Counter(map(tuple, pq.read_table(layout.dataset_dir(SHARD_TLM.relpath)).column("input_ids").to_pylist()))
    assert got == expected and s.rows["shards_tlm"] == len(pairs) - sum(held)
    assert 0.1 * len(pairs) < sum(held) < 0.3 * len(pairs)
    mlm = pq.read_table(layout.dataset_dir(SHARD_MLM.relpath))
    keys = list(zip(mlm.column("lang").to_pylist(), mlm.column("text").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == s.rows["shards_mlm"]
    assert {k[0] for k in keys} == {"en", "de", "ru", "ja", "ar", "el"}


def test_stages_refuse_to_run_out_of_order(layout):
    with pytest.raises(vocab.VocabError, match="run `labse prepare` first"):
        vocab.run(vocab.VocabStageConfig(beam=BEAM), layout)
    with pytest.raises(shard.ShardError, match="run `labse prepare` first"):
        shard.run(shard.ShardConfig(beam=BEAM), layout)
