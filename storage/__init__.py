"""Storage layer: where everything lives (``layout``), what it looks like (``schemas``),
how it is written safely (``io``, ``manifest``) and how it is queried (``catalog``).

Every stage reads and writes through this package; no stage knows another stage's files.
"""
