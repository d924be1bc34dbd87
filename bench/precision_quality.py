"""What each encoder precision costs in quality, against fp32: Tatoeba (all 112 languages and the 14 major
ones) and BUCC-style mining F1, on one model folder, in one run.

    python -m bench.precision_quality --model labse_home/models/multilingual-e5-small
    python -m bench.precision_quality --model DIR --sample 300 --bucc-langs de,fr,es,ru,ja,zh_CN

Per precision (fp32, bf16 where the CPU multiplies bf16, int8 from the folder's int8 files, written here
if missing, as ``labse quantize`` does): Tatoeba accuracy per language and per group (both directions
averaged, percent) on the registry gate's fixed sample (``--sample``, 0 for the whole set), BUCC-style F1
per language on held-out gettext pairs of ``LABSE_HOME``'s clean corpus (dev-tuned threshold applied to
test, ``labse evaluate bucc``'s sets), the cosine of every Tatoeba sentence's embedding to its fp32 one,
and the seconds each took. The goals (issue: a quantized CPU path): all112 and major14 within 0.3 points
of fp32, mining F1 within 0.005, cosine >= 0.99. Writes bench/results/precision_quality.json
(docs/inference.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, Result, command_line, versions, write_result

BUCC_LANGS = ("de", "fr", "es", "ru", "ja", "zh_CN", "pl", "tr", "ar", "ko", "it", "nl", "pt_BR", "uk")
GOALS = {"tatoeba_points": 0.3, "bucc_f1": 0.005, "min_cosine": 0.99}


class Recording:
    """An embedder that keeps every (sentence -> vector) it produced, to compare precisions row by row."""

    def __init__(self, embed):
        self.embed, self.seen = embed, {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = self.embed(texts)
        self.seen.update(zip(texts, out, strict=True))
        return out


def measure(folder: Path, precision: str, data: Path, sample: int | None, bucc_sets: dict) -> dict[str, Any]:
    from flows.evaluate import embedder
    from labse_core.evaluation import bucc
    from labse_core.evaluation import tatoeba as tat

    embed = embedder(folder, 64, precision)
    rec = Recording(embed)
    t0 = time.perf_counter()
    result = tat.evaluate_tatoeba(rec, data, sample=sample)
    tatoeba_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    f1 = {lang: bucc.evaluate_language(lang, sets, embed).test.f1 for lang, sets in bucc_sets.items()}
    return {"ran": embed.precision, "tatoeba_seconds": tatoeba_s, "bucc_seconds": time.perf_counter() - t0,
            "groups": {g.group: 100 * g.acc for g in result.groups if g.group in tat.GROUPS},
            "languages": {s.code: 100 * s.acc for s in result.languages}, "bucc_f1": f1,
            "bucc_f1_mean": float(np.mean(list(f1.values()))) if f1 else None, "_vectors": rec.seen}


def main(argv: Sequence[str] | None = None) -> int:
    from flows.env import bootstrap
    from labse_core.evaluation import bucc
    from labse_core.model.int8 import has_int8, write_int8
    from labse_core.model.precision import bf16_fast
    from storage.layout import Layout, default_tatoeba_dir
    from storage.schemas import CLEAN_PAIRS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="An exported model folder.")
    p.add_argument("--sample", type=int, default=300, help="Tatoeba pairs per language (0: the whole set).")
    p.add_argument("--bucc-langs", default=",".join(BUCC_LANGS), help="Clean-corpus languages for BUCC-style F1.")
    p.add_argument("--data", type=Path, default=None, help="Tatoeba v1 folder (default: the shared one).")
    p.add_argument("--out", type=Path, default=RESULTS / "precision_quality.json")
    a = p.parse_args(argv)
    bootstrap()
    import torch

    layout = Layout.from_env()
    data = a.data or default_tatoeba_dir()
    if not has_int8(a.model):
        write_int8(a.model)
    clean = layout.dataset_dir(CLEAN_PAIRS.relpath)
    bucc_sets, skipped = {}, {}
    for lang in filter(None, a.bucc_langs.split(",")):
        try:
            bucc_sets[lang] = bucc.build_sets(bucc.held_out_pairs(clean, lang, 0.05), 100, 200)
        except (ValueError, OSError) as e:
            skipped[lang] = str(e)
    precisions = ["fp32", *(["bf16"] if bf16_fast(torch.device("cpu")) else []), "int8"]
    runs = {}
    for precision in precisions:
        runs[precision] = measure(a.model, precision, data, a.sample or None, bucc_sets)
        r = runs[precision]
        print(f"{precision}: all112 {r['groups']['all112']:.2f} major14 {r['groups']['major14']:.2f} "
              f"BUCC F1 {r['bucc_f1_mean'] or float('nan'):.4f} ({r['tatoeba_seconds']:.0f}s + {r['bucc_seconds']:.0f}s)",
              flush=True)
    ref = runs["fp32"]
    for precision in precisions[1:]:
        r = runs[precision]
        texts = list(ref["_vectors"])
        cos = np.array([float(np.dot(ref["_vectors"][t], r["_vectors"][t])) for t in texts])
        r["vs_fp32"] = {
            "all112_points": r["groups"]["all112"] - ref["groups"]["all112"],
            "major14_points": r["groups"]["major14"] - ref["groups"]["major14"],
            "xtreme36_points": r["groups"]["xtreme36"] - ref["groups"]["xtreme36"],
            "worst_language_points": min(r["languages"][c] - ref["languages"][c] for c in ref["languages"]),
            "bucc_f1": (r["bucc_f1_mean"] - ref["bucc_f1_mean"]) if bucc_sets else None,
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "sentences": len(texts),
        }
        v = r["vs_fp32"]
        v["meets_goals"] = bool(abs(v["all112_points"]) <= GOALS["tatoeba_points"]
                                and abs(v["major14_points"]) <= GOALS["tatoeba_points"]
                                and (v["bucc_f1"] is None or abs(v["bucc_f1"]) <= GOALS["bucc_f1"])
                                and v["min_cosine"] >= GOALS["min_cosine"])
        print(f"{precision} vs fp32: {v}", flush=True)
    for r in runs.values():
        r.pop("_vectors")
    out = write_result(Result(
        name="precision_quality", command=command_line(),
        equal_work=f"one model folder ({a.model.name}) in every precision: the same Tatoeba pairs (all 112 languages, "
                   f"{'the whole set' if not a.sample else f'the fixed sample of {a.sample} pairs per language'}), the "
                   f"same BUCC-style sets ({len(bucc_sets)} languages, 100 gold + 200 distractors per side and split, "
                   "held-out gettext pairs), one process, the machine's threads",
        ours={"model": str(a.model), "sample": a.sample, "precisions": precisions, "goals": GOALS},
        peer={"fp32": "the exact path"},
        metrics={"runs": runs, "bucc_skipped": skipped},
        versions=versions("torch", "transformers", "ctranslate2")), path=a.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
