"""Tatoeba over all 112 languages, the whole set against the registry gate's fixed sample, for each model
given, in one run: what each costs on this machine, and how closely the sample tracks the whole set.

    python -m bench.tatoeba_gate --model import=labse_home/models/multilingual-e5-small \\
        --model champion=models:/labse@champion [--sample 300] [--precision auto]

Per model: every group's mean and every language's accuracy (both directions averaged, percent) on the
whole set and on the sample (``labse_core.evaluation.tatoeba.sample_languages``: the same pairs for every
model), and the seconds each took (encoding included, one process, the machine's threads). Agreement:
the Spearman correlation of the per-language figures (sample against whole set) and the mean offset of
the sample (retrieving among 300 candidates instead of ~1,000 is easier). With two or more models, the
second and later against the first: whether the sample moves each language the way the whole set does
(Spearman of the per-language differences, share of languages whose difference has the same sign,
and the all-112 difference on both). Writes bench/results/tatoeba_gate.json (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, Result, command_line, versions, write_result


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the ranks (ties averaged)."""
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def agreement(full: dict[str, float], sample: dict[str, float]) -> dict[str, float]:
    """Per-language sample figures against the whole set's (same languages)."""
    codes = sorted(full)
    f, s = [full[c] for c in codes], [sample[c] for c in codes]
    return {"languages": len(codes), "spearman": spearman(f, s), "mean_offset": float(np.mean(np.subtract(s, f))),
            "max_abs_offset": float(np.max(np.abs(np.subtract(s, f))))}


def gains(first: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """``other`` minus ``first`` per language, on the sample and on the whole set, compared."""
    codes = sorted(first["full"]["languages"])
    df = [other["full"]["languages"][c] - first["full"]["languages"][c] for c in codes]
    ds = [other["sample"]["languages"][c] - first["sample"]["languages"][c] for c in codes]
    same = [np.sign(a) == np.sign(b) for a, b in zip(df, ds, strict=True) if a != 0 or b != 0]
    return {"spearman": spearman(df, ds), "same_sign": float(np.mean(same)) if same else 1.0,
            "all112_full": other["full"]["groups"]["all112"] - first["full"]["groups"]["all112"],
            "all112_sample": other["sample"]["groups"]["all112"] - first["sample"]["groups"]["all112"]}


def evaluate(folder: Path, precision: str, sample: int | None, data: Path) -> dict[str, Any]:
    from flows.evaluate import embedder
    from labse_core.evaluation import tatoeba as tat

    embed = embedder(folder, precision=precision)
    t0 = time.perf_counter()
    result = tat.evaluate_tatoeba(embed, data, sample=sample)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "precision": embed.precision, "groups": {g.label: 100 * g.acc for g in result.groups if g.group in tat.GROUPS},
            "languages": {s.code: 100 * s.acc for s in result.languages}}


def main(argv: Sequence[str] | None = None) -> int:
    from flows.env import bootstrap
    from flows.evaluate import resolve
    from storage.layout import Layout, default_tatoeba_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                   help="A model folder or models:/NAME@ALIAS, named (repeatable; later ones compared with the first).")
    p.add_argument("--sample", type=int, default=300, help="Pairs per language of the gate's fixed sample.")
    p.add_argument("--precision", default="auto", help="fp32, bf16, int8 or auto (as labse evaluate tatoeba).")
    p.add_argument("--data", type=Path, default=None, help="Tatoeba v1 folder (default: the shared one).")
    p.add_argument("--out", type=Path, default=RESULTS / "tatoeba_gate.json")
    a = p.parse_args(argv)
    bootstrap()
    layout = Layout.from_env()
    data = a.data or default_tatoeba_dir()
    precision = a.precision
    models: dict[str, Any] = {}
    for spec in a.model:
        name, sep, uri = spec.partition("=")
        if not sep or not name or not uri:
            p.error(f"--model {spec!r}: expected NAME=MODEL")
        source = resolve(uri, layout)
        models[name] = {"model": source.uri, "version": source.version,
                        "full": evaluate(source.folder, precision, None, data),
                        "sample": evaluate(source.folder, precision, a.sample, data)}
        m = models[name]
        print(f"{name}: all112 {m['full']['groups']['all112']:.2f} in {m['full']['seconds']:.0f}s; "
              f"sample {m['sample']['groups']['all112']:.2f} in {m['sample']['seconds']:.0f}s", flush=True)
    for m in models.values():
        m["agreement"] = agreement(m["full"]["languages"], m["sample"]["languages"])
    names = list(models)
    precision = models[names[0]]["full"]["precision"]  # what ran ("auto" resolved)
    compared = {n: gains(models[names[0]], models[n]) for n in names[1:]}
    out = write_result(Result(
        name="tatoeba_gate", command=command_line(),
        equal_work=f"every model: all {len(models[names[0]]['full']['languages'])} Tatoeba v1 languages, the whole "
                   f"set and the fixed sample of {a.sample} pairs per language (the same pairs for every model), "
                   f"both directions, {precision} encoding, one process",
        ours={"sample": a.sample, "precision": precision, "data": str(data)}, peer={},
        metrics={"models": models, "compared_with": names[0], "gains": compared},
        versions=versions("torch", "transformers", "sentence-transformers")), path=a.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
