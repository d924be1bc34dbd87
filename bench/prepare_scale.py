"""``labse prepare`` at OPUS sizes: memory, time and spill from 1 M to 30 M pairs, direct and Dask runner.

    python -m bench.prepare_scale                                   # 1M 3M 10M 30M, direct + dask (~2 h)
    python -m bench.prepare_scale --sizes 1M,3M --runners direct    # a part; other entries of the JSON kept

Each size is one TSV corpus made by ``bench.scale_pairs`` from this machine's German gettext catalogs
(distinct joined pairs, 5 % exact and 5 % near duplicates), written once under ``--workdir`` and
reused. Each run is ``labse prepare --input pairs.tsv --langs en,de --tsv-columns src,tgt --no-raw
--runner R`` in a fresh LABSE_HOME (the default rules: filters, language ID, Tatoeba decontamination,
dedupe), measured as a child process: wall, CPU-s of the whole tree, peak resident memory summed over
the process tree (driver, Beam or Dask workers; sampled every 0.1 s), the spill's largest size on disk
(sampled every second), and a digest of the clean corpus (DuckDB, order-free) so the runners'
outputs are compared. The home is removed after each run (the 30 M output is ~3 GB).

Writes ``bench/results/prepare_scale.json``, merging with the entries already there. Goals (the
issue's): peak tree RSS <= 3 GiB at every size, the largest size's within 20 % of the 1 M figure;
throughput at the largest size within 20 % of the 1 M figure and >= 10 k pairs/s. One job at a time:
the load before and after every run is recorded, a disturbed run flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from beam_jobs.spill import folder_bytes
from bench import common, scale_pairs

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT = common.RESULTS / "prepare_scale.json"
RUNNERS = {"direct": "DirectRunner", "dask": "dask"}
GOAL_PEAK_GIB = 3.0
GOAL_FLAT = 1.2
GOAL_PAIRS_PER_S = 10_000


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def clean_digest(home: Path) -> dict:
    """Rows and an order-free digest of the published clean corpus (every column of every row)."""
    import duckdb

    files = str(home / "lake" / "corpus" / "clean" / "**" / "*.parquet")
    rows, digest = duckdb.connect().execute(
        f"SELECT count(*), sum(hash(t)::HUGEINT)::VARCHAR FROM read_parquet('{files}', hive_partitioning=true) t"
    ).fetchone()
    return {"rows": rows, "digest": digest}


def _sample_spill(folder: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(1.0):
        peak[0] = max(peak[0], folder_bytes(folder))


def run_one(corpus: Path, runner: str, workdir: Path, workers: int) -> dict:
    """One measured ``labse prepare`` in a fresh home; the spill (ours via LABSE_SPILL_DIR, Dask's own
    via DASK_TEMPORARY_DIRECTORY) goes to one folder whose size is sampled every second."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    spill = Path(tempfile.mkdtemp(prefix="spill-", dir=workdir))
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_spill, args=(spill, stop, peak), daemon=True)
    try:
        env = common.thread_env(1, dict(os.environ, LABSE_HOME=str(home), LABSE_SPILL_DIR=str(spill),
                                        DASK_TEMPORARY_DIRECTORY=str(spill)))
        cmd = [sys.executable, "-m", "flows.cli", "prepare", "--input", str(corpus), "--langs", "en,de",
               "--tsv-columns", "src,tgt", "--no-raw", "--runner", RUNNERS[runner], "--workers", str(workers)]
        sampler.start()
        run = common.measure_child(cmd, env=env, cwd=REPO_ROOT, quiet=True)
        stop.set()
        sampler.join()
        stats = json.loads((home / "lake" / "corpus" / "clean" / "_manifest.json").read_text())["stats"]
        return run.to_json() | {"stats": {k: stats[k] for k in ("input_pairs", "clean_new", "rejected")},
                                "spill_peak_bytes": peak[0], "clean": clean_digest(home)}
    finally:
        stop.set()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(spill, ignore_errors=True)


def summarize(entries: dict) -> dict:
    """Per runner: the goals, from the smallest and largest size measured."""
    out = {}
    for runner in RUNNERS:
        sizes = sorted((int(n), e) for key, e in entries.items() for r, n in [key.split("@")] if r == runner)
        if not sizes:
            continue
        (n0, first), (n1, last) = sizes[0], sizes[-1]
        peak = max(e["peak_tree_rss_mb"] for _, e in sizes) / 1024
        rate0, rate1 = n0 / first["wall_s"], n1 / last["wall_s"]
        out[runner] = {
            "sizes": [n for n, _ in sizes],
            "peak_tree_gib_max": peak,
            "peak_flat_ratio": last["peak_tree_rss_mb"] / first["peak_tree_rss_mb"],
            "pairs_per_s_smallest": rate0,
            "pairs_per_s_largest": rate1,
            "throughput_ratio": rate1 / rate0,
            "meets_peak": peak <= GOAL_PEAK_GIB,
            "meets_flat": last["peak_tree_rss_mb"] / first["peak_tree_rss_mb"] <= GOAL_FLAT,
            "meets_throughput": rate1 / rate0 >= 1 / GOAL_FLAT and rate1 >= GOAL_PAIRS_PER_S,
        }
    by_size: dict[str, dict[str, str]] = {}
    for key, e in entries.items():
        runner, n = key.split("@")
        by_size.setdefault(n, {})[runner] = e["clean"]["digest"]
    out["equal_outputs"] = {n: {"runners": sorted(d), "equal": len(set(d.values())) == 1}
                            for n, d in by_size.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1M,3M,10M,30M", help="pairs per corpus, comma-separated (1M, 300k ...)")
    ap.add_argument("--runners", default="direct,dask", help="direct and/or dask")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "labse-prepare-scale",
                    help="where the corpora (reused) and the runs' homes go")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    runners = [r.strip() for r in args.runners.split(",")]
    if bad := [r for r in runners if r not in RUNNERS]:
        ap.error(f"--runners: unknown {bad}; choose from {sorted(RUNNERS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    entries = dict(previous["metrics"]["runs"]) if previous else {}
    for n in sizes:
        corpus = scale_pairs.write(args.workdir / f"pairs-{size_label(n)}.tsv", n)
        for runner in runners:
            print(f"[bench] prepare {size_label(n)} pairs, {runner} runner ...", flush=True)
            e = run_one(corpus, runner, args.workdir, args.workers) | {"pairs": n, "runner": runner}
            entries[f"{runner}@{n}"] = e
            print(f"[bench]   {e['wall_s']:.0f} s, {n / e['wall_s']:,.0f} pairs/s, peak tree "
                  f"{e['peak_tree_rss_mb'] / 1024:.2f} GiB, spill {e['spill_peak_bytes'] / 2**30:.2f} GiB, "
                  f"{e['clean']['rows']:,} clean" + (f"  FLAGGED {e['flags']}" if e["flags"] else ""), flush=True)
            result = common.Result(
                name="prepare_scale", command=common.command_line(),
                equal_work="every run reads the same generated corpus of its size with the same rules; the "
                "runners' clean corpora are compared by an order-free digest of every row",
                ours={"workers": args.workers, "runners": RUNNERS, "corpus": "bench.scale_pairs (de-en gettext, "
                      "5% exact + 5% near duplicates)"},
                peer={"what": "the 1 M-pair run of the same runner (flatness); OpusFilter: bench/prepare_bench"},
                metrics={"runs": dict(sorted(entries.items(), key=lambda kv: (kv[1]["runner"], kv[1]["pairs"]))),
                         "summary": summarize(entries),
                         "goals": {"peak_tree_gib": GOAL_PEAK_GIB, "flat_within": GOAL_FLAT,
                                   "pairs_per_s": GOAL_PAIRS_PER_S}},
                flags=sorted({f for e in entries.values() for f in e["flags"]}),
                versions=common.versions("apache-beam", "dask", "distributed", "pyarrow"),
            )
            common.write_result(result, path=args.out)
        corpus_keep = n <= 3_000_000  # the large corpora take GBs of disk: made again when needed
        if not corpus_keep:
            corpus.unlink(missing_ok=True)
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
