"""Issue 24, items 5 and 6: does the mining threshold transfer from gettext to real documents, and does
fine-tuning lose retrieval quality outside its domain? Measured on translated man pages
(``labse_core.evaluation.docs_bitext``), for the zero-shot import and fine-tuned checkpoints.

For each model and language:

- **gettext-tuned**: the threshold ``labse evaluate bucc`` tunes (best F1 on the dev split of a BUCC-style
  set of the lake's held-out gettext pairs: 100 gold among 200 distractors per side), as the pipeline's
  evaluate stage hands it to ``labse mine`` today;
- **calibrated** thresholds read off each set's own candidate margins (``labse_core.mining.calibrate``:
  ``mixture``, ``otsu``, ``valley``), and stopes' fixed ``1.06``;
- **oracle**: the best F1 on the set itself (an upper bound no rule can beat);

each scored (P/R/F1) on: the gettext **test** split (in-domain: a robust rule must not lose there), a
man-page set with the same gold density (``--gold`` pairs among 2x as many distractors per side) and a
sparse man-page set (``--sparse-gold`` pairs among ``--sparse-distractors`` x as many). Retrieval
(item 6): the man-page pairs as a Tatoeba-like set (<= 1000 pairs per language), accuracy both ways.

Run (CPU; ~5 min per model on one core with bf16)::

    /work/tools/cpu shared python -m bench.docs_eval --lake /tmp/exp/lake \\
        --model import=/tmp/exp/models/multilingual-e5-small --model ft=/tmp/exp/checkpoints/finetune/X/best

Writes bench/results/docs_mining.json and bench/results/docs_retrieval.json (tables: ``python -m bench.report``)
and, with ``--gold-sample N``, N random gold pairs per language to docs/results/manpages_gold_sample.tsv.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command_line, machine, versions
from labse_core.evaluation import bucc
from labse_core.evaluation import docs_bitext as docs
from labse_core.evaluation.tatoeba import score_languages
from labse_core.mining.calibrate import METHODS, calibrate
from labse_core.mining.miner import DEFAULT_THRESHOLDS, MineConfig, mine_embeddings

LANGS = ("de", "fr", "nl", "it", "ja", "pl", "ru", "pt_BR", "zh_CN", "es")
REPO = Path(__file__).resolve().parents[1]


class CachedEmbedder(docs.MemoEmbed):
    """``docs.MemoEmbed`` over ``encode`` kept on disk under ``cache_dir`` when given: a rerun that changes only
    the threshold rules embeds nothing. The file is keyed on the folder, its export time and the precision,
    so a retrained checkpoint is not served stale vectors."""

    def __init__(self, folder: str, precision: str, cache_dir: Path | None = None) -> None:
        import hashlib

        from labse_core.embed import encode, resolve_model

        model: list = []

        def embed(texts: list[str]) -> np.ndarray:
            model[:] = model or [resolve_model(folder)]
            return encode(texts, model[0], progress=False, precision=precision)

        super().__init__(embed)
        meta = Path(folder) / "labse_export.json"
        stamp = json.loads(meta.read_text()).get("created_utc", "") if meta.is_file() else ""
        key = hashlib.blake2b(f"{Path(folder).resolve()}|{stamp}|{precision}".encode(), digest_size=8).hexdigest()
        self.path = cache_dir / f"{key}.npz" if cache_dir is not None else None
        if self.path is not None and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                texts = json.loads(bytes(z["texts"]).decode("utf-8"))
                self.cache.update(zip(texts, z["vectors"], strict=True))

    def save(self) -> None:
        if self.path is None or not self.embedded:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self.cache)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, texts=np.frombuffer(json.dumps(texts).encode("utf-8"), dtype=np.uint8),
                 vectors=np.stack([self.cache[t] for t in texts]))
        tmp.replace(self.path)


def _prf(p: bucc.Prf) -> dict:
    return {"threshold": p.threshold, "precision": p.precision, "recall": p.recall, "f1": p.f1,
            "found": p.found, "correct": p.correct}


def score_set(split: bucc.BuccSplit, embed, cfg: MineConfig, tuned: float | None) -> dict:
    """P/R/F1 of one set at every threshold rule, and the calibrations' diagnostics."""
    cand = mine_embeddings(embed(list(split.src)), embed(list(split.tgt)), cfg, threshold=-np.inf)
    at = {}
    if tuned is not None:
        at["gettext-tuned"] = _prf(bucc.prf(cand, split.gold, tuned))
    at["fixed-1.06"] = _prf(bucc.prf(cand, split.gold, DEFAULT_THRESHOLDS["ratio"]))
    calib = {}
    for method in METHODS:
        choice = calibrate(cand.score, method, DEFAULT_THRESHOLDS["ratio"])
        at[method] = _prf(bucc.prf(cand, split.gold, choice.value)) | {"method": choice.method}
        calib[method] = choice.detail
    at["oracle"] = _prf(bucc.best_threshold(cand, split.gold))
    return {"sizes": {"src": len(split.src), "tgt": len(split.tgt), "gold": len(split.gold)}, "at": at,
            "calibration": calib}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=FOLDER (repeat)")
    ap.add_argument("--lake", type=Path, help="a lake root with corpus/clean (gettext-tuned thresholds)")
    ap.add_argument("--man-root", type=Path, default=docs.DEFAULT_MAN_ROOT)
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--gold", type=int, default=300)
    ap.add_argument("--sparse-gold", type=int, default=50)
    ap.add_argument("--sparse-distractors", type=float, default=10.0)
    ap.add_argument("--retrieval-pairs", type=int, default=1000)
    ap.add_argument("--held-out-fraction", type=float, default=0.05)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--gold-sample", type=int, default=0, help="write N random gold pairs per language to docs/results/")
    ap.add_argument("--embedding-cache", type=Path, help="keep each model's sentence vectors here between runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    cfg = MineConfig(mode="max", index="flat", k=4)

    extracted = {lang: docs.extract_pairs(args.man_root, lang) for lang in langs}
    if args.gold_sample:
        lines = ["lang\tpage\tenglish\ttranslation"]
        for lang, ex in extracted.items():
            pool = docs.unique_pairs(ex.pairs)
            for p in random.Random(lang).sample(pool, min(args.gold_sample, len(pool))):
                lines.append("\t".join((lang, p.page, p.en, p.xx)))
        out = REPO / "docs" / "results" / "manpages_gold_sample.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)

    mining, retrieval = [], []
    models = {}
    for spec in args.model:
        name, folder = spec.split("=", 1)
        meta = json.loads((Path(folder) / "labse_export.json").read_text()) if (Path(folder) / "labse_export.json").is_file() else {}
        settings = (meta.get("model_card") or {}).get("settings") or {}
        models[name] = {"folder": folder, "step": settings.get("step"), "batch_size": settings.get("batch_size")}
        embed = CachedEmbedder(folder, args.precision, args.embedding_cache)
        t0 = time.perf_counter()
        try:
            for lang in langs:
                code = docs.language_code(lang)
                tuned = None
                if args.lake is not None:
                    held = bucc.held_out_pairs(args.lake / "corpus" / "clean", code, args.held_out_fraction)
                    gold = min(100, len(bucc.one_to_one(held)) // 10)  # as `labse evaluate bucc`, smaller where the lake has less
                    sets = bucc.build_sets(held, gold, 2 * gold)
                    dev = mine_embeddings(embed(list(sets["dev"].src)), embed(list(sets["dev"].tgt)), cfg, threshold=-np.inf)
                    tuned = bucc.best_threshold(dev, sets["dev"].gold).threshold
                    mining.append({"model": name, "lang": code, "set": "gettext-test"} | score_set(sets["test"], embed, cfg, tuned))
                pairs = extracted[lang].pairs
                dense = docs.build_set(pairs, args.gold, 2.0)
                mining.append({"model": name, "lang": code, "set": "manpages"} | score_set(dense, embed, cfg, tuned))
                sparse = docs.build_set(pairs, args.sparse_gold, args.sparse_distractors)
                mining.append({"model": name, "lang": code, "set": "manpages-sparse"} | score_set(sparse, embed, cfg, tuned))
                (s,) = score_languages(embed, [docs.retrieval_set(pairs, code, args.retrieval_pairs)])
                retrieval.append({"model": name, "lang": code, "n": s.n, "xx->en": s.acc_xx_en, "en->xx": s.acc_en_xx,
                                  "both": s.acc})
                print(f"{name} {code}: " + ", ".join(
                    f"{r['set']} F1 " + "/".join(f"{k}={v['f1']:.3f}" for k, v in r["at"].items())
                    for r in mining[-3:]) + f"; retrieval {s.acc:.4f}", file=sys.stderr, flush=True)
        finally:  # what was embedded stays cached, even when a language fails
            embed.save()
        models[name] |= {"seconds": round(time.perf_counter() - t0, 1), "embedded": embed.embedded,
                         "created_utc": meta.get("created_utc")}

    common = {"command": command_line(), "default_rule": MineConfig().calibration,
              "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine(), "versions": versions("torch", "transformers", "faiss-cpu", "numpy"),
              "models": models,
              "settings": {"man_root": str(args.man_root), "lake": str(args.lake) if args.lake else None,
                           "gold": args.gold, "distractors_per_gold": 2.0, "sparse_gold": args.sparse_gold,
                           "sparse_distractors_per_gold": args.sparse_distractors, "k": cfg.k, "mode": cfg.mode,
                           "margin": cfg.margin, "precision": args.precision,
                           "held_out_fraction": args.held_out_fraction, "retrieval_pairs": args.retrieval_pairs},
              "languages": {docs.language_code(lang): {"man_dir": lang, "pairs": len(docs.unique_pairs(ex.pairs)),
                                                       "counts": dict(sorted(ex.counts.items()))}
                            for lang, ex in extracted.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "docs_mining.json").write_text(json.dumps({"name": "docs_mining"} | common | {"results": mining},
                                                          indent=1, ensure_ascii=False) + "\n")
    (args.out / "docs_retrieval.json").write_text(json.dumps({"name": "docs_retrieval"} | common | {"results": retrieval},
                                                             indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out / 'docs_mining.json'} and {args.out / 'docs_retrieval.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
