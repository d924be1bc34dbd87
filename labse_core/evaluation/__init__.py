"""Evaluation of sentence encoders: retrieval accuracy, Tatoeba, BUCC-style mining F1, xSIM."""
