"""Dual-encoder fine-tuning of the LaBSE encoder with the bidirectional additive margin softmax loss, in
the same files as pretraining (labse_core.pretrain):

    config    FinetuneConfig (its loss: labse_core.losses.ams.AmsLossConfig) and the presets
              (tiny_cpu, base_gpu, e5_cpu, e5_gpu)
    data      the held-out split and language counts, language balance, exactly B pairs per data shard
              per step (PairStreams), and which tokenizer makes the ids (labse_core.model.tokenizers)
    train     the trainer (FineTuner, run, main: python -m labse_core.finetune.train)
    ablation  the margin/init ablation arms

The loss itself is labse_core.losses.ams, the held-out coin labse_core.data.held_out, the runtime it
shares with pretraining labse_core.training. It never imports labse_core.pretrain. (Nothing is
imported here, so that `python -m labse_core.finetune.train` runs the module once.)
"""
