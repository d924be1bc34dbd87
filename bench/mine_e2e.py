"""Mining from raw text at scale, embedding included: wall time, CPU-seconds and peak memory per phase.

    python -m bench.mine_e2e --model labse_home/models/multilingual-e5-small              # 1M x 1M (hours)
    python -m bench.mine_e2e --model DIR --sentences 200000 --precision bf16            # 200k x 200k

The sentences come from the lake's clean corpus (``LABSE_HOME``): every distinct text of either side
(English and the translations, ~1.2M on a demo lake), in a fixed hashed order; the source side is the first
``--sentences`` of that order, the target side the last ``--sentences`` (with fewer than twice as many distinct
texts the two sides share some strings, said in the JSON). Each phase runs as the ``labse`` command a user
would type, in its own measured process (bench.common.measure_child: wall, CPU-s of the process tree,
peak RSS of its largest process and of the tree):

  embed-src   labse embed --model DIR --input src.txt --output src.npy --precision P
  embed-tgt   labse embed ... tgt.txt -> tgt.npy
  mine        labse mine --src src.npy --tgt tgt.npy --src-lang mul --tgt-lang mul --no-filter (sentences
              read from src.txt / tgt.txt): kNN both ways (faiss, IVF above 50k), ratio margin, max mode,
              calibrated threshold, the pairs appended to ``mined``. Both sides mix every language of the
              lake, so the data pipeline's per-language filters are off (their cost is prepare_bench's).

Goal (issue: a quantized CPU inference path): 1M x 1M from raw text on 2 cores in <= 90 min, peak RSS
<= 6 GiB. Writes bench/results/mine_e2e.json (docs/inference.md). Runs in a temporary LABSE_HOME whose
lake is the given one's corpus only (nothing is appended to the real lake).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, Result, command_line, measure_child, versions, write_result


def distinct_texts(clean: Path) -> list[str]:
    """Every distinct text of the clean corpus (both sides), one line each (no newline inside), hashed order."""
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for f in sorted(clean.rglob("*.parquet")):
        t = pq.read_table(f, columns=["src_text", "tgt_text"])
        for col in ("src_text", "tgt_text"):
            seen.update(x for x in t.column(col).to_pylist() if x and "\n" not in x and "\r" not in x)
    return sorted(seen, key=lambda s: hashlib.blake2b(s.encode(), digest_size=8).digest())


def main(argv: list[str] | None = None) -> int:
    from storage.layout import Layout
    from storage.schemas import CLEAN_PAIRS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="An exported model folder.")
    p.add_argument("--sentences", type=int, default=1_000_000, help="Sentences per side.")
    p.add_argument("--precision", default="auto", help="fp32, bf16, int8 or auto (labse embed --precision).")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/mine_e2e.json")
    a = p.parse_args(argv)
    layout = Layout.from_env()
    clean = layout.dataset_dir(CLEAN_PAIRS.relpath)
    if not clean.is_dir():
        raise SystemExit(f"no clean corpus at {clean}: run `labse demo` (or `labse prepare`) first")
    from labse_core.embed import choose_precision

    precision = choose_precision(a.model, a.precision, "cpu")  # what the embed phases run
    texts = distinct_texts(clean)
    n = min(a.sentences, len(texts))
    src, tgt = texts[:n], texts[-n:]
    shared = max(0, 2 * n - len(texts))
    work = Path(tempfile.mkdtemp(prefix="mine-e2e-"))
    labse = [str(Path(sys.executable).with_name("labse"))]
    env = dict(os.environ, LABSE_HOME=str(work / "home"))
    try:
        (work / "src.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
        (work / "tgt.txt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
        phases = {
            "embed-src": [*labse, "embed", "--model", str(a.model), "--input", str(work / "src.txt"),
                          "--output", str(work / "src.npy"), "--precision", a.precision],
            "embed-tgt": [*labse, "embed", "--model", str(a.model), "--input", str(work / "tgt.txt"),
                          "--output", str(work / "tgt.npy"), "--precision", a.precision],
            "mine": [*labse, "mine", "--src", str(work / "src.npy"), "--tgt", str(work / "tgt.npy"),
                     "--src-lang", "mul", "--tgt-lang", "mul", "--no-filter"],
        }
        runs = {}
        for name, cmd in phases.items():
            r = measure_child(cmd, env=env)
            runs[name] = r
            print(f"{name:<10} {r.wall_s:8.1f}s wall {r.cpu_s:8.1f} CPU-s  peak RSS {r.peak_rss_mb:7.0f} MB "
                  f"(tree {r.peak_tree_rss_mb or 0:7.0f} MB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_wall = sum(r.wall_s for r in runs.values())
    peak = max(r.peak_tree_rss_mb or r.peak_rss_mb for r in runs.values())
    metrics = {
        "sentences_per_side": n, "shared_strings": shared, "precision": precision,
        "phases": {name: {"wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_mb": r.peak_rss_mb,
                          "peak_tree_rss_mb": r.peak_tree_rss_mb} for name, r in runs.items()},
        "total_wall_s": total_wall, "peak_rss_mb": peak,
        "embed_sentences_per_s": 2 * n / (runs["embed-src"].wall_s + runs["embed-tgt"].wall_s),
        "goal": {"sentences": 1_000_000, "wall_s": 90 * 60, "peak_rss_mb": 6 * 1024},
        "meets_goal": bool(n >= 1_000_000 and total_wall <= 90 * 60 and peak <= 6 * 1024),
    }
    out = write_result(Result(
        name="mine_e2e", command=command_line(),
        equal_work=f"{n:,} x {n:,} distinct sentences of the lake's clean corpus ({shared:,} strings on both sides), "
                   "mined from raw text by three labse commands (embed, embed, mine --no-filter: both sides mix languages), each "
                   "its own process",
        ours={"model": str(a.model), "precision": a.precision}, peer={},
        metrics=metrics, runs={name: [r.to_json()] for name, r in runs.items()},
        versions=versions("torch", "faiss-cpu", "ctranslate2")), path=a.out or RESULTS / "mine_e2e.json")
    print(f"{n:,} x {n:,}: {total_wall / 60:.1f} min, peak RSS {peak / 1024:.2f} GiB, embedding "
          f"{metrics['embed_sentences_per_s']:.0f} sentences/s ({precision}); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
