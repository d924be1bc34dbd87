"""Process environment for the embedded defaults: everything under ``LABSE_HOME``, no network.

Must run before ``prefect`` is imported: Prefect reads ``PREFECT_HOME`` and friends at import time.
Values the user already set are kept (e.g. ``PREFECT_API_URL`` pointing at a real server).
"""

from __future__ import annotations

import logging
import os

from storage.layout import HOME_ENV, Layout
from storage.tracking import offline_env


def bootstrap(home: str | os.PathLike[str] | None = None) -> Layout:
    layout = Layout.from_env(home).ensure()
    os.environ[HOME_ENV] = str(layout.home)
    offline_env()
    os.environ.setdefault("PREFECT_HOME", str(layout.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    # Beam's worker harness logs every bundle at INFO; keep the demo's output readable.
    for name in ("apache_beam", "absl", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR if name == "apache_beam" else logging.WARNING)
    return layout
