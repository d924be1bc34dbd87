"""Pretraining batches: shard rows -> masked, padded MLM or TLM micro-batches, one stream per source and
data shard, and which tokenizer makes the ids.

    text_tokenizer    the model's own tokenizer when the shards' ids are of another vocabulary
                      (PretrainConfig.retokenize, labse_core.model.tokenizers), else None
    PretrainCollator  rows -> [CLS]/[SEP], packed TLM pairs, padding, BERT masking (seeded per batch)
    make_loader       one source's loader of one data shard (ShardStream + the collator)
    PretrainStreams   this rank's loaders, one per source (mlm, tlm) and local data shard; its state
                      is what a checkpoint stores

Data shard v = rank x grad_accum + j of V = world_size x grad_accum (labse_core.data.shards): the global
batch is a function of V only (see labse_core.pretrain.train).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from labse_core.data.batches import SpecialIds
from labse_core.data.held_out import is_held_out
from labse_core.data.masking import MaskingConfig, make_tlm_example, mask_tokens
from labse_core.data.shards import ShardLoader, ShardStream, StreamConfig, pad_sequences
from labse_core.model import tokenizers
from labse_core.pretrain.config import PretrainConfig
from labse_core.training.distributed import DistEnv
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_PAIRS, SHARD_TLM

# ---------------------------------------------------------------------------------------------------
# Which tokenizer


def text_tokenizer(cfg: PretrainConfig, layout: Layout) -> Any | None:
    """The tokenizer to make ids from the rows' text with (PretrainConfig.retokenize), or None to read
    the shards' ids. Refuses what would train on ids of another vocabulary: the shards' ids read as
    ids of the model's table fit it and silently train nonsense."""
    model_dir = tokenizers.own_tokenizer_dir(cfg.init_from)
    if model_dir is None and cfg.retokenize:
        raise ValueError("retokenize=true needs init_from: a model folder with its own tokenizer")
    # Shards passed as mlm_shards/tlm_shards are taken to be in the model's vocabulary; the lake's
    # shards are in the lake's, when it has one.
    lake_tok = tokenizers.lake_tokenizer_dir(layout)
    lake_shards = not (cfg.mlm_shards or cfg.tlm_shards)
    shards_tok = lake_tok if lake_shards and tokenizers.has_tokenizer(lake_tok) else None
    # retokenize=false asks whether the vocabularies differ too: to refuse the shards' ids if they do
    tokenizer = tokenizers.text_tokenizer(model_dir, shards_tok, cfg.retokenize or None)
    if tokenizer is not None and cfg.retokenize is False:
        raise ValueError(
            f"init_from {cfg.init_from} has its own vocabulary, but the MLM/TLM shards under {layout.lake} "
            f"are tokenized with {lake_tok}: set retokenize=true (tokenize their text with the model's "
            "tokenizer), or pass mlm_shards/tlm_shards tokenized with it"
        )
    if tokenizer is not None and cfg.batch_tokens is not None:
        raise ValueError(
            "batch_tokens counts the shards' ids, but with retokenize the model's tokenizer decides the "
            "lengths: use batch_size (and max_len) instead"
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class PretrainCollator:
    """Shard rows -> a masked, padded batch. `kind` "mlm": rows hold ids without [CLS]/[SEP], which are
    added here; "tlm": rows hold packed `[CLS] src [SEP] tgt [SEP]` (make_tlm_example), re-packed if
    longer than max_len. With a `tokenizer` (PretrainConfig.retokenize) the ids are made here from the
    rows' text instead: MLM rows' `text`, TLM rows' `src_text`/`tgt_text` (pair shard rows), packed the
    same way with the tokenizer's own [CLS]/[SEP] (`special`, which must be that tokenizer's). Masking
    uses the stream's per-batch seed, so a batch is a pure function of its position in the stream."""

    kind: Literal["mlm", "tlm"]
    max_len: int
    vocab_size: int
    """Random replacements are drawn from [0, vocab_size) minus the special ids: the tokenizer's size."""
    special: SpecialIds = SpecialIds()
    masking: MaskingConfig = MaskingConfig()
    tokenizer: Any = None
    """The model's own HF tokenizer (re-tokenize the rows' text), or None (use the rows' ids)."""

    def tokenize(self, rows: list[dict]) -> list[dict]:
        """Rows with their ids made from their text by `tokenizer`, in the shards' id layout: MLM
        `input_ids` without [CLS]/[SEP]; TLM `input_ids`/`token_type_ids`/`position_ids` packed."""
        tok, sp = self.tokenizer, self.special

        def ids(texts: list[str], budget: int) -> list[list[int]]:
            # truncation here only bounds the work on a very long text; the packing below cuts fairly.
            return tok(texts, add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]

        if self.kind == "mlm":
            return [{"input_ids": np.asarray(x, np.int64)} for x in ids([r["text"] for r in rows], self.max_len - 2)]
        src = ids([r["src_text"] for r in rows], self.max_len - 3)
        tgt = ids([r["tgt_text"] for r in rows], self.max_len - 3)
        out = []
        for s_ids, t_ids in zip(src, tgt, strict=True):
            ex = make_tlm_example(s_ids, t_ids, sp.cls, sp.sep, self.max_len)
            out.append({k: getattr(ex, k).numpy() for k in ("input_ids", "token_type_ids", "position_ids")})
        return out

    def __call__(self, rows: list[dict], seed: int) -> dict[str, torch.Tensor]:
        sp = self.special
        if self.tokenizer is not None:
            rows = self.tokenize(rows)
        if self.kind == "mlm":
            ids = [np.concatenate([[sp.cls], r["input_ids"][: self.max_len - 2], [sp.sep]]) for r in rows]
            types = [np.zeros(len(x), np.int64) for x in ids]
            positions = [np.arange(len(x)) for x in ids]
        else:
            ids, types, positions = [], [], []
            for r in rows:
                x, t, p = r["input_ids"], r["token_type_ids"], r["position_ids"]
                if len(x) > self.max_len:  # re-pack so both sentences are cut fairly, [SEP]s kept
                    n_src = int((t == 0).sum()) - 2
                    ex = make_tlm_example(x[1 : 1 + n_src], x[n_src + 2 : -1], sp.cls, sp.sep, self.max_len)
                    x, t, p = ex.input_ids.numpy(), ex.token_type_ids.numpy(), ex.position_ids.numpy()
                ids.append(x)
                types.append(t)
                positions.append(p)
        input_ids = pad_sequences(ids, sp.pad)  # (B, T)
        attention_mask = (pad_sequences([np.ones(len(x)) for x in ids], 0)).long()  # (B, T)
        token_type_ids = pad_sequences(types, 0)  # (B, T)
        position_ids = pad_sequences(positions, 0)  # (B, T)
        gen = torch.Generator().manual_seed(seed)
        masked, labels = mask_tokens(
            input_ids,
            mask_token_id=sp.mask,
            vocab_size=self.vocab_size,
            special_ids=(sp.pad, sp.cls, sp.sep),
            generator=gen,
            attention_mask=attention_mask,
            cfg=self.masking,
        )
        return {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "labels": labels,
        }


@dataclass(frozen=True)
class NotHeldOut:
    """Whether a pair row is outside fine-tuning's held-out split (a picklable row filter)."""

    fraction: float

    def __call__(self, row: dict) -> bool:
        return not is_held_out(row["src_text"], row["tgt_text"], self.fraction)


def make_loader(
    cfg: PretrainConfig,
    kind: Literal["mlm", "tlm"],
    files: Path,
    shard: int,
    num_shards: int,
    tokenizer: Any = None,
) -> ShardLoader:
    """This data shard's loader of one source. With a tokenizer, MLM reads the MLM shards' text and TLM
    the pair shards' texts; the lake's ids are still read, only to bucket rows of similar length."""
    if tokenizer is None:
        columns = ("input_ids",) if kind == "mlm" else ("input_ids", "token_type_ids", "position_ids")
        length_column, extra = "input_ids", 2 if kind == "mlm" else 0
    else:
        columns = ("text", "input_ids") if kind == "mlm" else ("src_text", "tgt_text", "src_ids", "tgt_ids")
        length_column, extra = ("input_ids", 2) if kind == "mlm" else ("src_ids", 3)
    stream_cfg = StreamConfig(
        seed=cfg.seed + (0 if kind == "mlm" else 1),
        batch_size=cfg.batch_size,
        max_tokens=cfg.batch_tokens,
        buffer_rows=cfg.buffer_rows,
        length_column=length_column,
        extra_tokens=extra,
        max_len=cfg.max_len,
    )
    vocab = len(tokenizer) if tokenizer is not None else cfg.vocab_size
    collate = PretrainCollator(kind, cfg.max_len, vocab, cfg.special_ids, cfg.masking, tokenizer)
    # TLM from the pair shards' texts: without fine-tuning's held-out pairs (the TLM shards have none)
    keep = NotHeldOut(cfg.held_out_fraction) if tokenizer is not None and kind == "tlm" else None
    stream = ShardStream(
        files, columns=columns, shard_index=shard, num_shards=num_shards, cfg=stream_cfg, collate=collate,
        row_filter=keep,
    )
    return ShardLoader(stream, num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())


class PretrainStreams:
    """This rank's data: one loader per source (mlm, tlm) and local data shard, and their iterators.
    Its state, keyed {source: {data shard: position}}, is what a checkpoint stores."""

    def __init__(self, cfg: PretrainConfig, layout: Layout, env: DistEnv, tokenizer: Any = None):
        self.num_shards = env.world_size * cfg.grad_accum
        self.shard_ids = [env.rank * cfg.grad_accum + j for j in range(cfg.grad_accum)]
        if tokenizer is None:
            tlm = Path(cfg.tlm_shards) if cfg.tlm_shards else layout.dataset_dir(SHARD_TLM.relpath)
        else:  # the TLM texts: the pair shards hold the same rows as the TLM shards, with their text
            tlm = Path(cfg.pair_shards) if cfg.pair_shards else layout.dataset_dir(SHARD_PAIRS.relpath)
        dirs = {"mlm": Path(cfg.mlm_shards) if cfg.mlm_shards else layout.dataset_dir(SHARD_MLM.relpath), "tlm": tlm}
        wanted = {"mlm": cfg.tlm_ratio < 1.0, "tlm": cfg.tlm_ratio > 0.0}
        self.loaders: dict[str, dict[int, ShardLoader]] = {
            kind: {v: make_loader(cfg, kind, dirs[kind], v, self.num_shards, tokenizer) for v in self.shard_ids}
            for kind in ("mlm", "tlm")
            if wanted[kind]
        }
        self._iters: dict[tuple[str, int], Iterator] = {}

    def next(self, kind: str) -> list[dict]:
        """This rank's micro-batches of the step: one per local data shard."""
        out = []
        for v in self.shard_ids:
            if (kind, v) not in self._iters:
                self._iters[kind, v] = iter(self.loaders[kind][v])
            out.append(next(self._iters[kind, v]))
        return out

    def state_dict(self) -> dict:
        return {
            kind: {str(v): ld.state_dict() for v, ld in lds.items()} for kind, lds in self.loaders.items()
        }

    def load_state_dict(self, state: dict) -> None:
        for kind, lds in self.loaders.items():
            for v, ld in lds.items():
                if str(v) in state.get(kind, {}):
                    ld.load_state_dict(state[kind][str(v)])
        self._iters.clear()
