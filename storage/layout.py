"""The one place that knows where things live under ``LABSE_HOME``.

``LABSE_HOME`` (environment variable, default ``./labse_home`` in the working directory) holds::

    LABSE_HOME/
      lake/                      data lake: one folder per dataset (see storage.schemas.DATASETS)
        <dataset path>/          e.g. corpus/raw/lang=de/part-00000.parquet
        vocab/                   spm.model, hf/ (Hugging Face tokenizer folder), vocab.json
        shards/tfrecord/         TFRecord copies of the pair shards
          _manifest.json         row counts per partition and per file, producer, stats
        docs/<source>/           raw documents, as their source ships them (``labse fetch-docs``), e.g.
          manpages/<lang>/manN/  Debian's translated man pages (``de``, ``zh_CN``) and ``en/`` the English
                                 pages of the same names; ``_manifest.json`` packages, versions, counts
        _staging/                datasets being written; swapped into place when complete
      catalog.duckdb             DuckDB catalog: one view per dataset (`labse sql`)
      mlflow/mlflow.db           MLflow tracking + model registry (sqlite)
      mlflow/artifacts/          MLflow artifacts
      prefect/                   PREFECT_HOME for the embedded (ephemeral) Prefect API
      checkpoints/<stage>/<run>/ a training run: step-N/ (resumable state), final/, best/ (fine-tuning)
      runs/                      per-run scratch (logs, plots) before they are logged

Nothing here creates directories on import; ``Layout.ensure()`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "LABSE_HOME"
EVAL_ENV = "LABSE_EVAL_SETS"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME_NAME = "labse_home"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The platform home: the argument, else ``$LABSE_HOME``, else ``./labse_home``; always absolute."""
    raw = home if home is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME_NAME
    if "://" in str(raw):  # s3://... would silently become a local folder named "s3:"
        setting = "--home" if home is not None else HOME_ENV
        raise ValueError(f"{setting}={raw}: the platform home is a local (or shared) folder; put the lake on an "
                         "object store with LABSE_LAKE_URL and `labse lake push|pull` (infra/README.md)")
    return Path(raw).expanduser().resolve()


def default_eval_sets() -> list[Path]:
    """Evaluation sets that training data must not overlap: ``$LABSE_EVAL_SETS`` (paths separated by
    ``os.pathsep``), else the Tatoeba v1 test set beside the checkout (``../shared/data/tatoeba/v1``)
    when it is there, else none."""
    if os.environ.get(EVAL_ENV):
        return [Path(p) for p in os.environ[EVAL_ENV].split(os.pathsep) if p]
    tatoeba = REPO_ROOT.parent / "shared" / "data" / "tatoeba" / "v1"
    return [tatoeba] if tatoeba.is_dir() else []


def default_tatoeba_dir() -> Path:
    """The Tatoeba v1 folder beside the checkout (``../shared/data/tatoeba/v1``), or ``$LABSE_EVAL_SETS``'s."""
    sets = [p for p in default_eval_sets() if p.is_dir()]
    return sets[0] if sets else Path("tatoeba/v1")


@dataclass(frozen=True)
class Layout:
    """Every path the platform uses, derived from one home directory."""

    home: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> Layout:
        return cls(resolve_home(home))

    # -- data lake --------------------------------------------------------------------------
    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def staging(self) -> Path:
        """Datasets under construction; same filesystem as the lake so a rename publishes them."""
        return self.lake / "_staging"

    def dataset_dir(self, relpath: str) -> Path:
        return self.lake / relpath

    @property
    def vocab(self) -> Path:
        """The current vocabulary: ``spm.model``, ``hf/`` (tokenizer folder), ``vocab.json``."""
        return self.lake / "vocab"

    def docs(self, source: str) -> Path:
        """Raw documents of one source (``manpages``): a folder per language that document mining reads
        (``labse_core.readers.documents``); published whole, as one folder (``labse fetch-docs``)."""
        return self.lake / "docs" / source

    @property
    def tfrecords(self) -> Path:
        """TFRecord copies of the shards (``pairs-*.tfrecord``) and their ``_manifest.json``."""
        return self.lake / "shards" / "tfrecord"

    # -- catalog, tracking, orchestration ---------------------------------------------------
    @property
    def catalog_db(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    # -- training ---------------------------------------------------------------------------
    def checkpoints(self, stage: str, run_name: str) -> Path:
        """A training run's folder: ``step-N/`` checkpoints and its outputs (``final/``, ``best/``);
        ``stage`` is ``pretrain`` or ``finetune``, ``run_name`` the config's."""
        return self.home / "checkpoints" / stage / run_name

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    def run_dir(self, run_id: str) -> Path:
        """Scratch of one MLflow/Prefect run (plots, logs) before they are logged."""
        return self.runs / run_id

    @property
    def model_cache(self) -> Path:
        """Registered model versions downloaded to embed with (``NAME/VERSION/``); versions never change."""
        return self.home / "cache" / "models"

    def imported_model(self, name: str) -> Path:
        """A pretrained encoder imported as a model folder (``labse import-encoder``), e.g.
        ``models/multilingual-e5-small``."""
        return self.home / "models" / name

    def ensure(self) -> Layout:
        for d in (self.lake, self.staging, self.mlflow_dir, self.mlflow_artifacts, self.prefect_home, self.runs):
            d.mkdir(parents=True, exist_ok=True)
        return self
