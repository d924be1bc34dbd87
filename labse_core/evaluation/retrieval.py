"""Bidirectional translation retrieval accuracy: the fine-tuning loop's held-out metric and the
registry gate's (labse_core.mlflow_model).

For N aligned pairs (x_i, y_i), embed both sides, and count how often the nearest target (cosine) of
x_i is y_i (source -> target) and the nearest source of y_i is x_i (target -> source). Chance is
about 1/N. Models are compared on the same pairs; each embeds with its own tokenizer
(`text_retrieval_accuracy`), or, inside training, from the shards' ids (`embed_ids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from labse_core.data.batches import SpecialIds, sentence_batch
from labse_core.model.encoder import LabseEncoder


@torch.no_grad()
def embed_ids(
    encoder: LabseEncoder,
    ids: Sequence[Sequence[int]],
    max_len: int,
    batch_size: int = 256,
    special: SpecialIds = SpecialIds(),
) -> torch.Tensor:
    """Unit embeddings (N, D), float32 on CPU, of id lists without [CLS]/[SEP], in eval mode (the
    encoder's train/eval mode is restored)."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for b in range(0, len(ids), batch_size):
            batch = sentence_batch(ids[b : b + batch_size], max_len, special)
            emb = encoder(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.append(emb.float().cpu())  # (n, D)
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.cfg.hidden_size)


def retrieval_accuracy(
    x: torch.Tensor, y: torch.Tensor, src_texts: Sequence[str], tgt_texts: Sequence[str]
) -> dict:
    """Bidirectional nearest-neighbour (cosine) retrieval accuracy of unit embeddings x, y: (N, D).

    A retrieval counts as correct when it returns the gold sentence's *text*: gettext-like data holds
    the same English message translated into several languages, and retrieving an identical twin is
    not an error. Returns prefixed metrics: eval/acc_xy (source -> target), eval/acc_yx, eval/acc
    (their mean) and eval/n (pairs; chance accuracy is about 1/n).
    """
    scores = x @ y.T  # (N, N) cos(x_i, y_j)
    best_y = scores.argmax(dim=1).tolist()
    best_x = scores.argmax(dim=0).tolist()
    n = len(src_texts)
    acc_xy = sum(tgt_texts[j] == tgt_texts[i] for i, j in enumerate(best_y)) / max(n, 1)
    acc_yx = sum(src_texts[j] == src_texts[i] for i, j in enumerate(best_x)) / max(n, 1)
    return {"eval/acc_xy": acc_xy, "eval/acc_yx": acc_yx, "eval/acc": (acc_xy + acc_yx) / 2, "eval/n": n}


def pair_rows_accuracy(
    encoder: LabseEncoder,
    rows: Sequence[dict],
    max_len: int,
    batch_size: int = 256,
    special: SpecialIds = SpecialIds(),
) -> dict:
    """Retrieval accuracy of `encoder` on pair rows holding src_ids/tgt_ids and src_text/tgt_text."""
    x = embed_ids(encoder, [r["src_ids"] for r in rows], max_len, batch_size, special)
    y = embed_ids(encoder, [r["tgt_ids"] for r in rows], max_len, batch_size, special)
    return retrieval_accuracy(x, y, [r["src_text"] for r in rows], [r["tgt_text"] for r in rows])


def text_retrieval_accuracy(embed: Callable[[list[str]], np.ndarray], pairs: Sequence[tuple[str, str]]) -> dict:
    """Retrieval accuracy over (source, target) text pairs, for any embedding function (each model
    with its own tokenizer, so models with different vocabularies compare fairly)."""
    src, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
    x = torch.from_numpy(np.asarray(embed(src), dtype=np.float32))
    y = torch.from_numpy(np.asarray(embed(tgt), dtype=np.float32))
    return retrieval_accuracy(x, y, src, tgt)
