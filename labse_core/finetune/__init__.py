"""Dual-encoder fine-tuning of the LaBSE encoder with the bidirectional additive margin softmax loss.

`labse_core.finetune.train` is the trainer (`FinetuneConfig`, `run`, `main`), `data` its held-out
split, language balance and batches, `ablation` the margin/init ablation arms; the loss itself is
`labse_core.losses.ams`, the runtime it shares with pretraining `labse_core.training`. (Nothing is
imported here, so that `python -m labse_core.finetune.train` runs the module once.)
"""
