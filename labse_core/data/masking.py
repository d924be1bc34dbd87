"""MLM / TLM inputs: BERT masking, and packing a translation pair into one TLM sequence.

Masked language modelling (Devlin et al. 2019, Sec. 3.1), used by LaBSE's MLM and TLM pretraining:
  * choose 15% of the maskable tokens of each sequence as prediction targets;
  * replace 80% of the chosen with [MASK], 10% with a random token, leave 10% unchanged, so the model
    cannot learn that only [MASK] positions matter;
  * labels are the original ids at chosen positions and -100 (ignored by cross_entropy) elsewhere.
[CLS], [SEP], [PAD] (and any other id passed as special) are never chosen, never a random replacement.

The number chosen per sequence is exact, round(0.15 * maskable) and at least 1, as in BERT's
create_pretraining_data.py, rather than a Bernoulli(0.15) draw per token: every sequence then
contributes a prediction, so a batch of short sentences can never have an empty (NaN) MLM loss.

Translation language modelling (Conneau & Lample 2019, "XLM", Sec. 3.3): a translation pair in one
sequence, `[CLS] src [SEP] tgt [SEP]`, masked as above, so a masked word can be recovered from its
translation. As in XLM the positions restart for the target sentence (`make_tlm_example`), which
gives the k-th token of both sentences the same position and encourages aligning them. LaBSE uses
TLM like XLM but without language embeddings; segment ids 0/1 mark source/target instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Label of positions that are not prediction targets (torch cross_entropy's default ignore_index)."""


@dataclass(frozen=True)
class MaskingConfig:
    """BERT masking rates. Defaults: BERT / LaBSE."""

    mlm_probability: float = 0.15
    """Fraction of maskable tokens chosen as prediction targets (BERT: 15%)."""
    mask_token_prob: float = 0.8
    """Of the chosen, fraction replaced by [MASK] (BERT: 80%)."""
    random_token_prob: float = 0.1
    """Of the chosen, fraction replaced by a uniformly random non-special token (BERT: 10%);
    the remaining 1 - 0.8 - 0.1 = 10% keep their token."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {self.mlm_probability}")
        if (
            self.mask_token_prob < 0
            or self.random_token_prob < 0
            or self.mask_token_prob + self.random_token_prob > 1
        ):
            raise ValueError("mask_token_prob and random_token_prob must be >= 0 and sum to <= 1")


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
    cfg: MaskingConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a batch. input_ids: (B, T) -> (masked input_ids (B, T), labels (B, T)).

    `special_ids` (at least CLS, SEP, PAD) are never chosen; neither are positions where
    attention_mask == 0. All randomness comes from `generator`, so a seed reproduces the masks.
    The input is not modified.
    """
    cfg = cfg or MaskingConfig()
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
    specials = sorted({int(s) for s in special_ids} | {mask_token_id})
    if any(not 0 <= s < vocab_size for s in specials):
        raise ValueError(f"special ids {specials} must lie in [0, vocab_size={vocab_size})")
    device = input_ids.device

    maskable = ~torch.isin(input_ids, torch.tensor(specials, device=device))  # (B, T)
    if attention_mask is not None:
        maskable &= attention_mask.bool()

    # Exactly k_b = max(1, round(p * n_b)) targets per row: rank the maskable positions by a random
    # key and take the k_b smallest. Unmaskable positions get key 2 > any uniform draw.
    n_maskable = maskable.sum(dim=1)  # (B,)
    k = torch.clamp(torch.round(n_maskable * cfg.mlm_probability), min=1)
    k = torch.minimum(k, n_maskable)  # (B,) rows with nothing maskable get 0
    keys = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    keys = keys.masked_fill(~maskable, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, T) rank of each position's key within its row
    chosen = rank < k[:, None]  # (B, T)

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (B, T)

    # 80 / 10 / 10 split of the chosen positions, by one uniform draw per position.
    u = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    to_mask = chosen & (u < cfg.mask_token_prob)
    to_random = chosen & (u >= cfg.mask_token_prob) & (u < cfg.mask_token_prob + cfg.random_token_prob)

    # Random replacement uniform over the non-special ids: draw r in [0, V - S) and step it over each
    # special id in increasing order, a bijection onto [0, V) minus the specials with no (V,) table.
    r = torch.randint(0, vocab_size - len(specials), input_ids.shape, generator=generator, device=device)
    for s in specials:
        r = r + (r >= s).long()

    out = input_ids.clone()
    out[to_mask] = mask_token_id
    out[to_random] = r[to_random]
    return out, labels


@dataclass(frozen=True)
class TlmExample:
    """One packed translation pair, 1-D LongTensors of equal length (no padding)."""

    input_ids: torch.Tensor
    """`[CLS] src [SEP] tgt [SEP]`."""
    token_type_ids: torch.Tensor
    """0 for `[CLS] src [SEP]`, 1 for `tgt [SEP]`."""
    position_ids: torch.Tensor
    """0..len(src)+1 for the first segment, then 1..len(tgt)+1 for the second (reset, see below)."""


def truncate_pair(n_src: int, n_tgt: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of two sentences sharing `budget` tokens: each gets at least half the budget
    (or all of itself if shorter), the longer one takes what the shorter leaves (longest-first)."""
    if n_src + n_tgt <= budget:
        return n_src, n_tgt
    keep_src = min(n_src, max(budget // 2, budget - n_tgt))
    keep_tgt = min(n_tgt, budget - keep_src)
    return keep_src, keep_tgt


def make_tlm_example(
    src_ids: Sequence[int],
    tgt_ids: Sequence[int],
    cls_id: int,
    sep_id: int,
    max_len: int,
) -> TlmExample:
    """Pack a translation pair as `[CLS] src [SEP] tgt [SEP]` of at most max_len tokens.

    token_type_ids are 0 for the first segment and 1 for the second. Position ids restart for the
    target, as in XLM's TLM: [CLS] = 0, src = 1..n, [SEP] = n+1, then tgt = 1..m, [SEP] = m+1, so the
    k-th token of either sentence sits at position k and neither sentence's positions depend on the
    other's length. (XLM restarts at 0 because each of its sentences starts with its own </s>; here
    position 0 is [CLS], which the target does not have.) If the pair is too long both sentences are
    cut from the end, fairly (`truncate_pair`): the shorter keeps all of itself if it fits in half.
    """
    budget = max_len - 3  # [CLS], [SEP], [SEP]
    if budget < 2:
        raise ValueError(f"max_len must be at least 5 to hold a token of each sentence, got {max_len}")
    n, m = truncate_pair(len(src_ids), len(tgt_ids), budget)
    src, tgt = list(src_ids[:n]), list(tgt_ids[:m])

    ids = [cls_id, *src, sep_id, *tgt, sep_id]
    types = [0] * (n + 2) + [1] * (m + 1)
    positions = list(range(n + 2)) + list(range(1, m + 2))
    ids_t, types_t, positions_t = (torch.tensor(v, dtype=torch.long) for v in (ids, types, positions))
    return TlmExample(input_ids=ids_t, token_type_ids=types_t, position_ids=positions_t)
