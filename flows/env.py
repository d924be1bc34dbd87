"""Process environment for the embedded defaults: everything under ``LABSE_HOME``, no network.

Must run before ``prefect`` is imported: Prefect reads ``PREFECT_HOME`` and friends at import time.
Values the user already set are kept (e.g. ``PREFECT_API_URL`` pointing at a real server). When
``labse server up`` runs servers for this home (``LABSE_HOME/servers.json``, ``flows.server``), clients
are pointed at them; environment variables still win.
"""

from __future__ import annotations

import logging
import os

from storage.layout import HOME_ENV, Layout
from storage.publish import recover
from storage.tracking import offline_env


def bootstrap(home: str | os.PathLike[str] | None = None) -> Layout:
    layout = Layout.from_env(home).ensure()
    recover(layout)  # a publish cut short by a crash is rolled back before anything reads the lake
    os.environ[HOME_ENV] = str(layout.home)
    offline_env()
    from flows.server import client_env
    from storage import tracking

    for key, value in client_env(layout).items():
        if key not in os.environ:
            os.environ[key] = value
            if key == "MLFLOW_TRACKING_URI" and tracking._USER_TRACKING_URI is None:
                # tracking read the variable when it was imported, before this; it is the user's choice now.
                tracking._USER_TRACKING_URI = value
    os.environ.setdefault("PREFECT_HOME", str(layout.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    # Beam's worker harness logs every bundle at INFO; keep the demo's output readable.
    for name in ("apache_beam", "absl", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR if name == "apache_beam" else logging.WARNING)
    return layout
