"""fast_embed (CLS-only last layer) against the reference LabseEncoder.forward (transformers BertModel).

Random tiny and small encoders on random padded batches, the shortest possible sentences and
unpadded batches, float64 (exact up to rounding), bf16 autocast, CUDA when present, the fallbacks,
and encode() on German gettext strings against one-sentence-at-a-time reference encoding.
The comparisons can fail: with a large init and random biases and LayerNorm parameters, pooling
another row than [CLS] or using another activation misses the tolerance by far (asserted below).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labse_core.embed import encode
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.model.inference import fast_embed, fast_path_unsupported
from tests.conftest import named_catalogs

# The tokenizer (sentencepiece on this machine's gettext catalogs) and the tiny encoder over it, as
# test_export builds them.
from tests.labse_core.test_export import (  # noqa: F401  (pytest fixtures)
    MAX_LEN,
    corpus,
    encoder,
    one_torch_thread,
    tokenizer,
    tokenizer_dir,
)

ATOL = 1e-5
VOCAB = 1000
CLS, PAD = 2, 0


def _encoder(name: str, init: float, **overrides) -> LabseEncoder:
    # A large init spreads the embeddings and drives tanh and GELU into their nonlinear range, so a
    # wrong row or a missing op shows (BERT's 0.02 makes all [CLS] states nearly alike).
    torch.manual_seed(0)
    enc = LabseEncoder(preset(name, vocab_size=VOCAB, initializer_range=init, **overrides)).eval()
    with torch.no_grad():
        for p in enc.parameters():
            if p.dim() == 1:  # biases (init 0) and LayerNorm scales (1) and shifts (0), as after training
                p.add_(torch.randn_like(p), alpha=init)
    return enc


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random sentences, [CLS] first: input_ids, attention_mask, both (B, max(lengths))."""
    gen = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), t), generator=gen)  # (B, T)
    ids[:, 0] = CLS
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    return ids.masked_fill(mask == 0, PAD), mask


def _random_lengths(batch_size: int, t: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (batch_size,), generator=gen).tolist()
    lengths[0] = t
    return lengths


def _embed_row(enc: LabseEncoder, ids: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    """The reference pipeline pooling token ``row`` of the last layer instead of [CLS]: (B, D)."""
    h = enc.token_states(ids, mask)[:, row]  # (B, D)
    return F.normalize(torch.tanh(enc.pooler_dense(h)), dim=-1)


def _compare(enc: LabseEncoder, ids: torch.Tensor, mask: torch.Tensor, atol: float = ATOL) -> torch.Tensor:
    with torch.inference_mode():
        ref = enc(ids, mask)  # (B, D)
        got = fast_embed(enc, ids, mask)  # (B, D)
    assert got.shape == ref.shape == (ids.shape[0], enc.cfg.hidden_size)
    assert got.dtype == ref.dtype
    diff = (got - ref).abs().max().item()
    assert diff <= atol, f"max |fast - reference| = {diff:.2e}"
    torch.testing.assert_close(got.norm(dim=-1), torch.ones_like(got[:, 0]), atol=1e-5, rtol=0)
    return got


# ---------------------------------------------------------------------------------------------------
# Random encoders


@pytest.mark.parametrize(("name", "init"), [("tiny", 0.2), ("small", 0.1)])
def test_matches_reference_on_random_padded_batches(name, init):
    enc = _encoder(name, init)
    for seed, (batch_size, t) in enumerate([(1, 9), (7, 33), (32, 64), (16, 128)]):
        ids, mask = _batch(_random_lengths(batch_size, t, seed), seed)
        got = _compare(enc, ids, mask)
    # The comparison can fail: pooling the second token instead of [CLS] (the last layer's rows
    # mixed up) is off by far more than ATOL. (ids, mask: the last batch, 16 sentences <= 128 tokens.)
    with torch.inference_mode():
        assert (_embed_row(enc, ids, mask, 1) - got).abs().max() > 100 * ATOL


def _mean_reference(enc: LabseEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling written as a loop over sentences over transformers' own last_hidden_state."""
    h = enc.token_states(ids, mask)  # (B, T, D)
    rows = [h[i, : int(mask[i].sum())].mean(dim=0) for i in range(ids.shape[0])]
    return F.normalize(torch.stack(rows), dim=-1)  # (B, D)


@pytest.mark.parametrize(("name", "init"), [("tiny", 0.2), ("small", 0.1)])
def test_mean_pooling_fast_path_is_exact(name, init):
    """Mean pooling (e5) reads every row of the last layer: the fast path must run it in full."""
    enc = _encoder(name, init, pooling="mean", pad_token_id=1)
    assert enc.pooler_dense is None
    for seed, (batch_size, t) in enumerate([(1, 9), (7, 33), (16, 96)]):
        ids, mask = _batch(_random_lengths(batch_size, t, seed), seed)
        got = _compare(enc, ids, mask)
        with torch.inference_mode():
            torch.testing.assert_close(got, _mean_reference(enc, ids, mask), atol=ATOL, rtol=0)
    # can fail: the [CLS] row alone, or a mean that counts padding, is far off
    with torch.inference_mode():
        h = enc.token_states(ids, mask)
        assert (F.normalize(h[:, 0], dim=-1) - got).abs().max() > 100 * ATOL
        assert (F.normalize(h.mean(dim=1), dim=-1) - got).abs().max() > 100 * ATOL


def test_shortest_sentences_and_unpadded_batches():
    enc = _encoder("tiny", 0.2)
    _compare(enc, *_batch([1]))  # [CLS] alone: attention over one key
    _compare(enc, *_batch([1, 2, 1, 2, 2]))  # [CLS], [CLS] [SEP]
    _compare(enc, *_batch([1, 2, 17, 1, 40], seed=1))
    ids, mask = _batch([24] * 8, seed=2)  # no padding at all
    assert bool(mask.all())
    _compare(enc, ids, mask)


def test_exact_up_to_rounding_in_float64():
    # In float64 the rounding of the reassociated sums is ~1e-16: what is left is the math.
    enc = _encoder("small", 0.2).double()
    ids, mask = _batch(_random_lengths(12, 96, seed=3), seed=3)
    _compare(enc, ids, mask, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "gelu_new", "silu"])
def test_uses_the_models_activation(act):
    enc = _encoder("tiny", 0.2, hidden_act=act)
    ids, mask = _batch(_random_lengths(9, 30, seed=4), seed=4)
    got = _compare(enc, ids, mask)
    gelu = _encoder("tiny", 0.2)  # same weights (same seed), exact GELU
    with torch.inference_mode():
        assert (gelu(ids, mask) - got).abs().max() > 10 * ATOL  # the activation matters here


def test_bf16_autocast_close_to_reference():
    enc = _encoder("tiny", 0.2)
    ids, mask = _batch(_random_lengths(16, 48, seed=5), seed=5)
    with torch.inference_mode():
        exact = enc(ids, mask)  # (B, D) float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = enc(ids, mask)
            got = fast_embed(enc, ids, mask)
    assert got.dtype == ref.dtype == torch.bfloat16
    ref_err = (ref.float() - exact).abs().max().item()
    got_err = (got.float() - exact).abs().max().item()
    assert got_err <= 2 * ref_err + 1e-3, (got_err, ref_err)  # bf16 rounding, no worse than the reference's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fp32_and_bf16_autocast():
    enc = _encoder("small", 0.1).cuda()
    ids, mask = _batch(_random_lengths(32, 64, seed=6), seed=6)
    ids, mask = ids.cuda(), mask.cuda()
    _compare(enc, ids, mask, atol=1e-4)  # GPU kernels reduce in a different order than CPU ones
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref, got = enc(ids, mask), fast_embed(enc, ids, mask)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref.float()).abs().max() < 5e-2


# ---------------------------------------------------------------------------------------------------
# Fallbacks: the reference itself


def test_train_mode_falls_back_to_the_reference_exactly():
    enc = _encoder("tiny", 0.2).train()
    ids, mask = _batch(_random_lengths(8, 20, seed=7), seed=7)
    with torch.no_grad():
        assert fast_path_unsupported(enc) == "train mode (dropout)"
        torch.manual_seed(1)
        got = fast_embed(enc, ids, mask)
        torch.manual_seed(1)
        ref = enc(ids, mask)
        assert torch.equal(got, ref)  # same dropout masks: the same forward ran
        assert (got - enc.eval()(ids, mask)).abs().max() > 1e-3  # dropout was on


def test_autograd_falls_back_to_the_reference_exactly():
    enc = _encoder("tiny", 0.2)
    ids, mask = _batch(_random_lengths(8, 20, seed=8), seed=8)
    assert fast_path_unsupported(enc) == "autograd is recording"
    got = fast_embed(enc, ids, mask)
    assert got.requires_grad and torch.equal(got, enc(ids, mask))
    got.sum().backward()
    assert enc.bert.encoder.layer[-1].attention.self.key.weight.grad is not None


def test_unsupported_config_falls_back(monkeypatch):
    enc = _encoder("tiny", 0.2)
    monkeypatch.setattr(enc.bert.config, "position_embedding_type", "relative_key", raising=False)
    ids, mask = _batch(_random_lengths(4, 12, seed=9), seed=9)
    with torch.inference_mode():
        assert "relative_key" in fast_path_unsupported(enc)
        assert torch.equal(fast_embed(enc, ids, mask), enc(ids, mask))


# ---------------------------------------------------------------------------------------------------
# encode() on real text


@pytest.fixture(scope="module")
def german(real_catalogs: Path) -> list[str]:
    """~200 German translations from this machine's gettext catalogs (BASE_DOMAINS), short to past MAX_LEN tokens."""
    texts: set[str] = set()
    for path in named_catalogs("de"):
        texts.update(row.tgt_text for row in catalog_pairs(read_mo(path)))
    by_length = sorted(texts, key=lambda t: (len(t), t))
    return by_length[:: max(1, len(by_length) // 190)][:190] + by_length[-10:]


def test_encode_equals_one_sentence_at_a_time_reference(german, encoder, tokenizer, monkeypatch):  # noqa: F811
    token_ids = tokenizer(german, truncation=True, max_length=MAX_LEN)["input_ids"]
    lengths = sorted(len(x) for x in token_ids)
    assert lengths[0] <= 3 and lengths[-1] == MAX_LEN  # from a word or two to truncated paragraphs
    with torch.inference_mode():
        ref = np.stack(
            [
                encoder(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))[0].numpy()
                for x in token_ids
            ]
        )  # (N, D): no padding, no batching, transformers' forward

    def reference_forward(*args, **kwargs):
        raise AssertionError("encode() ran the reference forward, not the fast path")

    monkeypatch.setattr(encoder, "forward", reference_forward)
    got = encode(german, (encoder, tokenizer), batch_size=16, max_length=MAX_LEN, progress=False)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # The comparison can fail: the embeddings of different sentences are far apart.
    cos = ref @ ref.T
    assert cos[~np.eye(len(ref), dtype=bool)].mean() < 0.8
