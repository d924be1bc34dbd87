"""Small ablations of the fine-tuning stage: margin 0 vs LaBSE's 0.3, warm start vs random init.

Each arm is one `run` on the same shards, seed and held-out set (the held-out split is a hash of the
pair, so every arm evaluates on exactly the same pairs) with `train_fraction` of the training pairs.
The result is each arm's held-out bidirectional retrieval accuracy at the end of training (not the
best evaluation: with few steps that could be the initial weights').

    from labse_core.finetune.ablation import run_ablation
    from labse_core.finetune.train import tiny_cpu
    accs = run_ablation(tiny_cpu(pair_shards=..., tokenizer_dir=..., vocab_size=...),
                        pretrained="labse_home/checkpoints/pretrain/tiny-cpu/final")
    # {"margin=0.0,init=pretrained": 0.71, "margin=0.3,init=pretrained": 0.78, ...}
"""

from __future__ import annotations

from collections.abc import Sequence

from labse_core.finetune.train import FinetuneConfig, run
from storage.layout import Layout


def run_ablation(
    base: FinetuneConfig,
    pretrained: str | None,
    layout: Layout | None = None,
    margins: Sequence[float] = (0.0, 0.3),
    train_fraction: float = 0.2,
) -> dict[str, float]:
    """Held-out accuracy (eval/acc after the last step) per arm "margin=<m>,init=<pretrained|random>".

    `pretrained`: a folder for the warm-started arms (pretraining final/, HF BERT or exported model);
    None runs the random-init arms only. Each arm is a fresh run (resume off) named after the arm
    under base.run_name, without MLflow unless `base` asks for it.
    """
    inits = {"random": None} | ({"pretrained": pretrained} if pretrained else {})
    out: dict[str, float] = {}
    for init_name, init_from in inits.items():
        for m in margins:
            arm = f"margin={m},init={init_name}"
            cfg = base.model_copy(
                update={
                    "run_name": f"{base.run_name}-ablation-m{m}-{init_name}",
                    "margin": m,
                    "init_from": init_from,
                    "train_fraction": train_fraction,
                    "resume": False,
                    "export_final": False,
                    "eval_at_start": False,
                }
            )
            result = run(FinetuneConfig(**cfg.model_dump()), layout)
            out[arm] = float(result.evals[-1]["eval/acc"]) if result.evals else float("nan")
    return out
