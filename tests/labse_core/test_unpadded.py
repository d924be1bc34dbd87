"""The unpadded BERT forward (labse_core.model.unpadded) against transformers' BertModel: the same
real-token states and the same parameter gradients on a padded batch, and the pretraining model's
loss equal to the plain padded computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labse_core.data.masking import IGNORE_INDEX
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.model.unpadded import unpadded_token_states
from labse_core.pretrain.model import LabseForPretraining


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 3, 7, 12, 5])  # one full row, the others padded
    B, T = len(lengths), int(lengths.max())
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(5, vocab, (B, T), generator=g) * mask
    types = (torch.arange(T)[None, :] >= (lengths[:, None] // 2)).long() * mask
    labels = torch.where(
        (torch.rand(B, T, generator=g) < 0.3) & mask.bool(),
        torch.randint(5, vocab, (B, T), generator=g),
        IGNORE_INDEX,
    )
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def test_states_and_gradients_match_bert_model():
    torch.manual_seed(0)
    enc = LabseEncoder(
        preset("tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    bert = enc.bert.train()
    b = _batch(300)
    ref = bert(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]
    )
    ref = ref.last_hidden_state.reshape(-1, enc.cfg.hidden_size)[b["attention_mask"].reshape(-1).bool()]
    got, keep = unpadded_token_states(bert, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert keep.tolist() == b["attention_mask"].reshape(-1).nonzero().squeeze(1).tolist()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

    w = torch.randn_like(ref)
    grads = []
    for states in (ref, got):
        bert.zero_grad()
        (states * w).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in bert.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_pretraining_loss_equals_padded_reference():
    torch.manual_seed(0)
    model = LabseForPretraining(
        LabseEncoder(
            preset("tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        )
    )
    b = _batch(300, seed=1)
    out = model(**b)
    h = model.encoder.token_states(b["input_ids"], b["attention_mask"], b["token_type_ids"])  # (B, T, D)
    logits = model.head(h)  # (B, T, V) every position, as BertForMaskedLM
    want = F.cross_entropy(
        logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    torch.testing.assert_close(out.loss_sum, want, rtol=1e-5, atol=1e-5)
    assert int(out.num_targets) == int((b["labels"] != IGNORE_INDEX).sum())


def test_selected_rows_match_full_last_layer():
    torch.manual_seed(0)
    enc = LabseEncoder(
        preset("tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    b = _batch(300, seed=2)
    full, keep = unpadded_token_states(enc.bert, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    rows = torch.tensor([0, 4, 5, 11, len(keep) - 1])
    part, at = unpadded_token_states(
        enc.bert, b["input_ids"], b["attention_mask"], b["token_type_ids"], select=lambda k: rows
    )
    torch.testing.assert_close(part, full[rows], rtol=1e-5, atol=1e-5)
    assert at.tolist() == keep[rows].tolist()
    # No rows selected (a batch without targets): empty states, no error.
    none, at = unpadded_token_states(
        enc.bert, b["input_ids"], b["attention_mask"], select=lambda k: k.new_zeros(0)
    )
    assert none.shape == (0, enc.cfg.hidden_size) and at.numel() == 0


def test_training_forward_equals_padded_forward():
    """LabseEncoder in training mode (unpadded, last layer for the pooled rows only) computes the same
    embeddings and gradients as its padded eval-mode forward, for [CLS] and mean pooling."""
    b = _batch(300, seed=3)
    for pooling in ("cls", "mean"):
        torch.manual_seed(0)
        cfg = preset(
            "tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooling=pooling
        )
        enc = LabseEncoder(cfg)
        w = torch.randn(b["input_ids"].shape[0], cfg.hidden_size)
        out, grads = {}, {}
        for mode in (True, False):
            enc.train(mode)
            enc.zero_grad()
            out[mode] = enc(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            (out[mode] * w).sum().backward()
            grads[mode] = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-6, msg=pooling)
        assert grads[True].keys() == grads[False].keys()
        for name in grads[False]:
            torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


def test_length_groups_and_folded_last_layer_match_bert_model():
    """Attention in length groups (any number of them, a sentence without tokens among the rows) and
    the last layer folded through the key/value weights for selected rows (several per sentence, as
    an MLM head's) give BertModel's states and parameter gradients."""
    torch.manual_seed(0)
    enc = LabseEncoder(
        preset("tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    bert = enc.bert.train()
    lengths = torch.tensor([7, 1, 19, 0, 3, 12, 20, 5, 9, 2, 16, 4])
    T = int(lengths.max())
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(5, 300, mask.shape, generator=torch.Generator().manual_seed(4)) * mask
    real = mask.reshape(-1).bool()
    ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state.reshape(-1, enc.cfg.hidden_size)[real]
    rows = torch.tensor([0, 3, 7, 8, 9, 30, 31, 50, int(real.sum()) - 1])  # into the real tokens
    w = torch.randn(len(rows), enc.cfg.hidden_size)

    def grads(states: torch.Tensor) -> dict[str, torch.Tensor]:
        bert.zero_grad()
        (states * w).sum().backward()
        return {n: p.grad.clone() for n, p in bert.named_parameters() if p.grad is not None}

    want = grads(ref[rows])
    for groups in (1, 3, 4, 11):
        got, at = unpadded_token_states(bert, ids, mask, select=lambda k: rows, groups=groups)
        torch.testing.assert_close(got, ref.detach()[rows], rtol=1e-5, atol=1e-5, msg=f"groups {groups}")
        assert at.tolist() == real.nonzero().squeeze(1)[rows].tolist()
        full, _ = unpadded_token_states(bert, ids, mask, groups=groups)
        torch.testing.assert_close(full, ref.detach(), rtol=1e-5, atol=1e-5, msg=f"groups {groups}")
        have = grads(got)
        assert have.keys() == want.keys()  # every parameter gets a gradient (the last key bias too)
        for name in want:
            torch.testing.assert_close(have[name], want[name], rtol=1e-4, atol=1e-5, msg=f"{name}, groups {groups}")
