"""Sentences as the encoder reads them: `[CLS] ids [SEP]`, right-padded into one (N, T) batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from labse_core.data.shards import pad_sequences


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids; the defaults are labse_core.vocab's fixed layout."""

    pad: int = 0
    """[PAD]"""
    unk: int = 1
    """[UNK]"""
    cls: int = 2
    """[CLS]"""
    sep: int = 3
    """[SEP]"""
    mask: int = 4
    """[MASK]"""


def sentence_batch(
    ids: Sequence[Sequence[int]], max_len: int, special: SpecialIds = SpecialIds()
) -> dict[str, torch.Tensor]:
    """Id lists without [CLS]/[SEP] -> {"input_ids", "attention_mask"}: (N, T) each, every row
    `[CLS] ids [SEP]` truncated to max_len, right-padded to the longest row."""
    seqs = [np.concatenate([[special.cls], np.asarray(x)[: max_len - 2], [special.sep]]) for x in ids]
    input_ids = pad_sequences(seqs, special.pad)  # (N, T)
    attention_mask = pad_sequences([np.ones(len(s)) for s in seqs], 0)  # (N, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def special_ids_of(tokenizer: Any, need_mask: bool = False) -> SpecialIds:
    """A HF tokenizer's own special ids (XLM-R's <pad>=1, <s>=0, </s>=2, <mask>=250001; LaBSE's
    wordpiece [PAD]=0, ...), read from the tokenizer, never assumed. A missing [MASK] maps to [UNK]
    unless `need_mask` (masked language modelling cannot do without one)."""
    ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("pad", "unk", "cls", "sep", "mask")}
    missing = [k for k, v in ids.items() if v is None and (k != "mask" or need_mask)]
    if missing:
        raise ValueError(
            f"the model's tokenizer has no {missing} token(s); LaBSE needs [CLS], [SEP], [PAD], [UNK]"
            + (" and [MASK] for MLM" if need_mask else "")
        )
    return SpecialIds(**{k: v if v is not None else ids["unk"] for k, v in ids.items()})
