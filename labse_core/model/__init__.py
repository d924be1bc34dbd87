"""The LaBSE dual encoder: a BERT transformer with [CLS] -> dense+tanh -> L2-normalize pooling."""
