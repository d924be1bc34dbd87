"""The one Beam version the Dask runner is written against, and the check that refuses any other.

The runner reuses Beam's Dask translation and runs bundles with Beam internals (``beam_internals.py``,
six private names among them). Another Beam version may rename them (an import error deep in a run) or
change what they do (pipelines that run and write wrong output), so the runner refuses to start on
another version, with one line that says what to do. Importing this module imports no Beam.
"""

from __future__ import annotations

SUPPORTED_BEAM = "2.77"  # major.minor; checked with 2.77.0 (constraints.txt)


class UnsupportedBeamVersion(ValueError):
    """The installed apache-beam is not the version the Dask runner supports."""


def installed_beam_version() -> str:
    from importlib.metadata import version

    return version("apache-beam")


def is_supported(version: str) -> bool:
    return version == SUPPORTED_BEAM or version.startswith(f"{SUPPORTED_BEAM}.")


def check_beam_version(version: str | None = None) -> None:
    """Raise ``UnsupportedBeamVersion`` (one line: the supported version and how to proceed) unless
    ``version`` (default: the installed apache-beam) is ``SUPPORTED_BEAM``.x."""
    version = version or installed_beam_version()
    if not is_supported(version):
        raise UnsupportedBeamVersion(
            f"--runner dask supports apache-beam {SUPPORTED_BEAM}.x only (it patches Beam's Dask runner through "
            f"Beam internals), this environment has {version}: install apache-beam=={SUPPORTED_BEAM}.* "
            f"(pip install -c constraints.txt -e '.[dask]'), or run with --runner DirectRunner"
        )
