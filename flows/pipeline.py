"""The end-to-end Prefect flow ``labse-pipeline``.

Stages: ``ingest`` (gettext catalogs -> ``corpus_raw``), ``prepare`` (``corpus_raw`` -> ``corpus_clean`` +
``corpus_rejects``), ``vocab`` (sentencepiece + HF tokenizer), ``shard`` (pair/TLM/MLM shards + TFRecord),
``pretrain`` (MLM + TLM, time-budgeted), ``finetune`` (dual encoder with the additive margin softmax,
warm-started from ``pretrain``, time-budgeted), ``evaluate`` (Tatoeba over the run's languages, BUCC-style
F1 and xSIM on the held-out pairs -> ``eval_results``), ``mine`` (a BUCC-style set of held-out pairs mined
like ``labse mine`` does -> ``mined``, with its F1 against the hidden translations) and ``register`` (the
best model becomes a new version of ``labse`` and ``models:/labse@champion`` when it beats the current
champion on Tatoeba over the run's languages, held-out pair accuracy breaking ties:
``labse_core.mlflow_model.gate_decision``). Each stage is a Prefect task (``flows.tasks``) run through its
record (``flows.stages``: what it reads and writes, hence when the cache skips it); this module is the DAG
only. The settings and the named presets are in ``flows.presets``.

Run it::

    labse demo                       # preset "demo", embedded Prefect + MLflow under LABSE_HOME
    labse pipeline --preset full     # every named preset: flows.presets.PRESETS
    python -m flows.pipeline         # same as `labse demo`

With ``PREFECT_API_URL`` set, runs are recorded by that Prefect server instead of the ephemeral one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows import stages
from flows.presets import PipelineConfig, RegisterStageConfig, demo
from flows.reporting import mlflow_run_link, publish_markdown
from flows.stages import Stage, held_out_for
from flows.tasks import StageSummary
from storage import catalog, tracking
from storage.layout import Layout
from storage.locks import lake_lock


class PipelineSummary(BaseModel):
    preset: str
    home: str
    mlflow_run_id: str
    prefect_flow_run_id: str | None
    seconds: float
    stages: list[StageSummary]
    views: list[str]
    cached: list[str] = Field(default_factory=list, description="Stages skipped: config, inputs and code unchanged.")


def _register_config(config: PipelineConfig) -> RegisterStageConfig:
    """The registry gate's settings in this run (Tatoeba read where the evaluate stage reads it)."""
    cfg = RegisterStageConfig(name=config.registered_model, preset=config.preset)
    return cfg if config.evaluate is None else cfg.model_copy(update={"tatoeba_data": config.evaluate.tatoeba_data})


def _evaluate_and_register_import(config: PipelineConfig, imported: StageSummary, fraction: float, eval_pairs: list,
                                  run: Callable[..., Any]) -> list[StageSummary]:
    """Tatoeba (zero-shot) for the imported model, then the registry gate for it (stage names suffixed)."""
    out: list[StageSummary] = []
    evaluation: dict[str, Any] = {}
    if config.evaluate is not None:
        tatoeba_only = config.evaluate.model_copy(update={"bucc": False})
        ev = run(stages.EVALUATE.variant("imported"), tatoeba_only, model_dir=imported.path, held_out_fraction=fraction)
        out.append(ev.model_copy(update={"stage": "evaluate (imported)"}))
        evaluation = ev.stats
    if config.registered_model and eval_pairs:
        reg = run(stages.REGISTER.variant("imported"), _register_config(config), model_dir=imported.path,
                  finetune_run_id=imported.mlflow_run_id, eval_pairs=eval_pairs, evaluation=evaluation)
        out.append(reg.model_copy(update={"stage": "register (imported)"}))
    return out


def _stage_id(summary: StageSummary) -> str:
    """The cache's name of a stage ("evaluate (imported)" -> "evaluate-imported")."""
    return summary.stage.replace(" (imported)", "-imported")


@flow(name="labse-pipeline", log_prints=True)
def labse_pipeline(config: PipelineConfig | None = None) -> PipelineSummary:
    """Raw corpora in; corpus, vocabulary, encoder, evaluation and mined bitext out. A stage whose config,
    inputs and code are unchanged since it last ran is skipped (``flows.stage_cache``)."""
    config = config or demo()
    t0 = time.perf_counter()
    layout = Layout.from_env().ensure()
    tracking.configure(layout)
    skipped: list[str] = []

    # One pipeline (or data stage) at a time per home: a second one waits here (storage.locks).
    with lake_lock(layout, "labse pipeline"), mlflow.start_run(run_name=f"labse-pipeline-{config.preset}") as parent:
        pid = parent.info.run_id

        def run(stage: Stage, cfg: Any, **args: Any) -> Any:
            result, cached = stage.run(cfg, pid, use_cache=config.cache, **args)
            if cached:
                skipped.append(stage.name)
            return result

        mlflow.set_tags({"pipeline": "labse-pipeline", "preset": config.preset,
                         "prefect_flow_run_id": str(flow_run.get_id())})
        mlflow.log_params(tracking.flat_params(config.model_dump(mode="json")))
        summaries = [run(stages.INGEST, config.ingest)]
        summaries += run(stages.PREPARE, config.prepare)
        summaries.append(run(stages.VOCAB, config.vocab))
        summaries += run(stages.SHARD, held_out_for(config.shard, config.finetune))
        init_from = None
        if config.pretrain is not None:
            summaries.append(run(stages.PRETRAIN, held_out_for(config.pretrain, config.finetune)))
            init_from = summaries[-1].path
        imported = None
        if config.import_encoder is not None:
            imported = run(stages.IMPORT, config.import_encoder)
            summaries.append(imported)
            init_from = imported.path  # a pretrained multilingual model beats our tiny pretraining
        if config.finetune is not None:
            fine, eval_pairs = run(stages.FINETUNE, config.finetune, init_from=init_from)
            summaries.append(fine)
            model_dir, fraction = fine.path, config.finetune.eval_fraction
            known: dict[str, float] = {}
            if imported is not None:
                # The import, zero-shot, measured and registered first: the gate then compares the
                # fine-tuned model against it, so the champion never falls below it.
                summaries += _evaluate_and_register_import(config, imported, fraction, eval_pairs, run)
                if summaries[-1].stage == "register (imported)" and summaries[-1].stats.get("primary") is not None:
                    known[str(summaries[-1].stats["registered_version"])] = summaries[-1].stats["primary"]
            evaluation: dict[str, Any] = {}
            trained = fine.stats.get("best_step") is not None
            if config.evaluate is not None and trained:
                summaries.append(run(stages.EVALUATE, config.evaluate, model_dir=model_dir, held_out_fraction=fraction))
                evaluation = summaries[-1].stats
            if config.mine is not None and trained:
                tuned = evaluation.get("bucc_thresholds", {}).get(config.mine.lang)
                summaries.append(run(stages.MINE, config.mine, model_dir=model_dir, held_out_fraction=fraction,
                                     threshold=tuned))
            if config.registered_model and trained and eval_pairs:
                summaries.append(run(stages.REGISTER, _register_config(config), model_dir=model_dir,
                                     finetune_run_id=fine.mlflow_run_id, eval_pairs=eval_pairs, evaluation=evaluation,
                                     known_primaries=known))
        seconds = time.perf_counter() - t0
        mlflow.log_metric("pipeline_seconds", seconds)
        mlflow.set_tag("cached_stages", ",".join(skipped))
        get_run_logger().info("skipped (cached: config, inputs and code unchanged): %s", ", ".join(skipped) or "none")
        publish_markdown("pipeline", [f"### labse-pipeline ({config.preset}) in {seconds:.0f}s",
                                      "| stage | dataset | rows | seconds | cached |", "|---|---|---:|---:|---|",
                                      *[f"| {s.stage} | {s.dataset} | {s.rows:,} | {s.seconds:.1f} | "
                                        f"{'yes' if _stage_id(s) in skipped else ''} |" for s in summaries],
                                      f"- MLflow parent run: {mlflow_run_link(pid)}",
                                      f"- skipped (unchanged): {', '.join(skipped) or 'none'}"],
                         table=[{"stage": s.stage, "dataset": s.dataset, "rows": s.rows, "seconds": round(s.seconds, 1),
                                 "cached": _stage_id(s) in skipped} for s in summaries])
        if seconds > config.time_budget_minutes * 60:
            get_run_logger().warning("run took %.0fs, over its %.0f min budget", seconds, config.time_budget_minutes)
    return PipelineSummary(
        preset=config.preset, home=str(layout.home), mlflow_run_id=parent.info.run_id,
        prefect_flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None, seconds=seconds,
        stages=summaries, views=catalog.refresh(layout), cached=skipped,
    )


if __name__ == "__main__":
    from flows.env import bootstrap

    bootstrap()
    print(labse_pipeline(demo()).model_dump_json(indent=2))
