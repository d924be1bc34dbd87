"""Errors about input files, shared by every reader."""

from __future__ import annotations

import os


class InputFileError(ValueError):
    """An input file that cannot be read; ``str()`` is ``path:line: message`` (``path: message`` if no line)."""

    def __init__(self, path: str | os.PathLike[str], message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
