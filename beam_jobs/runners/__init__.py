"""Beam runners of our own. ``dask``: Beam's Dask runner with the gaps our stages hit closed
(``beam_jobs/runners/dask/``); ``BeamConfig.pipeline`` (``beam_jobs/options.py``) picks it for
``--runner dask``."""
