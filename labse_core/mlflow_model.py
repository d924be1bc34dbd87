"""The exported model folder as an MLflow pyfunc model: log it, register it, load it, predict.

The model is logged as MLflow "models from code": its source is ``labse_core/mlflow_model_code.py``
(``LabseEmbedder``, ending in ``mlflow.models.set_model``) and its only artifact is the folder written
by ``labse_core.export.export_model``, so loading it unpickles nothing. ``predict`` is
``labse_core.embed.encode`` on the folder, so the MLflow model gives the same vectors as every other
way of loading it. Every registered version is tagged with what produced it (``lineage`` tags: run id,
git commit, data manifest hashes, preset: see ``register_and_promote``).

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
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from labse_core.evaluation.retrieval import text_retrieval_accuracy  # the registry gate's metric
from labse_core.export import read_export_metadata
from labse_core.mlflow_model_code import ARTIFACT_KEY, DEFAULT_BATCH_SIZE  # the model's own constants
from labse_core.packages import package_version

log = logging.getLogger(__name__)

DEFAULT_NAME = "labse_encoder"
"""Name of the logged model inside its run."""
DEFAULT_ALIAS = "champion"
"""Registry alias ``load_registered`` prefers (moved only when evaluation beats the champion)."""
INPUT_EXAMPLE = ["Hello world", "Hallo Welt"]
"""Logged with every model: MLflow checks it against the signature and shows it in the UI."""
MODEL_CODE = Path(__file__).resolve().parent / "mlflow_model_code.py"
"""The pyfunc's source, logged as "models from code" (nothing is pickled)."""

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
    "ctranslate2",  # --precision int8 / LABSE_PRECISION=int8 (labse_core.model.int8)
)


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
        version = package_version(name)
        reqs.append(name if version is None else f"{name}=={version.split('+')[0]}")
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
        python_model=str(MODEL_CODE),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=signature(meta["embedding_dim"], meta["max_seq_length"]),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
        metadata={k: meta[k] for k in ("embedding_dim", "max_seq_length", "vocab_size", "format_version")},
        # MLflow loads the model and predicts on it once to check it against the signature.
        input_example=INPUT_EXAMPLE,
    )
    if include_code:
        # This file's folder, not labse_core.__file__: under an editable install seen from another
        # working directory labse_core can resolve as a namespace package whose __file__ is None.
        kwargs["code_paths"] = [str(Path(__file__).resolve().parent)]
    own_run = mlflow.active_run() is None
    if own_run:
        mlflow.start_run(run_name=f"log-{name}")
    try:
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


@dataclass(frozen=True)
class ModelSource:
    """A model to embed with: a local folder, and where it came from (for results and lineage)."""

    folder: Path
    """The exported model folder (what ``labse_core.embed.encode`` / ``resolve_model`` take)."""
    uri: str
    """What the user named: ``models:/labse@champion``, ``models:/labse/3`` or the folder's absolute path."""
    name: str | None = None
    """Registered model name (None for a plain folder)."""
    version: str | None = None
    """Registered version the URI resolved to (an alias moves; the version does not)."""


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


def _model_folder_in(root: Path) -> Path | None:
    """The exported folder inside a downloaded pyfunc model (its ``artifacts/<name>/``)."""
    hits = sorted(root.rglob("labse_export.json"), key=lambda p: (len(p.parts), str(p)))
    return hits[0].parent if hits else None


def resolve_model_source(ref: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> ModelSource:
    """A folder, or a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest``)
    whose version's artifacts are downloaded once into ``cache_dir/NAME/VERSION`` (a version's
    artifacts never change, so the cache needs no invalidation). Uses the current MLflow tracking URI.
    Raises ``ValueError`` with a one-line message for a missing folder, an unknown model or version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    text = str(ref)
    if not text.startswith("models:/"):
        folder = Path(text).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"model {text}: not a folder (give an exported model folder or models:/NAME@ALIAS)")
        return ModelSource(folder=folder, uri=str(folder))
    m = _MODELS_URI.match(text)
    if m is None:
        raise ValueError(f"model {text}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest")
    name, alias, version = m["name"], m["alias"], m["version"]
    client = MlflowClient()
    try:
        if alias is not None:
            version = str(client.get_model_version_by_alias(name, alias).version)
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"model {text}: registered model {name!r} has no versions")
            version = str(max(int(v.version) for v in versions))
        else:
            client.get_model_version(name, version)
    except MlflowException as e:
        raise ValueError(f"model {text}: {str(e).splitlines()[0]}") from None
    target = Path(cache_dir) / name / version
    folder = _model_folder_in(target) if target.is_dir() else None
    if folder is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # complete downloads only: a crash leaves a dot-folder, not a half cache
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        folder = _model_folder_in(target)
        if folder is None:
            raise ValueError(f"model {text}: version {version} holds no exported model folder (labse_export.json)")
    return ModelSource(folder=folder, uri=text, name=name, version=version)


def load_registered(name_or_uri: str, alias: str | None = DEFAULT_ALIAS):
    """``mlflow.pyfunc.load_model`` for a registered model name (alias, else latest) or any model URI
    (``models:/...``, ``runs:/...``, a path)."""
    uri = name_or_uri if ("/" in name_or_uri or ":" in name_or_uri) else registered_uri(name_or_uri, alias)
    return mlflow.pyfunc.load_model(uri)


# ---------------------------------------------------------------------------------------------------
# Registry: a new version per trained model; the alias moves only when the new one is better.


@dataclass(frozen=True)
class GateScores:
    """A model's numbers for the registry gate, measured on the same data for every model compared."""

    primary: float
    """The deciding metric: Tatoeba accuracy (mean of both directions) over the run's languages; the
    held-out pair accuracy when no Tatoeba metric is given."""
    secondary: float | None = None
    """The tie-breaker: held-out pair retrieval accuracy (None when it is already the primary)."""


TIE_TOLERANCE = 1e-9
"""Metrics closer than this are a tie (both models are scored on the same sentences, so a real
difference is at least one retrieval, 1/n)."""


def gate_decision(new: GateScores, champion: GateScores | None, tol: float = TIE_TOLERANCE) -> tuple[bool, str]:
    """Whether the new version takes the alias, and why. The rule, in order:

    1. no champion yet: the new version becomes champion;
    2. a higher primary metric wins, a lower one loses;
    3. on a primary tie, the secondary metric decides the same way;
    4. a tie on both: the new version is promoted (same quality, newer data and code; this is the
       "at least as good" rule the registry has always followed).
    """
    if champion is None:
        return True, "no champion yet"
    if new.primary > champion.primary + tol:
        return True, "higher primary metric"
    if new.primary < champion.primary - tol:
        return False, "lower primary metric"
    if new.secondary is not None and champion.secondary is not None:
        if new.secondary > champion.secondary + tol:
            return True, "primary tie, higher held-out accuracy"
        if new.secondary < champion.secondary - tol:
            return False, "primary tie, lower held-out accuracy"
    return True, "tie on both metrics: the newer version wins"


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
    primary_name: str = "eval_acc"
    """What the primary metric is (``tatoeba_mean`` in the pipeline)."""
    primary: float | None = None
    """The new version's primary metric."""
    champion_primary: float | None = None
    """The previous holder's primary metric, measured now on the same data."""
    reason: str = ""
    """Which rule of ``gate_decision`` decided."""
    columns: dict[str, float] = field(default_factory=dict)
    """Other numbers the primary evaluation gave for the new version (e.g. XTREME-36 and the 14 XNLI
    languages beside the all-112 mean): shown, recorded as version tags, not deciding."""
    champion_columns: dict[str, float] = field(default_factory=dict)
    """The same numbers for the previous holder."""


PrimaryValue = float | Mapping[str, float]
"""A primary evaluation's result: the deciding number, or {primary_name: it, other columns...}."""


def _split_primary(value: PrimaryValue, primary_name: str) -> tuple[float, dict[str, float]]:
    if isinstance(value, Mapping):
        if primary_name not in value:
            raise ValueError(f"the primary evaluation gave {sorted(value)}, not {primary_name!r}")
        return float(value[primary_name]), {k: float(v) for k, v in value.items() if k != primary_name}
    return float(value), {}


def register_and_promote(
    model_dir: str | os.PathLike[str],
    eval_pairs: Sequence[tuple[str, str]],
    name: str = "labse",
    alias: str = DEFAULT_ALIAS,
    *,
    primary: Callable[[Callable[[list[str]], np.ndarray]], PrimaryValue] | None = None,
    primary_name: str = "tatoeba_mean",
    candidate_primary: PrimaryValue | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    known_primaries: Mapping[str, PrimaryValue] | None = None,
    tags: Mapping[str, str] | None = None,
    precision: str = "fp32",
) -> Promotion:
    """Log ``model_dir`` into the active run, register it as a new version of ``name`` and move ``alias``
    (``models:/name@champion``) to it when ``gate_decision`` says so; otherwise the new version is
    ``@challenger`` and the holder keeps the alias.

    ``primary``: the deciding metric as a function of an embedding function (the pipeline passes Tatoeba
    accuracy over all 112 languages, on the fixed sample); the holder is measured with it now, each model
    with its own tokenizer, so the comparison is fair even when the holder was trained on other data. It
    may return a mapping: ``primary_name``'s value decides, the others are columns recorded beside it
    (version tags ``<column>`` and ``<alias>_<column>``).
    ``candidate_primary``: the new version's value when the evaluation stage already measured it with
    the same function. ``known_primaries``: {registered version: its primary value} measured in this process
    with the same function (a version the pipeline registered minutes ago), so the holder is not measured
    twice. The held-out pairs ``eval_pairs`` give the secondary metric (the primary one when
    ``primary`` is None). Version tags record both numbers for both models and the rule that decided,
    the run that logged the model (``source_run_id``) and ``tags``: what produced it (the pipeline passes
    ``flows.lineage.lineage_tags``: git commit, data manifest hashes, preset, Prefect flow run).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from labse_core.embed import encode, load_for_inference

    if not eval_pairs:
        raise ValueError("register_and_promote needs held-out pairs to compare models on")
    client = MlflowClient()
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None

    def scores(embed, known_primary: PrimaryValue | None = None) -> tuple[GateScores, float, dict[str, float]]:
        acc = text_retrieval_accuracy(embed, eval_pairs)["eval/acc"]
        if primary is None:
            return GateScores(acc), acc, {}
        value, columns = _split_primary(known_primary if known_primary is not None else primary(embed), primary_name)
        return GateScores(value, acc), acc, columns

    champion_scores, champion_acc, champion_columns = None, None, {}
    if holder is not None:
        # The holder's own folder through labse_core.embed (its pooling, prefix and tokenizer).
        cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="labse-gate-"))
        src = resolve_model_source(f"models:/{name}/{holder.version}", cache)
        # Loaded as the evaluate stage loads a folder (labse_core.embed.load_for_inference): the same arithmetic
        champ = load_for_inference(src.folder, precision)
        known = (known_primaries or {}).get(str(holder.version))
        champion_scores, champion_acc, champion_columns = scores(lambda xs: encode(xs, champ, progress=False), known)
    model = load_for_inference(model_dir, precision)
    new_scores, acc, columns = scores(lambda xs: encode(xs, model, progress=False), candidate_primary)
    promoted, reason = gate_decision(new_scores, champion_scores)
    # Publication order, so that a crash of this process or of the MLflow server at any point leaves
    # nothing half-written in the registry:
    # 1. the model's files: log_model returns once every artifact is uploaded (no version names them yet);
    # 2. the version together with all its tags in one request (one database transaction: never a
    #    version without its lineage; tags set one by one afterwards could be cut off half-way);
    # 3. the alias, last: it only ever moves to a version that is complete.
    info = _log_encoder(model_dir)
    extra = dict(tags or {})
    tags = extra | {"source_run_id": info.run_id, "eval_acc": f"{acc:.6f}", "eval_n": str(len(eval_pairs)),
                    "gate_primary_metric": primary_name if primary else "eval_acc", "gate_decision": reason}
    if primary is not None:
        tags[primary_name] = f"{new_scores.primary:.6f}"
        tags |= {k: f"{v:.6f}" for k, v in columns.items()}
        tags["gate_precision"] = precision
    if holder is not None:
        tags |= {f"{alias}_version_compared": str(holder.version), f"{alias}_eval_acc": f"{champion_acc:.6f}"}
        if primary is not None:
            tags[f"{alias}_{primary_name}"] = f"{champion_scores.primary:.6f}"
            tags |= {f"{alias}_{k}": f"{v:.6f}" for k, v in champion_columns.items()}
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client.set_registered_model_alias(name, alias if promoted else "challenger", version)
    log.info("%s version %s: %s %.4f vs %s %s; %s (%s)", name, version, primary_name if primary else "eval_acc",
             new_scores.primary, alias, f"{champion_scores.primary:.4f}" if champion_scores else "none",
             f"now @{alias}" if promoted else "@challenger", reason)
    return Promotion(
        name, version, info.model_uri, acc, str(holder.version) if holder else None, champion_acc, promoted,
        primary_name if primary else "eval_acc", new_scores.primary,
        champion_scores.primary if champion_scores else None, reason, columns, champion_columns,
    )
