"""The MLM/TLM pretraining model: `LabseEncoder` token states -> BERT's masked-LM head.

    h      = encoder.token_states(x)                        # (B, T, D)
    z      = LayerNorm(gelu(W_t h_i + b_t))                 # (N, D)  only the N masked positions i
    logits = z E^T + b                                      # (N, V)  E: the input word embeddings (tied)
    loss   = sum_i -log softmax(logits_i)[y_i] / N_global   # labels -100 elsewhere are ignored

The head is BERT's `BertLMPredictionHead` (Devlin et al. 2019; parameter names as in Hugging Face's
`cls.predictions.*`): a dense + gelu + LayerNorm transform, then a decoder whose weight *is* the
input embedding matrix (tied, as in BERT and LaBSE) with a separate output bias. MLM and TLM share
it: TLM differs only in its inputs (a packed translation pair, see masking.make_tlm_example).

Logits are computed only at the masked positions (~15% of tokens), not over the whole (B, T, V):
with LaBSE's 501k vocabulary the full logits of a 32 x 128 batch would be 2 G floats, and the
unmasked ones carry no loss.

The forward returns the loss *sum*, the number of targets and of correct predictions, not a mean:
the trainer divides by the number of targets of the whole global batch (all micro-batches of all
ranks), which makes a gradient-accumulated or data-parallel step equal to one big batch.

`grow_layers` implements progressive stacking (Gong et al. 2019), used by LaBSE's pretraining.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from labse_core.data.masking import IGNORE_INDEX
from labse_core.model.encoder import LabseEncoder
from labse_core.model.unpadded import unpadded_token_states


class PredictionTransform(nn.Module):
    """dense -> activation -> LayerNorm (HF `BertPredictionHeadTransform`)."""

    def __init__(self, d: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(d, d)
        self.act = ACT2FN[act]
        self.LayerNorm = nn.LayerNorm(d, eps=eps)  # HF's name, so the weights map 1:1

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class MlmHead(nn.Module):
    """BERT's masked-LM head with the decoder tied to the input word embeddings."""

    def __init__(
        self, word_embeddings: nn.Embedding, act: str = "gelu", eps: float = 1e-12, std: float = 0.02
    ):
        super().__init__()
        vocab, d = word_embeddings.weight.shape
        self.transform = PredictionTransform(d, act, eps)
        self.word_embeddings = word_embeddings  # shared module: the tie survives .to() and load_state_dict
        self.bias = nn.Parameter(torch.zeros(vocab))
        nn.init.normal_(self.transform.dense.weight, std=std)
        nn.init.zeros_(self.transform.dense.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)"""
        return F.linear(self.transform(h), self.word_embeddings.weight, self.bias)


@dataclass
class MlmOutput:
    loss_sum: torch.Tensor
    """Sum of the cross-entropies over the masked positions (scalar, fp32)."""
    num_targets: torch.Tensor
    """Masked positions in this batch (scalar long)."""
    num_correct: torch.Tensor
    """Masked positions whose argmax is the original token (scalar long)."""

    @property
    def loss(self) -> torch.Tensor:
        """Mean cross-entropy over this batch's targets (for logging or a single-batch loss)."""
        return self.loss_sum / self.num_targets.clamp(min=1)

    @property
    def accuracy(self) -> float:
        return float(self.num_correct) / max(int(self.num_targets), 1)


class LabseForPretraining(nn.Module):
    """`LabseEncoder` + tied MLM head. The pooler (`encoder.pooler_dense`) is carried, not trained:
    MLM/TLM never use the sentence embedding, so the trainer freezes it (DDP would otherwise stop
    on a parameter without a gradient); the dual-encoder stage trains it."""

    def __init__(self, encoder: LabseEncoder):
        super().__init__()
        self.encoder = encoder
        cfg = encoder.cfg
        self.head = MlmHead(
            encoder.bert.embeddings.word_embeddings, cfg.hidden_act, cfg.layer_norm_eps, cfg.initializer_range
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> MlmOutput:
        """input_ids, attention_mask, labels (-100 = no target; padding never has one): (B, T)."""
        # Only the real tokens go through the encoder, and the last layer computes only the masked
        # rows the head reads (labse_core.model.unpadded): the same states as BertModel's at those
        # positions, without the padding's share of the work nor the unread rows' of the last layer.
        flat_labels = labels.reshape(-1)  # (B*T,)

        def masked_rows(keep: torch.Tensor) -> torch.Tensor:  # keep (R,) real tokens -> (N,) targets
            return (flat_labels.index_select(0, keep) != IGNORE_INDEX).nonzero().squeeze(1)

        h, at = unpadded_token_states(
            self.encoder.bert, input_ids, attention_mask, token_type_ids, position_ids, select=masked_rows
        )  # (N, D) at the N targets, in (B, T) row-major order; at: their flat indices into (B*T,)
        logits = self.head(h)  # (N, V)
        y = flat_labels.index_select(0, at)  # (N,)
        targets = labels != IGNORE_INDEX  # (B, T)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(dim=-1) == y).sum()
        return MlmOutput(loss_sum=loss_sum, num_targets=targets.sum(), num_correct=correct)

    @torch.no_grad()
    def predict(self, input_ids, attention_mask, token_type_ids=None, position_ids=None) -> torch.Tensor:
        """Logits at every position, (B, T, V): for inspection and fill-in-the-blank demos."""
        h = self.encoder.token_states(input_ids, attention_mask, token_type_ids, position_ids)
        return self.head(h)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions with a label: logits (B, T, V), labels (B, T), -100 ignored."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def mlm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of labelled positions whose argmax is the label."""
    keep = labels != IGNORE_INDEX
    return float((logits.argmax(-1)[keep] == labels[keep]).float().mean()) if keep.any() else 0.0


# ---------------------------------------------------------------------------------------------------
# Progressive stacking


def stage_layers(num_layers: int, stage: int) -> int:
    """Layers trained in stacking stage 0, 1, 2: L/4, L/2, L (at least 1)."""
    return max(1, num_layers >> (2 - stage)) if stage < 2 else num_layers


def grow_layers(model: LabseForPretraining, new_num_layers: int) -> list[int]:
    """Progressive stacking: grow the encoder to `new_num_layers`; new layer i copies old layer i mod L.

    Returns `source`, with `source[i]` the old layer that new layer i was copied from.

    Why `i mod L`: it stacks the trained L-layer block on top of itself (Gong et al. 2019, "Efficient
    Training of BERT by Progressively Stacking"): the shallow model's layers then appear in the same
    order, the bottom copy is the trained model itself, and the top copy continues the computation
    from representations of the kind it was trained on. (The alternative `i // (new/L)`, each layer
    duplicated in place, keeps neighbours together but doubles every layer's update.) Copies are
    deep: the new layers are independent parameters from the first step on.
    """
    layers = model.encoder.bert.encoder.layer
    old = len(layers)
    if new_num_layers < old:
        raise ValueError(f"cannot grow {old} layers to {new_num_layers}")
    source = [i % old for i in range(new_num_layers)]
    new = []
    for i, s in enumerate(source):
        layer = layers[s] if i < old else copy.deepcopy(layers[s])
        for m in layer.modules():  # HF uses layer_idx only for kv caches; keep it truthful anyway
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
        new.append(layer)
    model.encoder.bert.encoder.layer = nn.ModuleList(new)
    model.encoder.bert.config.num_hidden_layers = new_num_layers
    model.encoder.cfg = replace(model.encoder.cfg, num_layers=new_num_layers)
    return source


def shrink_layers(model: LabseForPretraining, num_layers: int) -> None:
    """Keep only the first `num_layers` layers (the start of progressive stacking)."""
    layers = model.encoder.bert.encoder.layer
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"cannot keep {num_layers} of {len(layers)} layers")
    model.encoder.bert.encoder.layer = nn.ModuleList(list(layers)[:num_layers])
    model.encoder.bert.config.num_hidden_layers = num_layers
    model.encoder.cfg = replace(model.encoder.cfg, num_layers=num_layers)
