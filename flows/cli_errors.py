"""How every `labse` command reports the user's error: one plain line on stderr, exit code 2.

Plain ``sys.stderr`` rather than a rich console: rich wraps long lines at the terminal width (a path
then spans three lines) and reads ``[...]`` in a message as markup."""

from __future__ import annotations

import sys

import typer


def one_line(message: object) -> str:
    return " ".join(str(message).split("\n")).strip()


def fail(message: object, code: int = 2) -> None:
    """Print ``error: <message>`` as one line on stderr and exit with ``code`` (never a traceback)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    raise typer.Exit(code)
