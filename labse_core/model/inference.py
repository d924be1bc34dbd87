"""Inference-only sentence embeddings: the LaBSE forward pass, minus the work nobody reads.

``fast_embed(encoder, input_ids, attention_mask)`` returns what ``encoder(input_ids, attention_mask)``
returns, ``normalize(tanh(W h_[CLS] + b))`` of shape (B, D), to float rounding, in less time.

The last layer only needs its [CLS] row. This is exact, not an approximation. In a BERT layer,
token i's output depends on the other tokens only through attention, via its query q_i against every
key and value; everything after attention (output projection, residual, LayerNorm, FFN, residual,
LayerNorm) is applied to each row on its own. The embedding reads one row of the last layer's output,
position 0 ([CLS]). So the last layer needs the query, attention, output projection and FFN of the
[CLS] row alone, against the keys and values of all tokens: the other T - 1 rows would be computed
and thrown away. All earlier layers are run in full (the last layer reads every token's state).

The last layer does not even project keys and values for every token. Per head, with the previous
layer's states h_j (D), the [CLS] query q (D/H) and that head's key and value weights W_k, W_v
(D/H x D) and biases b_k, b_v:

    score_j = q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k
    context = sum_j a_j (W_v h_j + b_v) = W_v (sum_j a_j h_j) + b_v        with a = softmax(score)

q . b_k is the same for every j, and softmax is unchanged by adding a constant, so it drops out;
the attention weights a_j sum to 1, so b_v comes out of the sum. Hence per sentence: one D-vector
W_k^T q per head, T dot products with h, one weighted sum of h per head, one W_v projection. That is
O(H T D + D^2) instead of the O(T D^2) of the K and V projections, so the last layer costs about as
much as one token's worth of a full layer. The result differs from the reference only by float
rounding of reassociated sums.

The other layers are run with plain tensor ops (``F.linear``, ``F.layer_norm``,
``F.scaled_dot_product_attention`` with a boolean key-padding mask), reading weights straight from
the transformers ``BertModel`` modules. That also skips transformers' per-call mask building and
output bookkeeping (noticeable for small models on CPU). Activation and LayerNorm eps are those of
the modules themselves, so whatever ``hidden_act`` the model was built with is what runs here.

Mean pooling (``encoder.cfg.pooling == "mean"``, e5) reads every row of the last layer, so there the
last layer runs in full like the others and the embedding is the masked mean of its rows; the saving
is then only transformers' per-call overhead.

Inference only: in train mode (dropout), with autograd recording, and for BertModel configurations
this module does not implement (decoder, cross-attention, non-absolute positions, no layers),
``fast_embed`` returns ``encoder(input_ids, attention_mask)`` instead. Works on CPU and CUDA, in fp32
and under autocast (bf16/fp16); autocast casts these ops as it casts the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from labse_core.model.encoder import LabseEncoder, mean_pool


def fast_path_unsupported(encoder: LabseEncoder) -> str | None:
    """Why ``fast_embed`` has to fall back to ``encoder(...)`` right now, or None if it need not."""
    if encoder.training:
        return "train mode (dropout)"
    if torch.is_grad_enabled():
        return "autograd is recording"
    config = encoder.bert.config
    if config.is_decoder or config.add_cross_attention:
        return "decoder / cross-attention BertModel"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type!r}"
    if len(encoder.bert.encoder.layer) == 0:
        return "no transformer layers"
    return None


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _linear(x: torch.Tensor, dense: nn.Linear) -> torch.Tensor:
    return F.linear(x, dense.weight, dense.bias)


def _embeddings(emb: BertEmbeddings, input_ids: torch.Tensor) -> torch.Tensor:
    """Token + position (0..T-1) + segment-0 embeddings, LayerNorm. (B, T) -> (B, T, D)."""
    t = input_ids.shape[1]
    position_and_type = emb.position_embeddings.weight[:t] + emb.token_type_embeddings.weight[0]  # (T, D)
    x = emb.word_embeddings(input_ids) + position_and_type  # (B, T, D)
    return _layer_norm(x, emb.LayerNorm)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D / H)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _after_attention(layer: BertLayer, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, residual, LayerNorm, FFN, residual, LayerNorm; row-wise. (..., D) -> (..., D)."""
    out = layer.attention.output
    x = _layer_norm(_linear(context, out.dense) + residual, out.LayerNorm)
    y = layer.intermediate.intermediate_act_fn(_linear(x, layer.intermediate.dense))  # (..., FF)
    return _layer_norm(_linear(y, layer.output.dense) + x, layer.output.LayerNorm)


def _layer(layer: BertLayer, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One full BERT layer. h: (B, T, D), keep: (B, T) True = real token -> (B, T, D)."""
    attn = layer.attention.self
    heads = attn.num_attention_heads
    q, k, v = (_split_heads(_linear(h, lin), heads) for lin in (attn.query, attn.key, attn.value))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # (B, H, T, D/H)
    return _after_attention(layer, context.transpose(1, 2).reshape(h.shape), h)  # (B, T, D)


def _last_layer_cls(layer: BertLayer, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The [CLS] row of a BERT layer's output. h: (B, T, D), keep: (B, T) True = real token -> (B, D).

    Attention folded through the key and value weights (module docstring): no per-token K or V.
    """
    attn = layer.attention.self
    b, _, d = h.shape
    heads, head_dim = attn.num_attention_heads, d // attn.num_attention_heads
    cls = h[:, 0]  # (B, D)
    q = _linear(cls, attn.query).view(b, heads, head_dim)  # (B, H, D/H)
    w_k = attn.key.weight.view(heads, head_dim, d)  # (H, D/H, D)
    w_v = attn.value.weight.view(heads, head_dim, d)  # (H, D/H, D)
    q_in = torch.einsum("bhe,hed->bhd", q, w_k)  # (B, H, D): W_k^T q per head; q . b_k cancels
    scores = torch.bmm(q_in, h.transpose(1, 2)) * head_dim**-0.5  # (B, H, T)
    probs = scores.masked_fill(~keep[:, None, :], float("-inf")).softmax(dim=-1)  # (B, H, T)
    mixed = torch.bmm(probs, h)  # (B, H, D): sum_j a_j h_j per head
    context = torch.einsum("bhd,hed->bhe", mixed, w_v).reshape(b, d) + attn.value.bias  # (B, D)
    return _after_attention(layer, context, cls)  # (B, D)


def fast_embed(encoder: LabseEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm sentence embeddings, equal to ``encoder(input_ids, attention_mask)`` to float rounding.

    input_ids, attention_mask: (B, T), right-padded, [CLS] (or <s>) at position 0 and not masked (so every sentence attends
    to at least one token); token_type_ids are all 0 and position ids 0..T-1, as in
    ``LabseEncoder.forward`` without them. Returns (B, D). Falls back to
    ``encoder(input_ids, attention_mask)`` when ``fast_path_unsupported(encoder)`` gives a reason.
    """
    if fast_path_unsupported(encoder) is not None:
        return encoder(input_ids, attention_mask)
    bert = encoder.bert
    keep = attention_mask.bool()  # (B, T): the keys each query may attend to
    h = _embeddings(bert.embeddings, input_ids)  # (B, T, D)
    *layers, last = bert.encoder.layer
    for layer in layers:
        h = _layer(layer, h, keep)  # (B, T, D)
    if encoder.cfg.pooling == "mean":  # every row of the last layer is read: no shortcut there
        h = _layer(last, h, keep)  # (B, T, D)
        return F.normalize(mean_pool(h, attention_mask), p=2, dim=-1)  # (B, D)
    cls = _last_layer_cls(last, h, keep)  # (B, D)
    pooled = torch.tanh(_linear(cls, encoder.pooler_dense))  # (B, D)
    return F.normalize(pooled, p=2, dim=-1)  # (B, D)
