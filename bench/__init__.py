"""Benchmarks: `python -m bench.<name>`; each prints what it measured and against what."""
