"""`labse nmt-check`: train a small translation model on mined, gold and unfiltered pairs of the same size
and compare chrF/BLEU (``flows.nmt_check``).

    labse nmt-check [--src-lang de] [--model models:/labse@champion] [--minutes 12] [--steps N] [--docs DIR]
    labse nmt-check --preset full          # de-en and zh-en

Bad input (no fetched pages, a language without pages, no pair above the threshold) is one line on stderr
and exit code 2; nothing is published then. Registered in ``flows/cli.py`` by ``cli_nmt.register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_console import console
from flows.cli_evaluate import _one_line_errors


def register(app: typer.Typer) -> None:
    app.command("nmt-check")(nmt_check)


def nmt_check(
    src_lang: Annotated[str | None, typer.Option("--src-lang", help="Translated side: de, fr, zh, ja, ... (target: en).")] = None,
    preset: Annotated[str | None, typer.Option(help="quick (de-en) or full (de-en and zh-en); --src-lang overrides.")] = None,
    model: Annotated[str, typer.Option(help="The encoder that mines: folder or models:/NAME@ALIAS.")] = "models:/labse@champion",
    docs: Annotated[Path | None, typer.Option(help="Man pages root from `labse fetch-docs manpages` (default: the lake's).")] = None,
    minutes: Annotated[float | None, typer.Option(help="Training time budget per arm (minutes).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per arm at most.")] = None,
    max_pairs: Annotated[int | None, typer.Option("--max-pairs", help="Training pairs per arm at most.")] = None,
    arms: Annotated[str, typer.Option(help="Comma-separated: mined, gold, unfiltered.")] = "mined,gold,unfiltered",
    seed: Annotated[int, typer.Option(help="Page split, samples and training seed.")] = 0,
) -> None:
    """Train one small Marian model per arm (mined / gold / unfiltered pairs, same size, budget and seed) and
    score chrF/BLEU on held-out gold pairs (results -> eval_results, eval_set nmt-<arm>)."""
    from flows.nmt_check import PRESETS, NmtCheckConfig, NmtCheckError, run_nmt_check
    from labse_core.langcodes import UnknownLanguage
    from labse_core.mining.knn import MiningInputError
    from labse_core.nmt import NmtError

    with _one_line_errors(NmtCheckError, NmtError, MiningInputError, UnknownLanguage, ValueError, OSError):
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"--preset {preset}: unknown; presets: {', '.join(PRESETS)}")
        base = PRESETS[preset or "quick"]() if src_lang is None else [NmtCheckConfig(src_lang=src_lang)]
        configs = []
        for c in base:
            nmt = c.nmt.model_copy(update={k: v for k, v in (("max_minutes", minutes), ("max_steps", steps)) if v is not None})
            configs.append(NmtCheckConfig(**(c.model_dump(exclude={"nmt"}) | {
                "model": model, "docs": docs, "nmt": nmt, "max_train_pairs": max_pairs, "seed": seed,
                "arms": [a.strip() for a in arms.split(",") if a.strip()]})))
        for cfg in configs:
            with _ArmBars() as bars:
                report = run_nmt_check(cfg, progress=bars)
            s = report.summary
            console.print(f"{s['pair']}: mined {s['mine']['kept']:,} pairs ({s['mine']['candidates']:,} candidates); "
                          f"{next(iter(s['train_pairs'].values())):,} pairs per arm, test {s['data']['test']:,} held-out gold pairs",
                          highlight=False)
            for arm, r in s["arms"].items():
                console.print(f"  {arm:<10} chrF {r['chrf']:5.1f}  BLEU {r['bleu']:5.1f}  ({r['steps']:,} steps, "
                              f"{r['train_seconds'] / 60:.1f} min, stopped by {r['stopped_by']})", highlight=False)
            if s["mined_over_gold_chrf"] is not None:
                console.print(f"  mined / gold chrF {s['mined_over_gold_chrf']:.1%} (goal >= 90%)", highlight=False)
            if s["mined_minus_unfiltered_chrf"] is not None:
                console.print(f"  mined - unfiltered chrF {s['mined_minus_unfiltered_chrf']:+.1f} (goal >= +5)", highlight=False)
            console.print(f"eval_results: {report.rows} rows (eval_set nmt-<arm>, run {report.run_id}); summary "
                          f"{report.summary_path}; plot {report.plot_path}")


class _ArmBars:
    """A tqdm bar per arm on a terminal (stderr); nothing when stderr is not a terminal."""

    def __enter__(self) -> _ArmBars:
        import sys

        self._tty = sys.stderr.isatty()
        self._bar = None
        self._arm = None
        return self

    def __call__(self, arm: str, step: int, total: int, loss: float) -> None:
        if not self._tty:
            return
        from tqdm import tqdm

        if arm != self._arm:
            if self._bar is not None:
                self._bar.close()
            self._bar, self._arm = tqdm(total=total, desc=f"nmt {arm}", unit="step", leave=False), arm
        self._bar.n = step
        self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self._bar.refresh()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
