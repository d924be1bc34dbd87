"""The downstream NMT check of mined bitext, per language pair, as the docs table shows it.

    python -m bench.nmt_check --preset full                 # de-en and zh-en (about 40 min each on 2 cores)
    python -m bench.nmt_check --src-lang de --minutes 12    # one pair
    python -m bench.nmt_check --src-lang zh --arms mined,unfiltered   # every mined pair, no gold arm

Each pair runs ``labse nmt-check`` (``flows.nmt_check.run_nmt_check``) in ``LABSE_HOME`` (the man pages from
``labse fetch-docs manpages``, the encoder ``--model``, default ``models:/labse@champion``): one small Marian
model trained from scratch per arm (mined / gold / unfiltered pairs, the same number of each, the same seed,
step and time budget), chrF and BLEU on held-out gold pairs. The summary of every pair goes to
``bench/results/nmt_check.json`` (pairs measured earlier are kept unless measured again), with the machine's
load while each ran; docs/evaluation.md renders it (``python -m bench.report``).

Goals (issue: mined bitext that trains a translation model): mined >= 90% of gold's chrF; mined >= unfiltered
+ 5 chrF; one arm <= 15 min on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import (
    RESULTS,
    Result,
    _busy_cpu_s,
    command_line,
    load_flag,
    loadavg,
    machine,
    versions,
    write_result,
)

OUT = RESULTS / "nmt_check.json"


def _slim(summary: dict) -> dict:
    """The summary without what the docs never show (curves kept: they are the plot's data)."""
    arms = {arm: {k: v for k, v in r.items() if k not in ("samples",)} | {"samples": r.get("samples", [])[:3]}
            for arm, r in summary["arms"].items()}
    return summary | {"arms": arms}


def main(argv: list[str] | None = None) -> int:
    from flows.nmt_check import ARMS, PRESETS, NmtCheckConfig, run_nmt_check

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--src-lang", default=None, help="One pair xx-en instead of the preset's.")
    p.add_argument("--model", default="models:/labse@champion")
    p.add_argument("--minutes", type=float, default=None, help="Training budget per arm (default: the config's).")
    p.add_argument("--steps", type=int, default=None, help="Training steps per arm (default: the config's).")
    p.add_argument("--arms", default=None, help="Comma-separated arms (default: mined,gold,unfiltered). Without gold, "
                   "every mined pair trains; the record is kept under 'xx-en mined/unfiltered' beside the pair's own.")
    a = p.parse_args(argv)
    configs = PRESETS[a.preset]() if a.src_lang is None else [NmtCheckConfig(src_lang=a.src_lang)]
    if a.arms is not None:
        configs = [c.model_copy(update={"arms": NmtCheckConfig(arms=a.arms.split(",")).arms}) for c in configs]
    old = json.loads(OUT.read_text())["metrics"]["pairs"] if OUT.is_file() else {}
    pairs = dict(old)
    for cfg in configs:
        nmt = cfg.nmt.model_copy(update={k: v for k, v in (("max_minutes", a.minutes), ("max_steps", a.steps)) if v is not None})
        cfg = cfg.model_copy(update={"model": a.model, "nmt": nmt})
        before, busy0, cpu0, t0 = loadavg()[0], _busy_cpu_s(), time.process_time(), time.monotonic()
        report = run_nmt_check(cfg)
        wall, own = time.monotonic() - t0, time.process_time() - cpu0
        busy = _busy_cpu_s()
        foreign = None if busy is None or busy0 is None else max(0.0, busy - busy0 - own)
        s = _slim(report.summary)
        s["wall_s"] = wall
        s["flags"] = load_flag(own, wall, foreign, before, loadavg()[0])
        # Pairs measured by earlier runs are kept: each says which command made it and on what CPU.
        s["command"], s["machine"] = command_line(), machine()
        key = s["pair"] if set(cfg.arms) == set(ARMS) else f"{s['pair']} {'/'.join(cfg.arms)}"
        pairs[key] = s
        print(f"{key}: " + ", ".join(f"{arm} chrF {r['chrf']:.1f}" for arm, r in s["arms"].items())
              + f" ({wall / 60:.1f} min{'; flagged: ' + '; '.join(s['flags']) if s['flags'] else ''})", flush=True)
        out = _write(pairs, a.model)  # after every pair: a later pair's failure keeps this one
    print(f"wrote {out}")
    return 0


def _write(pairs: dict, model: str):
    return write_result(Result(
        name="nmt_check", command=command_line(),
        equal_work="per pair: the same Marian architecture, seed, step and time budget, and the same number of "
                   "training pairs in every arm; the same held-out gold test set",
        ours={"model": model}, peer={}, metrics={"pairs": dict(sorted(pairs.items()))},
        flags=[f"{k}: {f}" for k, v in sorted(pairs.items()) for f in v.get("flags", [])],
        versions=versions("torch", "transformers", "sacrebleu", "sentencepiece")), path=OUT)


if __name__ == "__main__":
    raise SystemExit(main())
