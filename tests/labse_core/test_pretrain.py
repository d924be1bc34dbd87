"""MLM/TLM pretraining: shard streaming, the MLM head, the training loop, resume, DDP, stacking.

All on real text: gettext catalogs of this machine (English msgid -> translated msgstr) for six
languages, tokenized with the project's sentencepiece vocabulary (labse_core.vocab) and written as
SHARD_MLM / SHARD_TLM part files in a temporary lake.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from labse_core.data.batches import SpecialIds
from labse_core.data.masking import IGNORE_INDEX, make_tlm_example
from labse_core.data.shards import (
    ShardLoader,
    ShardStream,
    StreamConfig,
    pad_sequences,
    padding_ratio,
    plan_units,
    shard_files,
    write_shards,
)
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.model.encoder import EncoderConfig, LabseEncoder, tiny, to_bert_config
from labse_core.pretrain.config import PretrainConfig, base_gpu, tiny_cpu
from labse_core.pretrain.data import PretrainCollator
from labse_core.pretrain.model import (
    LabseForPretraining,
    grow_layers,
    mlm_accuracy,
    mlm_loss,
    shrink_layers,
    stage_layers,
)
from labse_core.pretrain.train import Pretrainer, build_model, run
from labse_core.training.distributed import DistEnv
from labse_core.training.optim import lr_at
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_TLM, check_table
from tests.torchrun_helpers import torchrun_two_ranks

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "ru", "ja", "pt")
DOMAIN = "glib20"  # ~1,200 translated messages per language, present for all six
MAX_LEN = 64


# ---------------------------------------------------------------------------------------------------
# Real shards


@dataclass(frozen=True)
class Corpus:
    mlm: Path
    tlm: Path
    vocab_size: int
    mlm_table: pa.Table


def _tokenizer(sentences: list[str], tmp: Path):
    """The project's sentencepiece vocabulary if labse_core.vocab is usable, else a byte-level
    stand-in (ids 5..260 = bytes) with the same special ids."""
    try:
        from labse_core import vocab
    except ImportError:
        vocab = None
    if vocab is not None:
        model = vocab.train_sentencepiece(sentences, tmp / "spm", vocab.VocabConfig(vocab_size=2000))
        tok = vocab.load_tokenizer(vocab.export_hf_tokenizer(model, tmp / "hf"))
        assert (vocab.PAD_ID, vocab.UNK_ID, vocab.CLS_ID, vocab.SEP_ID, vocab.MASK_ID) == astuple(
            SpecialIds()
        )
        return lambda texts: tok(texts, add_special_tokens=False)["input_ids"], len(tok)
    return lambda texts: [[5 + b for b in t.encode()] for t in texts], 261


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    if not all((LOCALES / lang / "LC_MESSAGES" / f"{DOMAIN}.mo").is_file() for lang in LANGS):
        pytest.skip(f"this machine lacks {DOMAIN}.mo catalogs for {LANGS}")
    tmp = tmp_path_factory.mktemp("pretrain-corpus")
    pairs = {
        lang: [
            (p.src_text, p.tgt_text)
            for p in catalog_pairs(read_mo(LOCALES / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"))
        ]
        for lang in LANGS
    }
    english = sorted({en for ps in pairs.values() for en, _ in ps})
    mono = [("en", t) for t in english] + [(lang, t) for lang, ps in pairs.items() for _, t in ps]
    encode, vocab_size = _tokenizer([t for _, t in mono], tmp)

    ids = encode([t for _, t in mono])
    mlm = pa.table(
        {
            "lang": [lang for lang, _ in mono],
            "text": [t for _, t in mono],
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
        }
    )
    # Shuffle rows so that every file mixes languages, as the sharding job does.
    mlm = mlm.take(np.random.default_rng(0).permutation(mlm.num_rows))
    write_shards(SHARD_MLM, mlm, tmp / "lake/shards/mlm", rows_per_file=1500)

    flat = [(lang, en, t) for lang, ps in pairs.items() for en, t in ps]
    src_ids, tgt_ids = encode([en for _, en, _ in flat]), encode([t for _, _, t in flat])
    sp = SpecialIds()
    packed = [make_tlm_example(s, t, sp.cls, sp.sep, MAX_LEN) for s, t in zip(src_ids, tgt_ids, strict=True)]
    tlm = pa.table(
        {
            "src_lang": ["en"] * len(flat),
            "tgt_lang": [lang for lang, _, _ in flat],
            "input_ids": pa.array([e.input_ids.tolist() for e in packed], pa.list_(pa.int32())),
            "token_type_ids": pa.array([e.token_type_ids.tolist() for e in packed], pa.list_(pa.int8())),
            "position_ids": pa.array([e.position_ids.tolist() for e in packed], pa.list_(pa.int16())),
        }
    )
    tlm = tlm.take(np.random.default_rng(1).permutation(tlm.num_rows))
    write_shards(SHARD_TLM, tlm, tmp / "lake/shards/tlm", rows_per_file=2000)
    return Corpus(tmp / "lake/shards/mlm", tmp / "lake/shards/tlm", vocab_size, mlm)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on 2 cores shared with other processes, two OpenMP threads per matmul
    spin-wait on each other and tiny-model steps get several times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(corpus: Corpus, **overrides) -> PretrainConfig:
    values = dict(
        vocab_size=corpus.vocab_size,
        mlm_shards=str(corpus.mlm),
        tlm_shards=str(corpus.tlm),
        max_len=MAX_LEN,
        mlflow=False,
        progress=False,
    )
    return tiny_cpu(**(values | overrides))


def _row_key(row) -> tuple:
    return (row["lang"], row["text"], tuple(int(i) for i in row["input_ids"]))


# ---------------------------------------------------------------------------------------------------
# Shard streaming


def test_split_over_ranks_and_workers_reads_every_row_exactly_once_per_epoch(corpus):
    cfg = StreamConfig(
        seed=3, batch_size=16, max_tokens=600, buffer_rows=500, extra_tokens=2, max_len=MAX_LEN, epochs=2
    )
    seen: Counter = Counter()
    for rank in range(2):
        stream = ShardStream(
            corpus.mlm, columns=("lang", "text", "input_ids"), shard_index=rank, num_shards=2, cfg=cfg
        )
        for batch in ShardLoader(stream, num_workers=2):
            assert 1 <= len(batch) <= 16
            longest = max(min(len(r["input_ids"]) + 2, MAX_LEN) for r in batch)
            assert len(batch) == 1 or len(batch) * longest <= 600
            seen.update(_row_key(r) for r in batch)
    expected = Counter(_row_key(r) for r in corpus.mlm_table.to_pylist())
    assert seen == Counter({k: 2 * n for k, n in expected.items()})  # two epochs, each row once per epoch


def test_consumers_get_disjoint_units_that_cover_the_epoch(corpus):
    stream0 = ShardStream(corpus.mlm, shard_index=0, num_shards=2)
    stream1 = ShardStream(corpus.mlm, shard_index=1, num_shards=2)
    for epoch in range(3):
        parts = [s.consumer_units(epoch, w, 2) for s in (stream0, stream1) for w in range(2)]
        flat = [u for part in parts for u in part]
        assert len(flat) == len(set(flat)) == len(stream0.units(2))
        assert all(parts)
    # The unit order is reshuffled every epoch.
    assert stream0.consumer_units(0, 0, 2) != stream0.consumer_units(1, 0, 2)


def test_units_follow_row_groups_and_split_when_there_are_too_few(tmp_path, corpus):
    table = check_table(SHARD_MLM, corpus.mlm_table.slice(0, 100))
    pq.write_table(table, tmp_path / "part-00000.parquet", row_group_size=30)  # 4 row groups: 30 30 30 10
    units = plan_units(shard_files(tmp_path))
    assert [(u.row_group, u.num_rows) for u in units] == [(0, 30), (1, 30), (2, 30), (3, 10)]
    many = plan_units(shard_files(tmp_path), min_units=8)
    assert len(many) >= 8 and sum(u.num_rows for u in many) == 100
    assert sorted((u.row_group, u.start, u.stop) for u in many) == [
        (u.row_group, u.start, u.stop) for u in many
    ]
    assert sum(u.num_rows for u in plan_units(shard_files(tmp_path), unit_rows=7)) == 100


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_round_trip_resumes_the_stream_exactly(corpus, num_workers):
    # Infinite stream, small windows: the 30 batches cross window and epoch boundaries.
    cfg = StreamConfig(seed=1, batch_size=64, buffer_rows=300)

    def loader():
        return ShardLoader(
            ShardStream(
                corpus.mlm, columns=("lang", "text", "input_ids"), shard_index=1, num_shards=2, cfg=cfg
            ),
            num_workers=num_workers,
        )

    def keys(batch):
        return [_row_key(r) for r in batch]

    straight = loader()
    it = iter(straight)
    reference = [keys(next(it)) for _ in range(130)]

    first = loader()
    it = iter(first)
    head = [keys(next(it)) for _ in range(57)]
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint stores it; it survives JSON
    second = loader()
    second.load_state_dict(state)
    it = iter(second)
    tail = [keys(next(it)) for _ in range(130 - 57)]
    assert head + tail == reference
    assert state["positions"]  # (epoch, unit, offset) per worker
    assert any(p[0] >= 1 for p in second.state_dict()["positions"].values())  # crossed an epoch


def test_length_bucketing_cuts_padding(corpus):
    def ratio(bucket: bool) -> float:
        cfg = StreamConfig(seed=0, batch_size=32, buffer_rows=4000, bucket=bucket, epochs=1)
        stream = ShardStream(corpus.mlm, columns=("input_ids",), cfg=cfg)
        masks = [pad_sequences([np.ones(len(r["input_ids"])) for r in b], 0) for b in ShardLoader(stream)]
        return 1 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    bucketed, plain = ratio(True), ratio(False)
    assert bucketed < 0.5 * plain, (bucketed, plain)
    assert padding_ratio(torch.tensor([[1, 1, 0, 0]])) == 0.5


# ---------------------------------------------------------------------------------------------------
# Batches and the MLM head


def test_collators_frame_truncate_and_mask_reproducibly():
    sp = SpecialIds()
    mlm = PretrainCollator("mlm", max_len=8, vocab_size=300)
    rows = [{"input_ids": np.arange(10, 30, dtype=np.int32)}, {"input_ids": np.array([7, 8], dtype=np.int32)}]
    a, b = mlm(rows, seed=5), mlm(rows, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape == (2, 8)
    assert a["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    original = torch.where(a["labels"] != IGNORE_INDEX, a["labels"], a["input_ids"])
    assert original[0].tolist() == [sp.cls, *range(10, 16), sp.sep]
    assert original[1, :4].tolist() == [sp.cls, 7, 8, sp.sep]
    assert (a["labels"][:, 0] == IGNORE_INDEX).all() and (a["labels"] != IGNORE_INDEX).sum(1).min() >= 1

    tlm = PretrainCollator("tlm", max_len=9, vocab_size=300)
    ex = make_tlm_example(list(range(10, 20)), list(range(40, 46)), sp.cls, sp.sep, max_len=64)
    row = {
        "input_ids": ex.input_ids.numpy().astype(np.int32),
        "token_type_ids": ex.token_type_ids.numpy().astype(np.int8),
        "position_ids": ex.position_ids.numpy().astype(np.int16),
    }
    batch = tlm([row], seed=0)
    want = make_tlm_example(list(range(10, 20)), list(range(40, 46)), sp.cls, sp.sep, max_len=9)
    original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    assert original[0].tolist() == want.input_ids.tolist()
    assert batch["token_type_ids"][0].tolist() == want.token_type_ids.tolist()
    assert batch["position_ids"][0].tolist() == want.position_ids.tolist()


def test_mlm_head_is_tied_and_its_loss_is_the_masked_cross_entropy():
    torch.manual_seed(0)
    model = LabseForPretraining(LabseEncoder(tiny(vocab_size=300))).eval()
    assert model.head.word_embeddings.weight is model.encoder.bert.embeddings.word_embeddings.weight
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("head.word_embeddings") for n in names)  # one tensor, listed once
    batch = PretrainCollator("mlm", max_len=16, vocab_size=300)(
        [{"input_ids": np.arange(5, 5 + n, dtype=np.int32)} for n in (14, 9, 3)], seed=1
    )
    out = model(**batch)
    logits = model.predict(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["position_ids"]
    )
    assert torch.allclose(out.loss, mlm_loss(logits, batch["labels"]), atol=1e-5)
    assert out.accuracy == pytest.approx(mlm_accuracy(logits, batch["labels"]))
    assert int(out.num_targets) == int((batch["labels"] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------------------------------------------
# Config and schedule


def test_config_presets_schedule_and_json_round_trip():
    for cfg in (tiny_cpu(), base_gpu()):
        assert PretrainConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert all(f.description for f in PretrainConfig.model_fields.values())  # a docstring per field
    with pytest.raises(ValueError, match="stacking_steps"):
        tiny_cpu(stacking_steps=(5, 3))
    with pytest.raises(ValueError):
        tiny_cpu(tlm_ratio=1.5)
    cfg = tiny_cpu(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    cos = cfg.model_copy(update={"decay": "cosine"})
    assert lr_at(60, cos) == pytest.approx(0.55) and lr_at(35, cos) > lr_at(35, cfg)


# ---------------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_tiny_preset_learns_on_real_shards_and_logs_to_mlflow(corpus, layout):
    import mlflow

    cfg = _cfg(corpus, mlflow=True, log_every=25, checkpoint_every=1000)  # 400 steps of 64 sentences
    result = run(cfg, layout)
    assert result.step == 400 and result.stopped_by == "max_steps"
    start, end = np.mean(result.losses[:5]), np.mean(result.losses[-25:])
    assert end < 0.7 * start, (start, end)
    assert set(result.sources) == {"mlm", "tlm"}
    assert 0 < result.padding_ratio < 0.35
    # Rank 0 logged to the layout's MLflow store.
    client = mlflow.tracking.MlflowClient(layout.mlflow_tracking_uri)
    history = client.get_metric_history(result.mlflow_run_id, "loss")
    assert [m.step for m in history] == list(range(25, 401, 25))
    assert {"mlm_accuracy", "tokens_per_s", "lr"} <= set(client.get_run(result.mlflow_run_id).data.metrics)
    # The final encoder warm-starts the fine-tuning stage offline, pooler included.
    enc = LabseEncoder.from_pretrained_bert(result.final_dir)
    model = build_model(cfg.model_copy(update={"init_from": str(result.final_dir)}))
    trained = load_file(result.final_dir / "model.safetensors")
    assert torch.equal(enc.pooler_dense.weight, trained["pooler.dense.weight"])
    assert torch.equal(model.head.bias, torch.load(result.final_dir / "mlm_head.pt")["bias"])
    assert (result.checkpoint / "model.pt").is_file() and result.checkpoint.name == "step-400"


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path):
    # Dropout on: the RNG states in the checkpoint must be restored for this to hold.
    cfg = _cfg(corpus, max_steps=12, checkpoint_every=4, batch_size=16, warmup_steps=3, dropout=0.1)
    straight = run(cfg, Layout(tmp_path / "a"))
    home = Layout(tmp_path / "b")
    first = run(cfg.model_copy(update={"stop_at_step": 6}), home)
    assert first.stopped_by == "stop_at_step" and first.checkpoint.name == "step-6"
    second = run(cfg, home)  # a new trainer object; resumes from step-6
    assert second.start_step == 6
    assert first.sources + second.sources == straight.sources
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
    a = load_file(straight.final_dir / "model.safetensors")
    b = load_file(second.final_dir / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in (tmp_path / "b/checkpoints/pretrain/tiny-cpu").glob("step-*")) == [
        "step-12",
        "step-6",
        "step-8",
    ]  # keep_checkpoints=3: step-4 was pruned


def test_time_budget_stops_cleanly_with_a_checkpoint_and_the_final_encoder(corpus, tmp_path):
    cfg = _cfg(corpus, max_steps=100_000, time_budget_s=3.0, batch_size=8, checkpoint_every=10**6)
    result = run(cfg, Layout(tmp_path))
    assert result.stopped_by == "time_budget" and 0 < result.step < 100_000
    assert result.checkpoint.name == f"step-{result.step}" and (result.checkpoint / "optimizer.pt").is_file()
    assert (result.final_dir / "model.safetensors").is_file() and (
        result.final_dir / "labse_pooler.pt"
    ).is_file()



@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    """torchrun, 2 gloo ranks x 1 micro-batch == 1 process x 2 accumulated micro-batches: the same data
    shards, the loss normalised by the global target count, so the same loss and parameters."""
    cfg = _cfg(corpus, max_steps=4, batch_size=8, dropout=0.0, warmup_steps=1, checkpoint_every=1000, lr=3e-3)
    ddp = torchrun_two_ranks("labse_core.pretrain.train", cfg, tmp_path)

    single = run(cfg.model_copy(update={"grad_accum": 2}), Layout(tmp_path / "single"))
    np.testing.assert_allclose(ddp["losses"], single.losses, rtol=0, atol=1e-5)
    a = load_file(Path(ddp["final_dir"]) / "model.safetensors")
    b = load_file(single.final_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    # The parameters moved: the comparison is not between two untouched initialisations.
    init = build_model(cfg).encoder.bert.state_dict()
    assert not torch.allclose(
        init["embeddings.word_embeddings.weight"], a["embeddings.word_embeddings.weight"]
    )


def test_progressive_stacking_copies_layers_upward():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32)
    model = LabseForPretraining(LabseEncoder(cfg))
    assert [stage_layers(4, s) for s in range(3)] == [1, 2, 4] and [
        stage_layers(12, s) for s in range(3)
    ] == [3, 6, 12]
    shrink_layers(model, 1)
    assert grow_layers(model, 2) == [0, 0]
    layers = model.encoder.bert.encoder.layer
    with torch.no_grad():
        layers[1].output.dense.weight.add_(1.0)  # make the two layers differ
    before = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in layers]
    assert grow_layers(model, 4) == [0, 1, 0, 1]
    layers = model.encoder.bert.encoder.layer
    for i in range(4):
        for k, v in layers[i].state_dict().items():
            assert torch.equal(v, before[i % 2][k]), (i, k)
    assert layers[2].output.dense.weight is not layers[0].output.dense.weight  # copies, not shared
    assert model.encoder.cfg.num_layers == 4 and model.encoder.bert.config.num_hidden_layers == 4
    batch = PretrainCollator("mlm", max_len=8, vocab_size=50)(
        [{"input_ids": np.arange(5, 11, dtype=np.int32)}], seed=0
    )
    assert torch.isfinite(model(**batch).loss)


def test_progressive_stacking_in_the_loop(corpus, tmp_path):
    cfg = _cfg(
        corpus, encoder_preset="small", max_steps=6, stacking_steps=(2, 4), batch_size=4, warmup_steps=1
    )
    result = run(cfg, Layout(tmp_path))
    assert result.layers == [1, 1, 2, 2, 4, 4]
    assert all(np.isfinite(result.losses))
    enc = LabseEncoder.from_pretrained_bert(result.final_dir)
    assert enc.cfg.num_layers == 4
    # Growing carries AdamW's moments over to the copies: new layer i starts from layer i mod L's.
    trainer = Pretrainer(cfg, DistEnv(), torch.device("cpu"))
    assert trainer.num_layers == 1
    collate = PretrainCollator("mlm", max_len=16, vocab_size=corpus.vocab_size)
    trainer.train_step([collate([{"input_ids": np.arange(5, 15, dtype=np.int32)}] * 2, seed=0)])
    trainer.step = 4  # stage 2: straight from 1 to 4 layers
    assert trainer.maybe_grow() and trainer.num_layers == 4
    layers = trainer.model.encoder.bert.encoder.layer
    src, new = layers[0].intermediate.dense.weight, layers[3].intermediate.dense.weight
    assert torch.equal(src, new) and src is not new
    assert torch.equal(trainer.optimizer.state[new]["exp_avg"], trainer.optimizer.state[src]["exp_avg"])
    assert trainer.optimizer.state[new]["exp_avg"].abs().sum() > 0


def test_warm_start_from_a_saved_bert_directory(corpus, tmp_path):
    from transformers import BertModel

    torch.manual_seed(7)
    bert_cfg = to_bert_config(tiny(vocab_size=corpus.vocab_size))
    BertModel(bert_cfg, add_pooling_layer=True).save_pretrained(tmp_path / "bert")
    saved = load_file(tmp_path / "bert/model.safetensors")
    cfg = _cfg(corpus, init_from=str(tmp_path / "bert"), max_steps=3, warmup_steps=1, batch_size=8)
    model = build_model(cfg)
    assert torch.equal(
        model.encoder.bert.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"]
    )
    assert torch.equal(model.encoder.pooler_dense.weight, saved["pooler.dense.weight"])
    result = run(cfg, Layout(tmp_path / "home"))
    assert result.step == 3 and all(np.isfinite(result.losses))
    after = load_file(result.final_dir / "model.safetensors")
    assert torch.equal(after["pooler.dense.weight"], saved["pooler.dense.weight"])  # frozen in pretraining
    assert not torch.equal(
        after["embeddings.word_embeddings.weight"], saved["embeddings.word_embeddings.weight"]
    )
