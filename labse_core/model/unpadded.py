"""BERT's forward over the real tokens only: the same weights and the same function as
`transformers.BertModel`, without computing anything at padding positions.

    keep   = flat indices of the attention mask's ones                      (N,)   N = real tokens
    x      = LayerNorm(E_word[ids] + E_type[types] + E_pos[positions])      (N, D)
    per layer:
      q, k, v = W_q x, W_k x, W_v x                                          (N, D) each
      scatter into (B, T) -> SDPA with the key-padding mask -> gather back   (N, D)
      h  = LayerNorm(W_o ctx + x)                                            (N, D)
      x  = LayerNorm(W_2 gelu(W_1 h) + h)                                    (N, D)

Why: every matrix multiply, activation and LayerNorm of a BERT layer is per token, so the rows of a
padded (B, T) batch that are padding cost as much as real ones and carry nothing (padding is masked
out of attention as keys, and its own outputs are never read by an MLM head that looks only at the
masked real positions). Only attention mixes tokens; there the real tokens are scattered back into the
padded (B, T) layout for one `scaled_dot_product_attention` call with the key-padding mask, the same
call (and mask semantics) as `BertModel`'s "sdpa" attention. The real tokens' states are therefore
those of `BertModel` up to float rounding (tests/labse_core/test_unpadded.py), with (B*T - N) / (B*T)
less per-token work.

An MLM head reads the last layer's states at the masked positions only (~15% of the tokens), so with
`select` the last layer computes keys and values for every token but everything else (queries,
attention output, both LayerNorms, the feed-forward block: 10 of its 12 d^2 multiply-adds per token)
for those rows alone; each selected row attends over its own sentence. On a 4-layer encoder that is
about a sixth of the encoder's work. Dropout draws differ from `BertModel`'s (fewer positions), as they would with any
other batch layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import BertModel


def unpadded_token_states(
    bert: BertModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer states of the real tokens, (N, D), and their flat indices into (B*T,), row-major.

    input_ids, attention_mask (1 = real token), token_type_ids, position_ids: (B, T). Positions default
    to 0..T-1 and types to 0, as in `BertModel`.

    select: given `keep`, the indices (into the N real tokens, ascending) of the only rows whose
    last-layer states are wanted (an MLM head's masked positions). The last layer then computes keys and
    values for every real token but queries, attention output, LayerNorms and feed-forward block for
    those rows only, and the returned states are (M, D) for them (indices into (B*T,) alongside).
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
    key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): which keys each query may see
    layers = list(bert.encoder.layer)
    rows = None if select is None else select(keep)  # (M,) into the N real tokens
    for i, layer in enumerate(layers):
        if rows is not None and i == len(layers) - 1:
            return _last_layer_rows(layer, x, keep, rows, B, T, attention_mask), keep[rows]
        x = _layer(layer, x, keep, B, T, key_mask)
    return x, keep


def _layer(
    layer, x: torch.Tensor, keep: torch.Tensor, B: int, T: int, key_mask: torch.Tensor
) -> torch.Tensor:
    """One `BertLayer` on the real tokens x (N, D)."""
    sa = layer.attention.self
    H, hd = sa.num_attention_heads, sa.attention_head_size
    N, D = x.shape
    qkv = torch.stack([sa.query(x), sa.key(x), sa.value(x)])  # (3, N, D)
    # Padding rows are zeros: as keys they are masked out, as queries their outputs are dropped below.
    padded = x.new_zeros(3, B * T, D).index_copy(1, keep, qkv)  # (3, B*T, D)
    q, k, v = padded.view(3, B, T, H, hd).transpose(2, 3).unbind(0)  # (B, H, T, hd) each
    ctx = F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling
    )  # (B, H, T, hd)
    ctx = ctx.transpose(1, 2).reshape(B * T, D).index_select(0, keep)  # (N, D)
    out = layer.attention.output
    h = out.LayerNorm(out.dropout(out.dense(ctx)) + x)  # (N, D)
    ffn = layer.output
    return ffn.LayerNorm(ffn.dropout(ffn.dense(layer.intermediate(h))) + h)  # (N, D)


def _last_layer_rows(
    layer,
    x: torch.Tensor,
    keep: torch.Tensor,
    rows: torch.Tensor,
    B: int,
    T: int,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """The last `BertLayer` for the selected rows only: x (N, D) -> (M, D) states of x[rows].

    Every token is still a key and a value; only the M selected tokens are queries. Each query
    attends over its own sentence: its batch row's keys and values are gathered, (M, H, T, hd), and
    one SDPA call runs M single-query attentions with that row's key-padding mask.
    """
    sa = layer.attention.self
    H, hd = sa.num_attention_heads, sa.attention_head_size
    N, D = x.shape
    kv = torch.stack([sa.key(x), sa.value(x)])  # (2, N, D)
    padded = (
        x.new_zeros(2, B * T, D).index_copy(1, keep, kv).view(2, B, T, H, hd).transpose(2, 3)
    )  # (2, B, H, T, hd)
    xr = x.index_select(0, rows)  # (M, D)
    batch_of = keep.index_select(0, rows) // T  # (M,) the sentence of each selected token
    k, v = padded.index_select(1, batch_of).unbind(0)  # (M, H, T, hd) each
    q = sa.query(xr).view(-1, H, 1, hd)  # (M, H, 1, hd)
    key_mask = attention_mask.bool().index_select(0, batch_of)[:, None, None, :]  # (M, 1, 1, T)
    ctx = F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling
    )  # (M, H, 1, hd)
    ctx = ctx.reshape(-1, D)  # (M, D)
    out = layer.attention.output
    h = out.LayerNorm(out.dropout(out.dense(ctx)) + xr)  # (M, D)
    ffn = layer.output
    return ffn.LayerNorm(ffn.dropout(ffn.dense(layer.intermediate(h))) + h)  # (M, D)
