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


def service_error(exc: BaseException) -> str | None:
    """The one-line message for a server that stopped answering (the MLflow tracking server after its
    client's retries, the Prefect API), else None: any other exception is a bug and keeps its traceback.

    A command whose server dies mid-run gets this line and exit code 1: what it had published stays
    (every publication is atomic), what it was writing is not published (see docs/reliability.md).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the cause chain: a wrapped connection error counts too
        seen.add(id(e))
        text = str(e)
        if type(e).__name__ == "MlflowException" and text.startswith("API request to "):
            # "failed with exception": no answer after the client's retries; else an HTTP error status
            line = one_line(text)
            return f"MLflow server {'not answering' if ' failed with exception ' in line else 'error'}: {line}"
        if "Failed to reach API at" in text or (type(e).__module__.startswith("httpx") and "Connect" in type(e).__name__):
            return f"Prefect server not answering: {one_line(text) or type(e).__name__}"
        e = e.__cause__ or e.__context__
    return None
