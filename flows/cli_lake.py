"""`labse lake`: the lake of record on an object store (``LABSE_LAKE_URL``, ``storage.remote``).

    labse lake push [DATASET]...     publish the local lake's datasets (default: every published one)
    labse lake pull DATASET...       make the remote versions the local ones
    labse lake sql "SELECT ..."      read-only SQL on the remote lake (same checks and sandbox as labse sql)

Credentials come from the object store's own environment variables (``AWS_*``), never from options.
Registered in ``flows/cli.py`` by ``cli_lake.register(app)``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_console import console
from flows.cli_errors import fail as _fail

lake_app = typer.Typer(help="The remote lake (LABSE_LAKE_URL): push, pull, sql.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(lake_app, name="lake")


def _specs(names: list[str] | None, layout=None):
    from storage.datasets import current_manifest
    from storage.schemas import DATASETS

    if not names:
        return [s for s in DATASETS.values() if layout is not None and current_manifest(layout, s) is not None]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        _fail(f"unknown dataset {unknown[0]!r}; datasets: {', '.join(DATASETS)}")
    return [DATASETS[n] for n in names]


@lake_app.command()
def push(datasets: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all published).")] = None) -> None:
    """Publish local datasets to the remote lake (data first, then one atomic pointer write)."""
    from storage.layout import Layout
    from storage.remote import RemoteLake, RemoteLakeError

    layout = Layout.from_env()
    try:
        lake = RemoteLake.from_env()
        for spec in _specs(datasets, layout):
            m = lake.push(layout, spec)
            console.print(f"pushed {spec.name}: {m.rows:,} rows, {len(m.files)} files -> {lake.url}", highlight=False)
    except (RemoteLakeError, OSError, ValueError) as e:
        _fail(e)


@lake_app.command()
def pull(datasets: Annotated[list[str], typer.Argument(help="Dataset names.")]) -> None:
    """Make the remote lake's current versions the local lake's."""
    from storage.layout import Layout
    from storage.remote import RemoteLake, RemoteLakeError

    layout = Layout.from_env().ensure()
    try:
        lake = RemoteLake.from_env()
        for spec in _specs(datasets):
            m = lake.pull(layout, spec)
            console.print(f"pulled {spec.name}: {m.rows:,} rows <- {lake.url}", highlight=False)
    except (RemoteLakeError, OSError, ValueError) as e:
        _fail(e)


@lake_app.command()
def sql(query: Annotated[str, typer.Argument(help="Read-only SQL over the remote lake's datasets.")]) -> None:
    """Read-only SQL on the remote lake (CSV on stdout)."""
    import pyarrow.csv as pacsv

    from storage.catalog import QueryError
    from storage.remote import RemoteLake, RemoteLakeError

    try:
        table = RemoteLake.from_env().query(query)
    except (QueryError, RemoteLakeError, OSError) as e:
        _fail(e)
    import sys

    pacsv.write_csv(table, sys.stdout.buffer)
