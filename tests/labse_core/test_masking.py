"""BERT masking statistics and TLM packing."""

from __future__ import annotations

import pytest
import torch

from labse_core.data.masking import (
    IGNORE_INDEX,
    MaskingConfig,
    make_tlm_example,
    mask_tokens,
    truncate_pair,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, CLS, SEP)
VOCAB = 1000


def _batch(n=400, t=64, seed=0):
    """Sentences `[CLS] w... [SEP] [PAD]...` of random lengths; words drawn from [5, VOCAB)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, t + 1, (n,), generator=g)  # including [CLS] and [SEP]
    ids = torch.randint(5, VOCAB, (n, t), generator=g)
    pos = torch.arange(t)[None, :]
    ids[:, 0] = CLS
    ids = torch.where(pos == (lengths[:, None] - 1), torch.full_like(ids, SEP), ids)
    ids = torch.where(pos >= lengths[:, None], torch.full_like(ids, PAD), ids)
    return ids, (ids != PAD).long()


def _mask(ids, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, generator=g, **kw)


def test_rates_are_15_percent_and_80_10_10():
    ids, _ = _batch(n=500, t=128)
    out, labels = _mask(ids)
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))

    # Exactly max(1, round(0.15 n)) per sentence, so about 15% overall.
    expected = torch.clamp(torch.round(maskable.sum(1) * 0.15), min=1)
    assert torch.equal(chosen.sum(1), expected.long())
    assert abs(chosen.sum().item() / maskable.sum().item() - 0.15) < 0.01

    n = chosen.sum().item()
    assert n > 3000  # enough for the tolerances below (std of a 10% rate ~ 0.005)
    as_mask = (out == MASK) & chosen
    unchanged = (out == ids) & chosen
    as_random = chosen & ~as_mask & ~unchanged
    assert abs(as_mask.sum().item() / n - 0.8) < 0.025
    assert abs(as_random.sum().item() / n - 0.1) < 0.02
    assert abs(unchanged.sum().item() / n - 0.1) < 0.02


def test_specials_never_masked_and_labels_correct():
    ids, _ = _batch(seed=1)
    out, labels = _mask(ids, seed=1)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any()
    assert torch.equal(out[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids
    assert torch.equal(out[~chosen], ids[~chosen])  # nothing else changes
    # a random replacement is never a special token nor [MASK] itself by accident
    replaced = chosen & (out != ids) & (out != MASK)
    assert replaced.any()
    assert not torch.isin(out[replaced], torch.tensor([*SPECIALS, MASK])).any()
    assert ((out >= 0) & (out < VOCAB)).all()


def test_random_replacement_covers_exactly_the_non_special_ids():
    # Drawn through the "skip over each special" bijection: every allowed id reachable, no special.
    ids = torch.full((200, 200), 500)
    specials = (0, 7, 8, 499, 999)
    g = torch.Generator().manual_seed(0)
    cfg = MaskingConfig(mlm_probability=1.0, mask_token_prob=0.0, random_token_prob=1.0)
    out, _ = mask_tokens(ids, mask_token_id=5, vocab_size=VOCAB, special_ids=specials, generator=g, cfg=cfg)
    seen = set(out.unique().tolist())
    assert seen == set(range(VOCAB)) - set(specials) - {5}


def test_attention_mask_excludes_positions():
    ids = torch.randint(5, VOCAB, (50, 20))  # no specials at all
    attention_mask = torch.ones_like(ids)
    attention_mask[:, 10:] = 0
    _, labels = _mask(ids, attention_mask=attention_mask)
    assert (labels[:, 10:] == IGNORE_INDEX).all()
    assert (labels[:, :10] != IGNORE_INDEX).any()


def test_reproducible_from_generator_and_input_untouched():
    ids, _ = _batch(n=20, seed=2)
    before = ids.clone()
    a = _mask(ids, seed=7)
    b = _mask(ids, seed=7)
    c = _mask(ids, seed=8)
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_every_sentence_gets_a_target_even_when_short():
    ids = torch.tensor([[CLS, 10, SEP, PAD], [CLS, 11, 12, SEP]])
    _, labels = _mask(ids)
    assert ((labels != IGNORE_INDEX).sum(1) == 1).all()


def test_tlm_layout():
    ex = make_tlm_example([10, 11, 12], [20, 21], cls_id=CLS, sep_id=SEP, max_len=32)
    assert ex.input_ids.tolist() == [CLS, 10, 11, 12, SEP, 20, 21, SEP]
    assert ex.token_type_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    # positions restart for the target: the k-th word of each sentence sits at position k
    assert ex.position_ids.tolist() == [0, 1, 2, 3, 4, 1, 2, 3]
    assert ex.input_ids.dtype == torch.long


def test_tlm_truncation_is_fair():
    ex = make_tlm_example(list(range(100, 120)), [20, 21, 22, 23], cls_id=CLS, sep_id=SEP, max_len=13)
    # budget 10: the short target keeps all 4, the source takes the remaining 6 (its head)
    assert ex.input_ids.tolist() == [CLS, 100, 101, 102, 103, 104, 105, SEP, 20, 21, 22, 23, SEP]
    ex = make_tlm_example(list(range(100, 120)), list(range(200, 220)), cls_id=CLS, sep_id=SEP, max_len=13)
    assert ex.input_ids.tolist() == [CLS, 100, 101, 102, 103, 104, SEP, 200, 201, 202, 203, 204, SEP]
    assert ex.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]

    for n in range(0, 30, 3):
        for m in range(0, 30, 4):
            for budget in (2, 7, 10, 25):
                a, b = truncate_pair(n, m, budget)
                assert a <= n and b <= m
                assert a + b == min(n + m, budget)  # no wasted room
                assert a >= min(n, budget // 2) and b >= min(m, budget // 2)  # nobody starved

    with pytest.raises(ValueError, match="max_len"):
        make_tlm_example([1], [2], cls_id=CLS, sep_id=SEP, max_len=4)
