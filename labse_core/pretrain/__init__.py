"""MLM + TLM pretraining of the LaBSE encoder: the trainer (`train`) and the MLM head + progressive
stacking (`model`). The masking and TLM packing it reads are labse_core.data.masking; the runtime it
shares with fine-tuning is labse_core.training."""
