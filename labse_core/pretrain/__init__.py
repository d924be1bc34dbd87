"""MLM + TLM pretraining of the LaBSE encoder, in the same files as fine-tuning (labse_core.finetune):

    config  PretrainConfig and the presets (tiny_cpu, base_gpu, e5_continue_cpu, e5_continue_gpu)
    data    shard rows -> masked MLM / TLM micro-batches (PretrainCollator, PretrainStreams), and which
            tokenizer makes the ids (labse_core.model.tokenizers)
    model   the MLM head and progressive stacking
    train   the trainer (Pretrainer, run, main: python -m labse_core.pretrain.train)

The masking and TLM packing it reads are labse_core.data.masking, the held-out split it skips
labse_core.data.held_out; the runtime it shares with fine-tuning is labse_core.training. It never
imports labse_core.finetune. (Nothing is imported here, so that `python -m labse_core.pretrain.train`
runs the module once.)
"""
