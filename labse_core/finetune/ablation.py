"""Small ablations of the fine-tuning stage: margin 0 vs LaBSE's 0.3, warm start vs random init.

LaBSE (Feng et al. 2022) reports that the additive margin helps retrieval (Table 5: m = 0 vs 0.3)
and that pre-training matters most when fine-tuning data is scarce (Sec. 6.1, 20% of the pairs).
`ablation_arms` lays out those arms; `run_arm` trains one. Every arm runs on the same shards, seed,
steps and held-out set (the held-out split is a hash of the pair, so every arm evaluates on exactly
the same pairs) with `train_fraction` of the training pairs; each arm is a fresh run (resume off)
named after the arm. Its result is the held-out bidirectional retrieval accuracy at the end of
training (`final_accuracy`; not the best evaluation: with few steps that could be the initial weights').

    from labse_core.finetune.ablation import ablation_arms, run_arm, final_accuracy
    from labse_core.finetune.config import tiny_cpu
    base = tiny_cpu(vocab_size=8000, max_steps=300)
    for arm in ablation_arms(base, pretrained="labse_home/checkpoints/pretrain/tiny-cpu/final"):
        print(arm.name, final_accuracy(run_arm(arm)))
    # margin=0.0,init=random 0.41 / margin=0.3,init=random 0.47 / margin=0.0,init=pretrained ...

The Prefect flow `labse-ablation` (flows/ablation.py, `labse ablation`) runs the arms as MLflow child
runs of one parent and plots them side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from labse_core.finetune.config import FinetuneConfig
from labse_core.finetune.train import FinetuneResult, run
from storage.layout import Layout


@dataclass(frozen=True)
class Arm:
    name: str
    """"margin=<m>,init=<random|pretrained|imported>"."""
    margin: float
    init: str
    """"random", "pretrained" (our MLM+TLM encoder) or "imported" (a pretrained model such as the
    multilingual-e5 of `labse import-encoder`)."""
    config: FinetuneConfig
    slug: str | None = None
    """A lever arm's name as MLflow allows it in metric names (None: the margin/init key)."""

    @property
    def key(self) -> str:
        """The arm in MLflow metric names (no "=" or "," allowed there): "margin_0.3.pretrained"."""
        return self.slug or f"margin_{self.margin}.{self.init}"


IMPORTED_RECIPE = ("lr", "warmup_steps", "dropout", "freeze_word_embeddings", "freeze_layers", "max_len")
"""Fields an `imported` arm takes from its own recipe (`e5_cpu`) rather than from `base`: a tiny
encoder trained from scratch wants lr 1e-3, which would wipe out a pretrained e5 in a few steps."""


def ablation_arms(
    base: FinetuneConfig,
    pretrained: str | None,
    margins: Sequence[float] = (0.0, 0.3),
    train_fraction: float = 0.2,
    imported: str | None = None,
) -> list[Arm]:
    """One arm per (init, margin): random init always, warm start from `pretrained` (a pretraining
    `final/`, HF BERT or exported model folder) and from `imported` (an imported pretrained model
    folder, e.g. multilingual-e5-small) when given. Arms differ from `base` only in margin,
    init_from, run_name (and, for `imported`, the IMPORTED_RECIPE fields of `e5_cpu`), and share
    train_fraction, steps, seed and held-out pairs; no resume, no final/ export, no start evaluation."""
    from labse_core.finetune.config import e5_cpu

    if not margins:
        raise ValueError("an ablation needs at least one margin")
    inits = (
        {"random": None}
        | ({"pretrained": pretrained} if pretrained else {})
        | ({"imported": imported} if imported else {})
    )
    recipe = e5_cpu()
    arms = []
    for init_name, init_from in inits.items():
        own = {k: getattr(recipe, k) for k in IMPORTED_RECIPE} if init_name == "imported" else {}
        for m in margins:
            cfg = base.model_copy(
                update=own | {
                    "run_name": f"{base.run_name}-ablation-m{m}-{init_name}",
                    "loss": replace(base.loss, margin=float(m)),
                    "init_from": init_from,
                    "train_fraction": train_fraction,
                    "resume": False,
                    "export_final": False,
                    "eval_at_start": False,
                }
            )
            # Re-validated: model_copy does not run the validators.
            arms.append(Arm(f"margin={m},init={init_name}", float(m), init_name, FinetuneConfig(**cfg.model_dump())))
    return arms


def run_arm(arm: Arm, layout: Layout | None = None, **overrides) -> FinetuneResult:
    """Train one arm (`overrides`: e.g. the MLflow parent run id)."""
    cfg = arm.config if not overrides else FinetuneConfig(**(arm.config.model_dump() | overrides))
    return run(cfg, layout)


def final_accuracy(result: FinetuneResult) -> float:
    """Held-out accuracy after the last step (NaN when the run had no held-out pairs)."""
    return float(result.evals[-1]["eval/acc"]) if result.evals else math.nan


# ---------------------------------------------------------------------------------------------------
# Recipe levers: what moves Tatoeba over all 112 languages


@dataclass(frozen=True)
class Lever:
    """One arm of the recipe ablation: a name and the FinetuneConfig fields it changes from the base
    recipe (the other arms' fields stay as the base has them)."""

    name: str
    overrides: dict


def lever_arms(base: FinetuneConfig, levers: Sequence[Lever]) -> list[Arm]:
    """One fresh run per lever (resume off, no start evaluation, its own run name); every arm shares
    the base's warm start, seed, data and held-out pairs, so what differs is the lever."""
    names = [lv.name for lv in levers]
    if len(set(names)) != len(names):
        raise ValueError(f"lever names must be distinct: {names}")
    unknown = sorted({k for lv in levers for k in lv.overrides} - set(FinetuneConfig.model_fields))
    if unknown:
        raise ValueError(f"levers set unknown FinetuneConfig fields: {', '.join(unknown)}")
    arms = []
    for lv in levers:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in lv.name)
        data = base.model_dump() | lv.overrides | {"run_name": f"{base.run_name}-lever-{slug}", "resume": False,
                                                   "eval_at_start": False}
        cfg = FinetuneConfig(**data)
        arms.append(Arm(lv.name, cfg.loss.margin, "imported" if cfg.init_from else "random", cfg, f"lever.{slug}"))
    return arms
