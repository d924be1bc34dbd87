"""The held-out split of the translation pairs: fine-tuning's evaluation set, kept out of every
stage that would otherwise train on it.

A pair is held out when a hash of (src_text, tgt_text) falls below the fraction: the split is a pure
function of the pair, the same on every rank, across resumes, across runs on the same shards and in
every stage that asks, with no list of pairs stored anywhere. Who asks:

    labse_core.finetune.data   evaluates on the held-out pairs, trains on the rest
    labse_core.pretrain.data   TLM from the pair shards' texts skips them
    beam_jobs.shard            writes the TLM shards without them
    labse_core.evaluation.bucc builds its held-out BUCC-style task from them
"""

from __future__ import annotations

import hashlib


def held_out_score(src_text: str, tgt_text: str, salt: str = "") -> float:
    """A uniform number in [0, 1) that depends on the pair only (the held-out split's coin); another
    salt gives an independent coin (the train_fraction subset)."""
    digest = hashlib.blake2b(f"{salt}{src_text}\t{tgt_text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_held_out(src_text: str, tgt_text: str, fraction: float) -> bool:
    """Whether the pair is in the held-out split of this fraction (0: no pair is)."""
    return fraction > 0 and held_out_score(src_text, tgt_text) < fraction
