"""The exported model folder as an MLflow pyfunc model: log it, register it, load it, predict.

``LabseEmbedder`` is a ``mlflow.pyfunc.PythonModel`` whose only artifact is the folder written by
``labse_core.export.export_model``; ``predict`` is ``labse_core.embed.encode`` on it, so the MLflow
model gives the same vectors as every other way of loading the folder.

    predict(["Hello world", "Hallo Welt"])               -> float32 (2, D), unit rows
    predict(pd.DataFrame({"text": [...]}))               -> same
    predict(..., params={"batch_size": 256})             -> same, other batching

The signature's input is one unnamed string column, so both a plain list of strings and a
DataFrame pass MLflow's schema check (a named ``text`` column would reject a plain list); a
DataFrame's ``text`` column is used when there is one. Requirements are an explicit, pinned
list (MLflow's inference would import and probe the model, slowly), and ``labse_core`` travels
with the model (``code_paths``), so it loads where this platform is not installed.

Run:

    from labse_core.mlflow_model import log_encoder, load_registered
    uri = log_encoder("checkpoints/export/labse-tiny", registered_model_name="labse")
    emb = load_registered("labse").predict(["Hello world"])     # alias @champion, else latest
    # serve: mlflow models serve -m models:/labse@champion --env-manager local
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from labse_core.export import read_export_metadata

log = logging.getLogger(__name__)

ARTIFACT_KEY = "model_dir"
"""Key of the model folder in ``artifacts`` (and ``context.artifacts``)."""
DEFAULT_NAME = "labse_encoder"
"""Name of the logged model inside its run."""
DEFAULT_ALIAS = "champion"
"""Registry alias ``load_registered`` prefers (moved only when evaluation beats the champion)."""
DEFAULT_BATCH_SIZE = 64
TEXT_COLUMN = "text"

# What loading and running the model imports (labse_core.export, .vocab, .embed, .model).
_REQUIREMENTS = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "sentencepiece",
    "protobuf",
    "numpy",
    "pandas",
    "pyarrow",
    "tqdm",
)


class LabseEmbedder(mlflow.pyfunc.PythonModel):
    """pyfunc: sentences in, unit-length float32 embeddings (N, D) out."""

    def load_context(self, context) -> None:
        from labse_core.export import load_encoder

        model_dir = context.artifacts[ARTIFACT_KEY]
        self.encoder, self.tokenizer = load_encoder(model_dir)
        meta = read_export_metadata(model_dir) or {}
        self.max_length = meta.get("max_seq_length")  # None: encode() uses the tokenizer's limit

    # pd.DataFrame: what pyfunc hands over after checking the column signature (a list arrives as a
    # one-column frame); MLflow infers no second signature from this hint.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from labse_core.embed import encode

        params = params or {}
        max_length = params.get("max_length", self.max_length)
        return encode(
            _sentences(model_input),
            (self.encoder, self.tokenizer),
            batch_size=int(params.get("batch_size", DEFAULT_BATCH_SIZE)),
            max_length=int(max_length) if max_length is not None else None,
            progress=False,
        )


def _sentences(model_input: Any) -> list[str]:
    """A list of sentences from what pyfunc hands over (after its schema check: a DataFrame)."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            col = model_input[TEXT_COLUMN]
        elif model_input.shape[1] == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(
                f"expected a {TEXT_COLUMN!r} column or a single column, got {list(model_input.columns)}"
            )
        return col.tolist()  # encode() rejects non-strings (a None / NaN cell) by row number
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


def signature(embedding_dim: int, max_seq_length: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_dim))]),
        params=ParamSchema(
            [
                ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE),
                ParamSpec("max_length", "long", max_seq_length),
            ]
        ),
    )


def pip_requirements() -> list[str]:
    """The installed versions of what the model imports, pinned (torch without its local tag:
    ``2.13.0+cpu`` exists only on PyTorch's own index)."""
    reqs = []
    for name in _REQUIREMENTS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            reqs.append(name)
            continue
        reqs.append(f"{name}=={version.split('+')[0]}")
    return reqs


def log_encoder(
    model_dir: str | os.PathLike[str],
    registered_model_name: str | None = None,
    *,
    name: str = DEFAULT_NAME,
    include_code: bool = True,
) -> str:
    """Log ``model_dir`` (an exported folder) as a pyfunc model; returns its model URI."""
    return _log_encoder(model_dir, registered_model_name, name=name, include_code=include_code).model_uri


def _log_encoder(
    model_dir: str | os.PathLike[str],
    registered_model_name: str | None = None,
    *,
    name: str = DEFAULT_NAME,
    include_code: bool = True,
) -> ModelInfo:
    """``log_encoder``, returning MLflow's ModelInfo (model URI and registered version).

    Logs into the active run, or into a new run of the current experiment that is ended again.
    ``registered_model_name``: also create a new version of that registered model.
    ``include_code``: ship the ``labse_core`` package with the model (``code_paths``).
    """
    model_dir = Path(model_dir)
    meta = read_export_metadata(model_dir)
    if meta is None:
        raise ValueError(
            f"{model_dir} has no labse_export.json: write it with labse_core.export.export_model"
        )
    kwargs: dict[str, Any] = dict(
        name=name,
        python_model=LabseEmbedder(),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=signature(meta["embedding_dim"], meta["max_seq_length"]),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
        metadata={k: meta[k] for k in ("embedding_dim", "max_seq_length", "vocab_size", "format_version")},
    )
    if include_code:
        # This file's folder, not labse_core.__file__: under an editable install seen from another
        # working directory labse_core can resolve as a namespace package whose __file__ is None.
        kwargs["code_paths"] = [str(Path(__file__).resolve().parent)]
    own_run = mlflow.active_run() is None
    if own_run:
        mlflow.start_run(run_name=f"log-{name}")
    try:
        with warnings.catch_warnings():
            # Deliberate: no input_example, as validating it would load the whole model again at log time.
            warnings.filterwarnings("ignore", message=r".*input example was not provided")
            info = mlflow.pyfunc.log_model(**kwargs)
    finally:
        if own_run:
            mlflow.end_run()
    if registered_model_name:
        log.info("registered %s version %s", registered_model_name, info.registered_model_version)
    return info


def registered_uri(name: str, alias: str | None = DEFAULT_ALIAS) -> str:
    """``models:/name@alias`` when the alias exists, else the latest version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if alias:
        try:
            MlflowClient().get_model_version_by_alias(name, alias)
            return f"models:/{name}@{alias}"
        except MlflowException:
            log.info("registered model %s has no alias %r; using its latest version", name, alias)
    return f"models:/{name}/latest"


def load_registered(name_or_uri: str, alias: str | None = DEFAULT_ALIAS):
    """``mlflow.pyfunc.load_model`` for a registered model name (alias, else latest) or any model URI
    (``models:/...``, ``runs:/...``, a path)."""
    uri = name_or_uri if ("/" in name_or_uri or ":" in name_or_uri) else registered_uri(name_or_uri, alias)
    return mlflow.pyfunc.load_model(uri)


# ---------------------------------------------------------------------------------------------------
# Registry: a new version per trained model; the alias moves only when the new one is better.


@dataclass(frozen=True)
class Promotion:
    """What ``register_and_promote`` did."""

    name: str
    version: str
    """The new version of ``name``."""
    model_uri: str
    accuracy: float
    """The new version's held-out retrieval accuracy (eval/acc on the pairs given)."""
    champion_version: str | None
    """The alias holder before (None: there was none)."""
    champion_accuracy: float | None
    """The previous holder's accuracy on the same pairs, measured now."""
    promoted: bool
    """Whether the alias now points at the new version."""


def text_retrieval_accuracy(embed: Callable[[list[str]], np.ndarray], pairs: Sequence[tuple[str, str]]) -> dict:
    """Bidirectional retrieval accuracy over (source, target) text pairs, for any embedding function
    (each model with its own tokenizer, so models with different vocabularies compare fairly)."""
    import torch

    from labse_core.finetune.train import retrieval_accuracy

    src, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
    x = torch.from_numpy(np.asarray(embed(src), dtype=np.float32))
    y = torch.from_numpy(np.asarray(embed(tgt), dtype=np.float32))
    return retrieval_accuracy(x, y, src, tgt)


def register_and_promote(
    model_dir: str | os.PathLike[str],
    eval_pairs: Sequence[tuple[str, str]],
    name: str = "labse",
    alias: str = DEFAULT_ALIAS,
) -> Promotion:
    """Log ``model_dir`` into the active run, register it as a new version of ``name`` and move
    ``alias`` (``models:/name@champion``) to it if no version holds the alias yet or if it retrieves
    ``eval_pairs`` at least as well as the current holder does. Both are evaluated now, on the same
    pairs (normally the new run's held-out split), so the comparison is fair even when the holder was
    trained on other data; the loser keeps its place, and the new version gets alias ``challenger``
    when it does not win. Version tags record both accuracies.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from labse_core.embed import encode
    from labse_core.export import load_encoder

    if not eval_pairs:
        raise ValueError("register_and_promote needs held-out pairs to compare models on")
    client = MlflowClient()
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    champion_acc = None
    if holder is not None:
        champ = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
        champion_acc = text_retrieval_accuracy(lambda xs: champ.predict(xs), eval_pairs)["eval/acc"]
    model = load_encoder(model_dir)
    acc = text_retrieval_accuracy(lambda xs: encode(xs, model, progress=False), eval_pairs)["eval/acc"]
    info = _log_encoder(model_dir, registered_model_name=name)
    version = str(info.registered_model_version)
    promoted = champion_acc is None or acc >= champion_acc
    client.set_model_version_tag(name, version, "eval_acc", f"{acc:.6f}")
    client.set_model_version_tag(name, version, "eval_n", str(len(eval_pairs)))
    if holder is not None:
        client.set_model_version_tag(name, version, f"{alias}_version_compared", str(holder.version))
        client.set_model_version_tag(name, version, f"{alias}_eval_acc", f"{champion_acc:.6f}")
    client.set_registered_model_alias(name, alias if promoted else "challenger", version)
    log.info(
        "%s version %s: accuracy %.4f vs %s %s; %s",
        name, version, acc, alias, f"{champion_acc:.4f}" if champion_acc is not None else "none",
        f"now @{alias}" if promoted else "@challenger",
    )
    return Promotion(
        name, version, info.model_uri, acc, str(holder.version) if holder else None, champion_acc, promoted
    )
