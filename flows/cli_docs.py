"""`labse fetch-docs`: real documents for document mining, into the lake's raw area.

    labse fetch-docs manpages --langs de,zh [--no-english-from-system] [--replace]

``manpages``: Debian's translated man pages (``apt-get download manpages-<lang>``, no root needed) and
the English pages of the same names (packages ``manpages``/``manpages-dev``, then the system's
``/usr/share/man``), written to ``LABSE_HOME/lake/docs/manpages/<lang>/manN/`` and ``.../en/manN/``
with a ``_manifest.json`` (``labse_core.manpages``). A re-run adds or refreshes the languages it names
and keeps the others (``--replace`` drops them); the folder is replaced whole or not at all. Then:

    labse mine --src LAKE/docs/manpages/de --tgt LAKE/docs/manpages/en --src-lang de --tgt-lang en --model M

Registered in ``flows/cli.py`` by ``cli_docs.register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_console import console, status
from flows.cli_errors import fail as _fail

docs_app = typer.Typer(help="Fetch real documents (translated man pages) into the lake for document mining.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `fetch-docs` (subcommand `manpages`) to the `labse` app."""
    app.add_typer(docs_app, name="fetch-docs")


@docs_app.command("manpages")
def manpages(
    langs: Annotated[str, typer.Option(help="Translations to fetch, comma-separated: de, fr, zh (zh_CN + zh_TW), "
                                            "zh_CN, pt_BR, ja, ...")],
    english_from_system: Annotated[bool, typer.Option(
        help="English pages missing from the packages manpages/manpages-dev: take them from --system-man-root.")] = True,
    system_man_root: Annotated[Path, typer.Option(help="The system's man root (English pages in manN/).")] = Path("/usr/share/man"),
    replace: Annotated[bool, typer.Option("--replace", help="Drop the languages fetched earlier that --langs does "
                                                             "not name.")] = False,
) -> None:
    """Debian's translated man pages + the English pages of the same names -> LAKE/docs/manpages."""
    from labse_core.manpages import ManpagesError, fetch_manpages
    from storage.layout import Layout

    layout = Layout.from_env()
    try:
        with status(f"fetching manpages for {langs} ..."):
            res = fetch_manpages(layout, langs, english_from_system=english_from_system,
                                 system_root=system_man_root, replace=replace)
    except ManpagesError as e:
        _fail(e)
    except OSError as e:
        _fail(f"fetch-docs manpages: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    width = max(len(lp.folder) for lp in res.languages)
    for lp in res.languages:
        packages = ", ".join(f"{n} {v}" for n, v in lp.packages.items()) or "packages unknown"
        when = "" if lp.refreshed else f" (kept from {lp.fetched_at})"
        console.print(f"{lp.folder:<{width}}  {packages}: {lp.pages} pages (+{lp.links} links), "
                      f"{lp.english_matched} with an English page{when}", highlight=False)
    en = res.english
    sources = ", ".join(f"{n} from {s}" for s, n in en["from"].items()) or "none"
    console.print(f"{'en':<{width}}  {en['pages']} English pages ({sources})", highlight=False)
    if res.dropped:
        console.print(f"dropped (--replace): {', '.join(res.dropped)}", highlight=False)
    console.print(f"wrote {res.path} ({res.seconds:.1f} s); manifest {res.manifest}", highlight=False)
    first = next((lp.folder for lp in res.languages if lp.refreshed), res.languages[0].folder)
    console.print(f"  labse mine --src {res.path / first} --tgt {res.path / 'en'} --src-lang {first.split('_')[0]} "
                  "--tgt-lang en --model MODEL", highlight=False)
