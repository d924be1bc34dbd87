"""LabseEncoder: preset geometry, pooling, padding invariance, warm start from a BERT checkpoint."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from labse_core.model.encoder import (
    PRESETS,
    EncoderConfig,
    LabseEncoder,
    base,
    count_parameters,
    embedding_params,
    flops_per_token,
    from_bert_config,
    non_embedding_params,
    preset,
    small,
    tiny,
    to_bert_config,
)

VOCAB = 101


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LabseEncoder(tiny(vocab_size=VOCAB)).eval()


def test_preset_geometry():
    b = base()
    assert (b.num_layers, b.hidden_size, b.num_heads, b.intermediate_size) == (12, 768, 12, 3072)
    assert b.vocab_size == 501_153 and b.max_position_embeddings == 512
    t = tiny(vocab_size=VOCAB)
    assert (t.num_layers, t.hidden_size, t.num_heads, t.intermediate_size, t.max_position_embeddings) == (
        2,
        128,
        2,
        512,
        128,
    )
    s = small(vocab_size=VOCAB)
    assert (s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size) == (4, 256, 4, 1024)
    assert set(PRESETS) == {"tiny", "small", "base"}
    assert preset("base", vocab_size=VOCAB) == base(vocab_size=VOCAB)
    assert preset("tiny", vocab_size=VOCAB, hidden_dropout_prob=0.0).hidden_dropout_prob == 0.0


def test_unknown_preset_raises_listing_known():
    with pytest.raises(ValueError, match="unknown encoder preset 'huge'.*base, small, tiny"):
        preset("huge", vocab_size=VOCAB)


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(hidden_size=100, num_heads=12)


def test_bert_config_round_trip():
    for cfg in (tiny(vocab_size=VOCAB), base()):
        assert from_bert_config(to_bert_config(cfg)) == cfg


def test_parameter_count_matches_module_and_bert_base():
    # Known number: BERT-base with its 30,522 wordpiece vocabulary and pooler has 109,482,240 parameters.
    bert_base = base(vocab_size=30_522)
    assert embedding_params(bert_base) + non_embedding_params(bert_base) == 109_482_240
    cfg = tiny(vocab_size=VOCAB)
    assert count_parameters(LabseEncoder(cfg)) == embedding_params(cfg) + non_embedding_params(cfg)


def test_flops_per_token_terms():
    cfg = base()
    n_layers = non_embedding_params(cfg) - (768 * 768 + 768)  # minus the pooler: once per sentence
    assert flops_per_token(cfg, 0) == 6 * n_layers
    # attention term: 12 L d per token per unit of sequence length
    assert flops_per_token(cfg, 128) - flops_per_token(cfg, 64) == 12 * 12 * 768 * 64


def test_output_is_unit_norm_and_equals_cls_dense_tanh(model):
    ids = torch.randint(5, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        emb = model(ids, mask)
        h = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (3, 7, 128)
        expected = F.normalize(
            torch.tanh(h[:, 0] @ model.pooler_dense.weight.T + model.pooler_dense.bias), dim=-1
        )
    assert emb.shape == (3, 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(emb, expected)
    assert model.bert.pooler is None  # the only pooler is pooler_dense


def test_padding_does_not_change_an_embedding(model):
    sentence = torch.tensor([[2, 17, 33, 45, 8, 3]])  # (1, 6)
    longer = torch.tensor([[2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3]])  # (1, 11)
    batch = torch.zeros(2, 11, dtype=torch.long)
    batch[0, :6], batch[1] = sentence[0], longer[0]
    mask = (batch != 0).long()
    with torch.no_grad():
        alone = model(sentence, torch.ones_like(sentence))  # (1, D)
        padded = model(batch, mask)  # (2, D)
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(padded[0], padded[1])


def test_from_bert_takes_over_the_pooler():
    bert = BertModel(to_bert_config(tiny(vocab_size=VOCAB)), add_pooling_layer=True)
    dense = bert.pooler.dense
    enc = LabseEncoder.from_bert(bert)
    assert enc.pooler_dense is dense and enc.bert.pooler is None
    assert enc.cfg == tiny(vocab_size=VOCAB)
    with pytest.raises(ValueError, match="exactly one"):
        LabseEncoder()


@pytest.mark.parametrize("with_pooler", [True, False])
def test_from_pretrained_bert_warm_start(tmp_path, with_pooler):
    torch.manual_seed(0)
    bert = BertModel(to_bert_config(tiny(vocab_size=VOCAB)), add_pooling_layer=with_pooler)
    bert.save_pretrained(tmp_path)

    enc = LabseEncoder.from_pretrained_bert(tmp_path).eval()
    loaded = enc.bert.state_dict()
    for name, w in bert.state_dict().items():
        if name.startswith("pooler."):
            continue
        torch.testing.assert_close(loaded[name], w, rtol=0, atol=0, msg=name)
    if with_pooler:
        torch.testing.assert_close(enc.pooler_dense.weight, bert.pooler.dense.weight, rtol=0, atol=0)
    else:
        # freshly initialised, not left at zero or garbage
        assert 0.01 < enc.pooler_dense.weight.std().item() < 0.03
    ids = torch.randint(5, VOCAB, (2, 5))
    with torch.no_grad():
        emb = enc(ids, torch.ones_like(ids))
    assert torch.isfinite(emb).all() and emb.shape == (2, 128)
