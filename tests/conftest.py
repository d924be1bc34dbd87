"""Test session set-up: a temporary LABSE_HOME (data lake, MLflow sqlite, Prefect home, catalog)
for the whole session, set before Prefect or MLflow are imported, and one Prefect test harness."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="labse-test-home-"))
os.environ["LABSE_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each, or torch's OpenMP pools
    # oversubscribe the cores (two 2-thread pools on 2 cores run many times slower, not 2x).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from flows.env import bootstrap  # noqa: E402  (after the environment above)

bootstrap(_SESSION_HOME)

LOCALE_ROOT = Path("/usr/share/locale")
BASE_DOMAINS: tuple[str, ...] = (
    # Debian required / important / standard packages
    "coreutils", "tar", "grep", "sed", "findutils", "diffutils", "bash", "dpkg", "apt", "libapt-pkg6.0", "shadow",
    "Linux-PAM", "adduser", "procps-ng", "psmisc", "systemd", "man-db", "wget", "libc", "xz", "gettext-runtime",
    "gettext-tools", "make", "gnupg2",
    # and libraries nearly every Debian machine has (glib, gtk2, shared-mime-info, xkb-data, iso-codes)
    "glib20", "gtk20", "gtk20-properties", "shared-mime-info", "xkeyboard-config",
    "iso_3166-1", "iso_639-2", "iso_4217", "iso_15924",
)
"""The gettext text domains tests read from /usr/share/locale, by name and in this order. A test that
globbed every catalog read whatever else happened to be installed: Debian's chromium (through GTK 3 and
its other dependencies) adds ~530 catalogs, which moved corpus sizes and the fine-tuning tests' numbers.
Domains installed later (gtk30, postgres, git ...) are never read; the iso_* lists not named here (ISO 639-3,
3166-2: thousands of names, mostly copied verbatim) neither."""


def named_catalogs(locale: str, domains: tuple[str, ...] = BASE_DOMAINS) -> list[Path]:
    """``locale``'s catalogs of ``domains`` that exist on this machine, in the order of ``domains``."""
    paths = (LOCALE_ROOT / locale / "LC_MESSAGES" / f"{d}.mo" for d in domains)
    return [p for p in paths if p.is_file()]

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba" / "v1"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for every flow test (starting one costs ~15 s on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def layout(tmp_path):
    """A fresh, empty platform home for one test."""
    from storage.layout import Layout

    return Layout.from_env(tmp_path / "home").ensure()


@pytest.fixture(scope="session")
def tiny_eval_model(tmp_path_factory, real_catalogs) -> Path:
    """An exported tiny encoder (bag of subwords, gettext vocabulary) that evaluation tests share: building
    one costs seconds; treat it as read-only."""
    from tests.eval_helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("evalmodel"))


@pytest.fixture(scope="session")
def real_catalogs() -> Path:
    if not any(LOCALE_ROOT.glob("de/LC_MESSAGES/*.mo")):
        pytest.skip("this machine has no German gettext catalogs under /usr/share/locale")
    return LOCALE_ROOT
