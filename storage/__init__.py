"""Storage layer: where everything lives (``layout``), what it looks like (``schemas``),
how it is written safely (``io``, ``manifest``) and how it is queried (``catalog``).

Every stage reads and writes through this package; no stage knows another stage's files. It sits
below every other layer and imports nothing from ``labse_core``, ``beam_jobs`` or ``flows``
(tests/test_layering.py); its ``faults`` hooks (fault injection) are that low so every layer can use them.
"""
