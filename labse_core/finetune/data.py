"""Fine-tuning data: the held-out split, language balance, and exactly B pairs per data shard per step.

Held-out pairs. A pair is held out when a hash of (src_text, tgt_text) falls below `eval_fraction`
(labse_core.data.held_out, the coin every stage tosses): the split is a pure function of the pair, the
same on every rank, across resumes and across runs on the same shards, and needs no second copy of the
data. At most `eval_max_pairs` of them (in file order)
form the evaluation set; all of them are excluded from training.

Language balance. The pair shards are language-mixed (every part file holds all languages, shuffled,
as the sharding job writes them), so a per-language sampling rate cannot be applied by choosing files.
We apply it per row instead: rejection sampling keeps a training pair of language pair l with
probability q_l = (p_l / s_l) / max_k (p_k / s_k), where s_l = n_l / N is the language's share of the
training pairs and p_l = n_l^alpha / sum_k n_k^alpha the target distribution (labse_core.vocab's
`language_sampling_probs`). The kept stream then has language shares p_l. alpha = 1 keeps everything
(natural distribution); alpha < 1 up-samples low-resource pairs by discarding some high-resource ones
(each epoch draws a fresh subset, so no pair is permanently excluded). The counts n_l come from the
same scan that collects the held-out set, which reads the four id/text columns of every row group
once at start-up (minutes for billions of pairs; a manifest of counts would avoid it).

Global batch. Rank r reads data shards v = r * streams_per_rank + j (j < streams_per_rank) of
V = world_size x streams_per_rank, takes exactly `batch_size` pairs from each and concatenates them in
shard order: the global batch is a function of V only. Incomplete batches never happen: a stream
loops over epochs, and rejected rows are replaced by the next ones.

Tokenizer. The pair shards hold ids of the tokenizer they were made with (tokenizer_dir, else the
lake's); a model that brings its own vocabulary gets its pairs re-tokenized from their text
(`text_tokenizer`, FinetuneConfig.retokenize; the decision is labse_core.model.tokenizers').
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from labse_core.data.batches import SpecialIds, sentence_batch
from labse_core.data.held_out import held_out_score, is_held_out
from labse_core.data.shards import ShardLoader, ShardStream, StreamConfig
from labse_core.finetune.config import FinetuneConfig
from labse_core.model import tokenizers
from labse_core.training.distributed import DistEnv
from storage.layout import Layout

PAIR_COLUMNS = ("src_lang", "tgt_lang", "src_text", "tgt_text", "src_ids", "tgt_ids")


# ---------------------------------------------------------------------------------------------------
# Held-out split and language counts


def in_train_subset(src_text: str, tgt_text: str, fraction: float) -> bool:
    """Whether a (non-held-out) pair belongs to the `train_fraction` subset used for training."""
    return fraction >= 1.0 or held_out_score(src_text, tgt_text, salt="train\x00") < fraction


def pair_language(row: dict) -> str:
    """The language pair a row belongs to for balancing, e.g. "en-de"."""
    return f"{row['src_lang']}-{row['tgt_lang']}"


@dataclass
class PairScan:
    """What one pass over the shards found."""

    train_counts: dict[str, int]
    """Training (not held-out) pairs per language pair."""
    eval_rows: list[dict]
    """The evaluation set: held-out rows (all PAIR_COLUMNS), at most eval_max_pairs, in file order."""
    held_out: int
    """All held-out pairs (also those beyond eval_max_pairs, which are excluded from training too)."""


def scan_pairs(
    files: Sequence[Path], eval_fraction: float, eval_max_pairs: int, train_fraction: float = 1.0
) -> PairScan:
    """One pass over the pair shards, a record batch at a time: language counts and the held-out set."""
    counts: Counter[str] = Counter()
    eval_rows: list[dict] = []
    held = 0
    for path in files:
        for rb in pq.ParquetFile(path).iter_batches(columns=list(PAIR_COLUMNS), batch_size=8192):
            d = rb.to_pydict()
            for i in range(rb.num_rows):
                if is_held_out(d["src_text"][i], d["tgt_text"][i], eval_fraction):
                    held += 1
                    if len(eval_rows) < eval_max_pairs:
                        eval_rows.append({k: d[k][i] for k in PAIR_COLUMNS})
                elif in_train_subset(d["src_text"][i], d["tgt_text"][i], train_fraction):
                    counts[f"{d['src_lang'][i]}-{d['tgt_lang'][i]}"] += 1
    return PairScan(dict(sorted(counts.items())), eval_rows, held)


def acceptance_probs(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Rejection-sampling keep rate per language pair, q_l ∝ p_l / s_l = N p_l / n_l, max 1 (module
    docstring); the kept stream has language shares p_l ∝ n_l^alpha."""
    from labse_core.vocab import language_sampling_probs

    present = {k: n for k, n in counts.items() if n > 0}
    if not present:
        return {}
    p = language_sampling_probs(present, alpha)
    ratio = {k: p[k] / n for k, n in present.items()}
    top = max(ratio.values())
    return {k: r / top for k, r in ratio.items()}


# ---------------------------------------------------------------------------------------------------
# Which tokenizer


def shards_tokenizer_dir(cfg: FinetuneConfig, layout: Layout) -> Path:
    """The tokenizer the pair shards' ids were made with: tokenizer_dir, else the lake's."""
    return tokenizers.lake_tokenizer_dir(layout, cfg.tokenizer_dir)


def model_tokenizer_dir(cfg: FinetuneConfig, layout: Layout) -> Path:
    """The tokenizer that belongs to the model (written into best/ and final/): init_from's own, else
    the shards'."""
    return tokenizers.own_tokenizer_dir(cfg.init_from) or shards_tokenizer_dir(cfg, layout)


def text_tokenizer(cfg: FinetuneConfig, layout: Layout) -> Any | None:
    """The tokenizer to re-tokenize pair texts with, or None to train on the shards' ids (retokenize)."""
    return tokenizers.text_tokenizer(model_tokenizer_dir(cfg, layout), shards_tokenizer_dir(cfg, layout), cfg.retokenize)


# ---------------------------------------------------------------------------------------------------
# Batches


def collate_pairs(
    rows: Sequence[dict], max_len: int, special: SpecialIds = SpecialIds()
) -> dict[str, torch.Tensor]:
    """B pair rows -> one (2B, T) batch: rows 0..B-1 the sources, B..2B-1 the targets, each
    `[CLS] ids [SEP]` truncated to max_len, all right-padded to one length T (one forward per step)."""
    return sentence_batch([r["src_ids"] for r in rows] + [r["tgt_ids"] for r in rows], max_len, special)


def retokenize(rows: Sequence[dict], tokenizer: Any, max_len: int, prefix: str = "") -> list[dict]:
    """Rows with src_ids/tgt_ids recomputed from their texts (ids without [CLS]/[SEP], at most max_len - 2).
    ``prefix``: the model's input prefix (EncoderConfig.input_prefix, e5: "query: "), put before both
    sides as at inference (labse_core.embed.encode)."""
    if not rows:
        return []

    def ids(col: str) -> list[list[int]]:
        texts = [prefix + r[col] for r in rows]
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len - 2)["input_ids"]

    return [r | {"src_ids": s, "tgt_ids": t} for r, s, t in zip(rows, ids("src_text"), ids("tgt_text"), strict=True)]


class PairBatcher:
    """Exactly `batch_size` training pairs per call from one data shard: held-out pairs dropped, the
    language rejection sampling applied, leftovers carried to the next call. Its state (stream
    position, sampler RNG, carried rows) restores the exact sequence of batches."""

    def __init__(
        self, cfg: FinetuneConfig, files: Path, shard: int, num_shards: int, accept: dict[str, float]
    ):
        self.cfg, self.accept = cfg, accept
        stream_cfg = StreamConfig(
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            buffer_rows=cfg.buffer_rows,
            length_column="src_ids",
            extra_tokens=2,
            max_len=cfg.max_len,
        )
        stream = ShardStream(
            files, columns=PAIR_COLUMNS, shard_index=shard, num_shards=num_shards, cfg=stream_cfg
        )
        self.loader = ShardLoader(stream, num_workers=cfg.num_workers)
        # Seeded by the data shard, not the rank: the draws do not depend on the process layout.
        self.rng = np.random.default_rng([cfg.seed, 7, shard])
        self.pending: list[dict] = []
        self._it: Iterator | None = None

    def _keep(self, row: dict) -> bool:
        if is_held_out(row["src_text"], row["tgt_text"], self.cfg.eval_fraction):
            return False
        if not in_train_subset(row["src_text"], row["tgt_text"], self.cfg.train_fraction):
            return False
        q = self.accept.get(pair_language(row), 1.0)
        return q >= 1.0 or self.rng.random() < q

    def next(self) -> list[dict]:
        if self._it is None:
            self._it = iter(self.loader)
        while len(self.pending) < self.cfg.batch_size:
            self.pending += [r for r in next(self._it) if self._keep(r)]
        out, self.pending = self.pending[: self.cfg.batch_size], self.pending[self.cfg.batch_size :]
        return out

    def state_dict(self) -> dict:
        return {
            "loader": self.loader.state_dict(),
            "rng": self.rng.bit_generator.state,
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.rng.bit_generator.state = state["rng"]
        self.pending = list(state["pending"])
        self._it = None


class PairStreams:
    """This rank's data shards: one PairBatcher each; a step's batch is their concatenation (pairs
    re-tokenized first when the model brings its own tokenizer). Its state, keyed {data shard:
    batcher state}, is what a checkpoint stores."""

    def __init__(
        self, cfg: FinetuneConfig, files: Path, env: DistEnv, accept: dict[str, float], tokenizer: Any = None,
        prefix: str = "",
    ):
        self.cfg, self.tokenizer, self.prefix = cfg, tokenizer, prefix
        self.num_shards = env.world_size * cfg.streams_per_rank
        self.shard_ids = [env.rank * cfg.streams_per_rank + j for j in range(cfg.streams_per_rank)]
        self.batchers = {v: PairBatcher(cfg, files, v, self.num_shards, accept) for v in self.shard_ids}

    def next(self) -> dict[str, torch.Tensor]:
        rows = [r for v in self.shard_ids for r in self.batchers[v].next()]
        if self.tokenizer is not None:
            rows = retokenize(rows, self.tokenizer, self.cfg.max_len, self.prefix)
        return collate_pairs(rows, self.cfg.max_len, self.cfg.special_ids)

    def state_dict(self) -> dict:
        return {str(v): b.state_dict() for v, b in self.batchers.items()}

    def load_state_dict(self, state: dict) -> None:
        for v, b in self.batchers.items():
            b.load_state_dict(state[str(v)])
