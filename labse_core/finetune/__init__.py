"""Dual-encoder fine-tuning of the LaBSE encoder with the bidirectional additive margin softmax loss.

`labse_core.finetune.train` is the trainer (`FinetuneConfig`, `run`, `main`); the loss itself is
`labse_core.losses.ams`.
"""

from labse_core.finetune.train import FinetuneConfig, FinetuneResult, base_gpu, run, tiny_cpu

__all__ = ["FinetuneConfig", "FinetuneResult", "base_gpu", "run", "tiny_cpu"]
