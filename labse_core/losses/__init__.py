"""Training losses; one loss per file, with its formula in the docstring."""
