"""BERT's forward over the real tokens only: the same weights and the same function as
`transformers.BertModel`, without computing anything at padding positions.

    keep   = flat indices of the attention mask's ones                      (N,)   N = real tokens
    x      = LayerNorm(E_word[ids] + E_type[types] + E_pos[positions])      (N, D)
    per layer:
      q, k, v = [W_q; W_k; W_v] x   (one matrix multiply)                     (N, 3D)
      gather into length groups -> SDPA with key-padding masks -> back        (N, D)
      h  = LayerNorm(W_o ctx + x)                                            (N, D)
      x  = LayerNorm(W_2 gelu(W_1 h) + h)                                    (N, D)

Why: every matrix multiply, activation and LayerNorm of a BERT layer is per token, so the rows of a
padded (B, T) batch that are padding cost as much as real ones and carry nothing (padding is masked
out of attention as keys, and its own outputs are never read by an MLM head that looks only at the
masked real positions). Only attention mixes tokens; there the real tokens are gathered into a
padded layout, the sentences sorted by length in a few groups each padded to its own longest
(`_Layout`), for `scaled_dot_product_attention` calls with the key-padding mask, the same call (and
mask semantics) as `BertModel`'s "sdpa" attention. The real tokens' states are therefore those of
`BertModel` up to float rounding (tests/labse_core/test_unpadded.py), with (B*T - N) / (B*T) less
per-token work and less attention work than one layout padded to the longest sentence.

A head that reads the last layer at a few rows only (an MLM head's masked positions, ~15% of the
tokens; a [CLS] pooling's one row per sentence) gets them with `select`: the last layer then computes
queries, attention output, both LayerNorms and the feed-forward block for those rows alone, and
folds attention through the key and value weights instead of projecting keys and values for every
token (`_last_layer_rows`); each selected row attends over its own sentence. On a 4-layer encoder
pooling [CLS] that is about a quarter of the encoder's work. Dropout draws differ from `BertModel`'s
(fewer positions), as they would with any other batch layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertModel

ATTENTION_GROUPS = 4
"""Length groups attention runs in (`_Layout`): a few suffice to cut most of the padding; each
costs a few small ops per layer."""


def unpadded_token_states(
    bert: BertModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
    groups: int = ATTENTION_GROUPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer states of the real tokens, (N, D), and their flat indices into (B*T,), row-major.

    input_ids, attention_mask (1 = real token), token_type_ids, position_ids: (B, T). Positions default
    to 0..T-1 and types to 0, as in `BertModel`.

    select: given `keep`, the indices (into the N real tokens, ascending) of the only rows whose
    last-layer states are wanted (an MLM head's masked positions, a pooling's [CLS] rows). The last
    layer then computes queries, attention output, LayerNorms and feed-forward block for those rows
    only, with the attention folded through the key and value weights (no per-token keys or values),
    and the returned states are (M, D) for them (indices into (B*T,) alongside).

    groups: how many length groups attention runs in (`_Layout`); 1 pads every row to the longest.
    """
    B, T = input_ids.shape
    keep = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    emb = bert.embeddings
    if position_ids is None:
        position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    # The order of the sums is BertEmbeddings': (word + type) + position.
    x = emb.word_embeddings(input_ids.reshape(-1)[keep]) + emb.token_type_embeddings(
        token_type_ids.reshape(-1)[keep]
    )
    x = x + emb.position_embeddings(position_ids.reshape(-1)[keep])
    x = emb.dropout(emb.LayerNorm(x))  # (N, D)
    lay = _Layout.of(attention_mask, groups)
    layers = list(bert.encoder.layer)
    rows = None if select is None else select(keep)  # (M,) into the N real tokens
    for i, layer in enumerate(layers):
        if rows is not None and i == len(layers) - 1:
            return _last_layer_rows(layer, x, rows, lay), keep[rows]
        x = _layer(layer, x, lay)
    return x, keep


@dataclass
class _Layout:
    """Where the N real tokens sit for attention: the sentences sorted by length and cut into a few
    groups, each padded to its own longest sentence only.

    Attention costs b T^2 per group of b sentences padded to T, and every gather and copy around it
    b T, so one layout padded to the batch's longest sentence pays for the short sentences as if they
    were long ones (a (2B, T) pair batch is ~60% real tokens on gettext pairs, its attention area
    ~40%). Attention is permutation-equivariant over a sentence's keys and independent across
    sentences, so where a sentence's tokens sit, and next to which other sentences, changes nothing
    but float rounding. A sentence's tokens are the x rows start..start+n-1 (row-major real tokens);
    a padding slot reads the sentence's last real row (masked out as a key, dropped as a query), so
    no zero row is needed and the gradient of a padding slot is exactly zero.
    """

    gather: torch.Tensor
    """(P,) the x row of every padded slot, groups one after another"""
    groups: list[tuple[int, int, int]]
    """(offset into the P slots, sentences b, padded length t) per group"""
    masks: list[torch.Tensor]
    """(b, 1, 1, t) bool per group: which keys are real"""
    back: torch.Tensor
    """(N,) the slot of every real token: the inverse of `gather` on the real slots"""
    starts: np.ndarray
    """(B,) first x row of every sentence"""
    lengths: np.ndarray
    """(B,) real tokens of every sentence"""

    @classmethod
    @torch.compiler.disable  # index bookkeeping in numpy: torch.compile runs it as plain Python
    def of(cls, attention_mask: torch.Tensor, groups: int) -> _Layout:
        device = attention_mask.device
        lengths = attention_mask.sum(dim=1).cpu().numpy().astype(np.int64)  # (B,)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]  # a sentence without tokens has nothing to attend
        gather, back, spans, masks = [], np.zeros(int(lengths.sum()), dtype=np.int64), [], []
        offset = 0
        for members in np.array_split(order, min(max(groups, 1), len(order))) if len(order) else []:
            n = lengths[members]  # (b,)
            t = int(n.max())
            j = np.arange(t)
            real = j[None, :] < n[:, None]  # (b, t)
            slots = starts[members][:, None] + np.minimum(j[None, :], n[:, None] - 1)  # (b, t)
            back[slots[real]] = offset + np.flatnonzero(real)
            gather.append(slots.reshape(-1))
            spans.append((offset, len(members), t))
            masks.append(torch.from_numpy(real).to(device)[:, None, None, :])
            offset += len(members) * t
        gather_t = torch.from_numpy(np.concatenate(gather) if gather else np.zeros(0, np.int64)).to(device)
        return cls(gather_t, spans, masks, torch.from_numpy(back).to(device), starts, lengths)


    @torch.compiler.disable
    def sentence_slots(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each of M real-token rows, its sentence's rows padded to the longest of them: the
        (M*t,) x rows (padding slots read the sentence's last real row) and the (M, t) real mask."""
        sentence = np.searchsorted(self.starts + self.lengths, rows.cpu().numpy(), side="right")  # (M,)
        n = self.lengths[sentence]  # (M,) real tokens of each row's sentence
        t = int(n.max()) if len(n) else 1
        j = np.arange(t)
        slots = self.starts[sentence][:, None] + np.minimum(j[None, :], n[:, None] - 1)  # (M, t)
        device = rows.device
        return torch.from_numpy(slots.reshape(-1)).to(device), torch.from_numpy(j[None, :] < n[:, None]).to(device)


def _qkv_weights(sa) -> tuple[torch.Tensor, torch.Tensor]:
    """The query, key and value projections as one (3D, D) matrix and (3D,) bias: one matrix
    multiply instead of three (the same dot products; autograd splits the gradient back)."""
    w = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight])
    b = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias])
    return w, b


def _layer(layer, x: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """One `BertLayer` on the real tokens x (N, D)."""
    sa = layer.attention.self
    H, hd = sa.num_attention_heads, sa.attention_head_size
    N, D = x.shape
    qkv = F.linear(x, *_qkv_weights(sa)).index_select(0, lay.gather)  # (P, 3D) in padded slots
    parts = []
    for (offset, b, t), key_mask in zip(lay.groups, lay.masks, strict=True):
        q, k, v = qkv[offset : offset + b * t].view(b, t, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling
        )  # (b, H, t, hd)
        parts.append(ctx.transpose(1, 2).reshape(b * t, D))
    ctx = torch.cat(parts).index_select(0, lay.back) if parts else x.new_zeros(0, D)  # (N, D)
    out = layer.attention.output
    h = out.LayerNorm(out.dropout(out.dense(ctx)) + x)  # (N, D)
    ffn = layer.output
    return ffn.LayerNorm(ffn.dropout(ffn.dense(layer.intermediate(h))) + h)  # (N, D)


def _last_layer_rows(layer, x: torch.Tensor, rows: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """The last `BertLayer` for the selected rows only: x (N, D) -> (M, D) states of x[rows].

    Every token of a selected row's sentence is still a key and a value, but keys and values are
    never projected per token: per head h, with that head's weights W_k, W_v (hd x D) and biases,

        score_t = q . (W_k x_t + b_k) = (W_k^T q) . x_t + q . b_k
        context = sum_t a_t (W_v x_t + b_v) = W_v (sum_t a_t x_t) + (sum_t a_t) b_v

    (the same sums, reassociated; labse_core.model.inference does the same at inference). That is
    O(M H T D) instead of the O(N D^2) of per-token keys and values: on a pair batch, where the
    [CLS] rows are one per sentence, about a twentieth of a full layer instead of a sixth.
    """
    sa = layer.attention.self
    H, hd = sa.num_attention_heads, sa.attention_head_size
    N, D = x.shape
    M = rows.shape[0]
    slots, real = lay.sentence_slots(rows)  # (M*t,), (M, t)
    keys = x.index_select(0, slots).view(M, real.shape[1], D)  # (M, t, D) each row's sentence
    xr = x.index_select(0, rows)  # (M, D)
    q = sa.query(xr).view(M, H, hd)  # (M, H, hd)
    q_in = torch.einsum("mhe,hed->mhd", q, sa.key.weight.view(H, hd, D))  # (M, H, D): W_k^T q
    q_bias = (q * sa.key.bias.view(H, hd)).sum(dim=-1, keepdim=True)  # (M, H, 1): q . b_k (the same for every t)
    scores = (torch.bmm(q_in, keys.transpose(1, 2)) + q_bias) * sa.scaling  # (M, H, t)
    probs = scores.masked_fill(~real[:, None, :], float("-inf")).softmax(dim=-1)  # (M, H, t)
    probs = F.dropout(probs, sa.dropout.p, sa.training)
    mixed = torch.bmm(probs, keys)  # (M, H, D): sum_t a_t x_t per head
    ctx = torch.einsum("mhd,hed->mhe", mixed, sa.value.weight.view(H, hd, D))  # (M, H, hd)
    ctx = (ctx + probs.sum(dim=-1, keepdim=True) * sa.value.bias.view(H, hd)).reshape(M, D)  # (M, D)
    out = layer.attention.output
    h = out.LayerNorm(out.dropout(out.dense(ctx)) + xr)  # (M, D)
    ffn = layer.output
    return ffn.LayerNorm(ffn.dropout(ffn.dense(layer.intermediate(h))) + h)  # (M, D)
