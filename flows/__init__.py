"""Prefect flows and the ``labse`` command line: orchestration only, the logic lives in
``beam_jobs``, ``labse_core`` and ``storage``."""
