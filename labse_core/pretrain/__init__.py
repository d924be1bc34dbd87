"""Pretraining data transforms: MLM/TLM masking and translation-pair packing."""
