"""Installed package versions, for what the platform records about the code that made something:
an exported model's labse_export.json, a logged model's pip requirements, an imported encoder's source,
a benchmark's environment."""

from __future__ import annotations

from importlib import metadata


def package_version(name: str) -> str | None:
    """The installed version of the distribution `name` (importlib.metadata), None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
