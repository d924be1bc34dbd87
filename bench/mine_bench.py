"""Mining at scale: time, CPU and peak memory of our miner at N = 10k, 100k, 1M sentences per side, against a
brute-force reference (a full similarity matrix, LASER-style, chunked so it fits) and LASER's own recipe
(everything in memory, faiss flat), with the IVF path's recall of the exact margin pairs.

    python -m bench.mine_bench                       # N = 10k, 100k, 1M (the lead's run: hours on 2 cores)
    python -m bench.mine_bench --quick               # N = 10k only (a smoke run, ~1 min)
    python -m bench.mine_bench --sizes 10000 200000 --brute-max 200000

Writes ``bench/results/mine_bench.json`` (``mine_bench.quick.json`` with ``--quick``) and prints a table.
Goal (issue "Evaluation ... and bitext mining"): 1M x 1M mined on a 2-core machine with peak memory
under 4 GiB and recall >= 0.98 of the exact margin pairs.

The data (``make_data``): d = 384 (multilingual-e5-small's width), unit vectors in clusters (sentences
on a topic are closer than random ones, so the margin's neighbour means look like a real encoder's:
cosine ~0.5 within a cluster), and planted translation pairs: half the source rows have a target
y = normalize(x + noise) with cos(x, y) ~0.9; the other rows of both sides have no translation. Both
sides are written chunk-wise to ``.npy`` files and read back memory-mapped: no method starts with the
data in memory except the ones that load it (brute force and LASER's recipe, as their code does).

Methods, each in a fresh child process (its own peak RSS, ``ru_maxrss``; wall and CPU seconds of the child):
- ``ours``: ``labse_core.mining.miner.mine_embeddings`` on the memory-mapped files with ``index="auto"``
  (exact flat up to ``--flat-max`` rows, IVF above), k = 4, ratio margin, max mode, ``--threshold``.
- ``ours-flat``: the same with the exact flat index (``N <= --flat-limit``).
- ``laser``: LASER ``mine_bitexts.py``'s recipe: both sides loaded, ``faiss.normalize_L2`` in place,
  ``IndexFlatIP`` kNN both ways, margin scoring, max mode (``N <= --flat-limit``).
- ``brute``: float32 numpy, the similarity matrix a block of rows at a time (the full (N, N) matrix
  never exists at once: the column top-k is merged across blocks), then the same margin rule, written
  independently of ``labse_core.mining`` (``N <= --brute-max``).
Reported: pairs, ``identical`` (ours-flat / laser / ours vs brute: the same pair set), ``recall`` of the
exact pairs (brute's, else ours-flat's) by ``ours``, and ``gold_recall`` (planted pairs found). Where
no exact set exists (1M on 2 cores: the flat search alone is ~3.8e14 multiply-adds), ``sample_recall``
compares ours with an exact computation for ``--sample`` source rows (their exact kNN over all
targets, the exact kNN of their candidate targets over all sources, forward scores): the share of
sampled rows whose exact best pair above the threshold is among ours' pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10_000, 100_000, 1_000_000)


# ---------------------------------------------------------------------------------------------------
# Data


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, d: int, out: Path, seed: int = 0, chunk: int = 50_000) -> dict:
    """x.npy, y.npy (n x d float32, unit rows) and gold.npy (planted (src, tgt) pairs), written chunk-wise."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 100)
    centers = _unit(rng.normal(size=(n_clusters, d)))
    x = np.lib.format.open_memmap(out / "x.npy", mode="w+", dtype=np.float32, shape=(n, d))
    y = np.lib.format.open_memmap(out / "y.npy", mode="w+", dtype=np.float32, shape=(n, d))
    perm = rng.permutation(n)  # source row i (< n/2) translates target row perm[i]
    half = n // 2
    spread = 1.0 / np.sqrt(d)  # per-coordinate noise: within-cluster cosine ~0.5
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        cx = centers[rng.integers(0, n_clusters, e - s)]
        x[s:e] = _unit(cx + spread * rng.normal(size=(e - s, d)))
    inv = np.empty(n, np.int64)  # target row -> the source row it was drawn for
    inv[perm] = np.arange(n)
    for s in range(0, n, chunk):  # targets: translations of the first half, the rest new sentences
        e = min(n, s + chunk)
        block = np.empty((e - s, d), np.float32)
        src = inv[s:e]
        planted = src < half
        if planted.any():
            block[planted] = _unit(x[src[planted]] + 0.33 * spread * rng.normal(size=(int(planted.sum()), d)))
        free = ~planted
        if free.any():
            cy = centers[rng.integers(0, n_clusters, int(free.sum()))]
            block[free] = _unit(cy + spread * rng.normal(size=(int(free.sum()), d)))
        y[s:e] = block
    x.flush()
    y.flush()
    gold = np.stack([np.arange(half), perm[:half]], axis=1)
    np.save(out / "gold.npy", gold)
    return {"n": n, "d": d, "clusters": n_clusters, "planted": half}


# ---------------------------------------------------------------------------------------------------
# The methods (run in a child process)


def _margin_pairs(fs, fi, bs, bi, threshold):
    """Ratio margin + max mode on kNN lists (fs/fi: (n, k) sims/ids source->target; bs/bi target->source).
    Written here on purpose, not imported: the reference must not share the code it checks."""
    mx, my = fs.mean(axis=1), bs.mean(axis=1)
    f_sc = fs / ((mx[:, None] + my[fi]) / 2)
    b_sc = bs / ((my[:, None] + mx[bi]) / 2)
    fb, bb = f_sc.argmax(1), b_sc.argmax(1)
    n, m = len(fs), len(bs)
    src = np.concatenate([np.arange(n), bi[np.arange(m), bb]])
    tgt = np.concatenate([fi[np.arange(n), fb], np.arange(m)])
    sc = np.concatenate([f_sc[np.arange(n), fb], b_sc[np.arange(m), bb]])
    seen_s, seen_t, out = set(), set(), []
    for i in np.argsort(-sc.astype(np.float64), kind="stable").tolist():
        s, t = int(src[i]), int(tgt[i])
        if s not in seen_s and t not in seen_t:
            seen_s.add(s)
            seen_t.add(t)
            if sc[i] >= threshold:
                out.append((s, t))
    return out


def brute(x, y, k, threshold, block=2048):
    """Exact kNN by blocks of the similarity matrix, float32 numpy (LASER's scoring afterwards)."""
    n, m = len(x), len(y)
    kx, ky = min(k, m), min(k, n)
    fs = np.empty((n, kx), np.float32)
    fi = np.empty((n, kx), np.int64)
    col_s = np.full((ky, m), -np.inf, np.float32)  # running top-k of every column
    col_i = np.zeros((ky, m), np.int64)
    yt = np.ascontiguousarray(np.asarray(y, np.float32).T)
    for s in range(0, n, block):
        xb = np.asarray(x[s : s + block], np.float32)
        sim = xb @ yt  # (b, m): one block of the full matrix
        top = np.argpartition(-sim, kx - 1, axis=1)[:, :kx]
        ts = np.take_along_axis(sim, top, 1)
        o = np.argsort(-ts, axis=1, kind="stable")
        fs[s : s + len(xb)], fi[s : s + len(xb)] = np.take_along_axis(ts, o, 1), np.take_along_axis(top, o, 1)
        kk = min(ky, len(xb))
        ctop = np.argpartition(-sim, kk - 1, axis=0)[:kk]  # (kk, m) best rows of this block per column
        cs = np.take_along_axis(sim, ctop, 0)
        alls = np.concatenate([col_s, cs])
        alli = np.concatenate([col_i, ctop + s])
        keep = np.argsort(-alls, axis=0, kind="stable")[:ky]
        col_s, col_i = np.take_along_axis(alls, keep, 0), np.take_along_axis(alli, keep, 0)
    return _margin_pairs(fs, fi, col_s.T.copy(), col_i.T.copy(), threshold)


def laser(x, y, k, threshold):
    """LASER mine_bitexts.py's recipe: load both, normalize in place, IndexFlatIP both ways."""
    import faiss

    x = np.array(x, np.float32)
    y = np.array(y, np.float32)
    faiss.normalize_L2(x)
    faiss.normalize_L2(y)
    ix, iy = faiss.IndexFlatIP(x.shape[1]), faiss.IndexFlatIP(y.shape[1])
    ix.add(x)
    iy.add(y)
    fs, fi = iy.search(x, min(k, len(y)))
    bs, bi = ix.search(y, min(k, len(x)))
    return _margin_pairs(fs, fi, bs, bi, threshold)


def ours(xpath, ypath, k, threshold, index, flat_max, nprobe):
    from labse_core.mining.miner import MineConfig, mine_embeddings
    from labse_core.mining.shards import ShardedArray

    x, y = ShardedArray.of_npy(xpath), ShardedArray.of_npy(ypath)
    cfg = MineConfig(k=k, mode="max", margin="ratio", index=index, flat_max=flat_max, nprobe=nprobe)
    p = mine_embeddings(x, y, cfg, threshold=threshold)
    return list(zip(p.src.tolist(), p.tgt.tolist(), strict=True))


def sampled_exact_forward(xpath, ypath, k, threshold, sample, seed=0):
    """Exact forward best pairs (ratio margin) of ``sample`` random source rows, by faiss flat over all
    rows, chunked: (row, best target or -1 when below the threshold)."""
    import faiss

    from labse_core.mining.shards import ShardedArray

    x, y = ShardedArray.of_npy(xpath), ShardedArray.of_npy(ypath)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(sample, len(x)), replace=False))

    def exact_knn(queries, base, k):
        best_s = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.zeros((len(queries), k), np.int64)
        for s in range(0, len(base), 200_000):
            part = base[s : s + 200_000]
            index = faiss.IndexFlatIP(part.shape[1])
            index.add(part)
            d, i = index.search(queries, min(k, len(part)))
            alls, alli = np.concatenate([best_s, d], 1), np.concatenate([best_i, i + s], 1)
            o = np.argsort(-alls, 1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(alls, o, 1), np.take_along_axis(alli, o, 1)
        return best_s, best_i

    fs, fi = exact_knn(x[rows], y, k)
    cand = np.unique(fi)
    cs, _ = exact_knn(y[cand], x, k)
    my = dict(zip(cand.tolist(), cs.mean(1).tolist(), strict=True))
    mx = fs.mean(1)
    out = []
    for r in range(len(rows)):
        sc = [fs[r, j] / ((mx[r] + my[int(fi[r, j])]) / 2) for j in range(fs.shape[1])]
        j = int(np.argmax(sc))
        out.append((int(rows[r]), int(fi[r, j]) if sc[j] >= threshold else -1))
    return out


def _worker(args) -> None:
    data = Path(args.data)
    import faiss  # noqa: F401  (imports are not what is measured)

    from labse_core.mining import miner  # noqa: F401

    t0, c0 = time.perf_counter(), time.process_time()
    xp, yp = data / "x.npy", data / "y.npy"
    if args.worker == "brute":
        pairs = brute(np.load(xp), np.load(yp), args.k, args.threshold)
    elif args.worker == "laser":
        pairs = laser(np.load(xp), np.load(yp), args.k, args.threshold)
    elif args.worker in ("ours", "ours-flat"):
        index = "flat" if args.worker == "ours-flat" else "auto"
        pairs = ours(xp, yp, args.k, args.threshold, index, args.flat_max, args.nprobe)
    elif args.worker == "sample":
        pairs = sampled_exact_forward(xp, yp, args.k, args.threshold, args.sample)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    res = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "pairs": len(pairs),
    }
    np.save(data / f"pairs-{args.worker}.npy", np.asarray(pairs, np.int64).reshape(-1, 2))
    print(json.dumps(res))


def _run_child(method: str, data: Path, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.mine_bench",
        "--worker",
        method,
        "--data",
        str(data),
        "--k",
        str(args.k),
        "--threshold",
        str(args.threshold),
        "--flat-max",
        str(args.flat_max),
        "--nprobe",
        str(args.nprobe),
        "--sample",
        str(args.sample),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}",
            "seconds": time.perf_counter() - t0,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pairs(data: Path, method: str) -> set[tuple[int, int]]:
    a = np.load(data / f"pairs-{method}.npy")
    return set(map(tuple, a.tolist()))


def _versions() -> dict:
    from bench.common import versions

    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    return machine | versions("numpy", "faiss-cpu", "torch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mine_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="sentences per side")
    p.add_argument("--quick", action="store_true", help="N = 10k only (smoke run)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=4)
    p.add_argument(
        "--threshold",
        type=float,
        default=1.2,
        help="ratio margin kept (planted pairs score ~1.6, unrelated best neighbours ~1.1 on this data)",
    )
    p.add_argument(
        "--flat-max", type=int, default=50_000, help="ours: auto uses the exact index up to this size"
    )
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--brute-max", type=int, default=100_000, help="largest N for the numpy brute force")
    p.add_argument(
        "--flat-limit", type=int, default=100_000, help="largest N for ours-flat and LASER's recipe"
    )
    p.add_argument("--sample", type=int, default=2000, help="source rows for sample_recall")
    p.add_argument("--workdir", default=None, help="where the data files go (default: a temporary folder)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    sizes = [10_000] if args.quick else args.sizes
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS / ("mine_bench.quick.json" if args.quick else "mine_bench.json")
    )
    report = {
        "command": " ".join(["python -m bench.mine_bench", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            k: getattr(args, k)
            for k in ("dim", "k", "threshold", "flat_max", "nprobe", "brute_max", "flat_limit", "sample")
        },
        "versions": _versions(),
        "load_before": os.getloadavg(),
        "sizes": [],
    }
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mine-bench-"))
    for n in sizes:
        data = root / f"n{n}"
        t0 = time.perf_counter()
        info = make_data(n, args.dim, data)
        entry: dict = {"n": n, "data": info, "make_data_seconds": time.perf_counter() - t0, "methods": {}}
        methods = ["ours"]
        if n <= args.flat_limit:
            methods += ["ours-flat", "laser"]
        if n <= args.brute_max:
            methods.append("brute")
        if n > args.brute_max and n > args.flat_limit:
            methods.append("sample")
        for m in methods:
            entry["methods"][m] = _run_child(m, data, args)
            print(f"N={n:>9,} {m:<10} {json.dumps(entry['methods'][m])}", flush=True)
        gold = set(map(tuple, np.load(data / "gold.npy").tolist()))
        got = _pairs(data, "ours") if "error" not in entry["methods"]["ours"] else set()
        exact_name = next(
            (m for m in ("brute", "ours-flat") if m in methods and "error" not in entry["methods"][m]), None
        )
        if exact_name:
            exact = _pairs(data, exact_name)
            entry["exact"] = exact_name
            entry["recall"] = len(got & exact) / max(len(exact), 1)
            entry["precision_vs_exact"] = len(got & exact) / max(len(got), 1)
            for m in ("ours-flat", "laser", "ours"):
                if m in methods and m != exact_name and "error" not in entry["methods"][m]:
                    entry["methods"][m]["identical_to_exact"] = _pairs(data, m) == exact
        if "sample" in methods and "error" not in entry["methods"]["sample"]:
            sample = [(s, t) for s, t in np.load(data / "pairs-sample.npy").tolist() if t >= 0]
            entry["sample_recall"] = sum((s, t) in got for s, t in sample) / max(len(sample), 1)
            entry["sample_pairs"] = len(sample)
        entry["gold_recall"] = len(got & gold) / max(len(gold), 1)
        report["sizes"].append(entry)
        for f in data.glob("*.npy"):
            f.unlink()
    report["load_after"] = os.getloadavg()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'N':>10} {'method':<10} {'seconds':>9} {'cpu s':>8} {'peak GiB':>9} {'pairs':>9}  identical")
    for e in report["sizes"]:
        for m, r in e["methods"].items():
            if "error" in r:
                print(f"{e['n']:>10,} {m:<10} error: {r['error']}")
                continue
            print(
                f"{e['n']:>10,} {m:<10} {r['seconds']:>9.1f} {r['cpu_seconds']:>8.1f} {r['peak_rss_gib']:>9.2f} "
                f"{r['pairs']:>9,}  {r.get('identical_to_exact', '')}"
            )
        print(
            f"{'':>10} recall of exact ({e.get('exact')}): {e.get('recall')}, sample_recall: {e.get('sample_recall')}, "
            f"gold_recall: {e['gold_recall']:.4f}"
        )
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
