"""Shared machinery of the benchmarks: measured child processes, interleaved repeats, load checks,
versions, the machine, a matmul peak, and the results JSON.

Every benchmark runs each side (ours, the peer) in a *fresh child process* so that neither inherits
the other's warm caches, threads or allocator state, and so that the CPU-seconds of a side include
every process it starts (Beam/Dask workers, OpusFilter's `--n-jobs`, dataloader workers):

    run = measure_child([sys.executable, "-m", "bench.x", "--side", "ours"], env=thread_env(1))
    run.wall_s, run.cpu_s, run.peak_rss_mb, run.result   # result: what the child passed to child_report

The sides alternate (A B A B ...; `interleave`), and each metric is summarised by min and median with
the ratios ours/peer of both (`compare`): load from other processes then hits both sides alike instead
of whichever ran second. A side is flagged (`load_flag`) when other processes used more than
FOREIGN_LOAD_LIMIT cores on average while it ran, or when the 1-minute load average rose by more than
the side itself can explain plus LOAD_RISE_LIMIT.

Results go to bench/results/<name>.json with the exact command, the machine and the versions
(`write_result`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labse_core.packages import package_version

RESULTS = Path(__file__).resolve().parent / "results"
CHILD_RESULT_ENV = "BENCH_CHILD_RESULT"
FOREIGN_LOAD_LIMIT = 0.5
"""Average number of cores that *other* processes may keep busy during a measurement before it is
flagged (from /proc/stat's busy time minus the measured process tree's own CPU time)."""
LOAD_RISE_LIMIT = 0.5
"""Allowed rise of the 1-minute load average beyond what the measured side itself can add (its mean
number of busy cores)."""
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# ---------------------------------------------------------------------------------------------------
# The machine and the software


def machine() -> dict[str, Any]:
    """CPU count (all and usable), CPU model name, memory and OS, as a JSON-ready dict."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions(*packages: str) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    return {name: package_version(name) for name in packages}


def thread_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment with every BLAS/OpenMP pool limited to `threads` (equal threads per side)."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


# ---------------------------------------------------------------------------------------------------
# Load


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def _busy_cpu_s() -> float | None:
    """Busy CPU-seconds of the whole machine since boot (/proc/stat: everything but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def load_flag(
    own_cpu_s: float,
    wall_s: float,
    foreign_cpu_s: float | None,
    load_before: float,
    load_after: float,
) -> list[str]:
    """Reasons to distrust a measurement (empty = clean).

    foreign: other processes kept more than FOREIGN_LOAD_LIMIT cores busy on average during it;
    load: the 1-minute load average rose by more than the side's own mean busy cores + LOAD_RISE_LIMIT.
    """
    reasons = []
    wall = max(wall_s, 1e-9)
    if foreign_cpu_s is not None and foreign_cpu_s / wall > FOREIGN_LOAD_LIMIT:
        reasons.append(f"foreign load {foreign_cpu_s / wall:.2f} cores > {FOREIGN_LOAD_LIMIT}")
    own_cores = own_cpu_s / wall
    if load_after - load_before > own_cores + LOAD_RISE_LIMIT:
        reasons.append(f"load average rose {load_before:.2f} -> {load_after:.2f} (own {own_cores:.2f} cores)")
    return reasons


# ---------------------------------------------------------------------------------------------------
# One measured child process


@dataclass
class ChildRun:
    """One side's run in its own process (and its descendants)."""

    command: list[str]
    wall_s: float
    cpu_s: float
    """user + system CPU-seconds of the child and every descendant it waited for"""
    user_s: float
    sys_s: float
    peak_rss_mb: float
    """largest peak resident set (VmHWM, sampled every 0.1 s) of any single process in the tree"""
    peak_tree_rss_mb: float | None
    """largest sum of resident sets over the whole tree, sampled every 0.1 s (psutil), None without it"""
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    foreign_load: float | None
    """mean cores busy with other processes while the child ran"""
    flags: list[str]
    result: Any = None
    """what the child passed to `child_report` (None if it did not)"""

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"flagged": self.flagged}


def _hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of one live process since its exec, in MiB (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _sample_tree_rss(pid: int, stop: threading.Event, peaks: dict[str, float]) -> None:
    """Every 0.1 s until `stop`: the largest VmHWM of any process in the tree, and the largest sum of
    resident sets over the tree (psutil), into peaks["hwm"] / peaks["tree"]."""
    try:
        import psutil
    except ImportError:
        psutil = None
    while not stop.is_set():
        pids = [pid]
        total = 0.0
        if psutil is not None:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
                pids = [p.pid for p in procs]
                for p in procs:
                    try:
                        total += p.memory_info().rss / 2**20
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peaks["tree"] = max(peaks.get("tree", 0.0), total)
        peaks["hwm"] = max([peaks.get("hwm", 0.0), *(_hwm_mb(p) for p in pids)])
        stop.wait(0.1)


def measure_child(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    quiet: bool = False,
) -> ChildRun:
    """Run `command` to completion in a fresh process and measure it.

    CPU time and peak RSS come from wait4() on that child: they cover it and every descendant it
    waited for (worker pools included), and nothing else. The child may hand back a JSON payload by
    calling `child_report` (the path travels in BENCH_CHILD_RESULT). A non-zero exit raises.
    """
    import tempfile

    command = [str(c) for c in command]
    fd, result_path = tempfile.mkstemp(prefix="bench-child-", suffix=".json")
    os.close(fd)
    os.unlink(result_path)
    child_env = dict(os.environ if env is None else env)
    child_env[CHILD_RESULT_ENV] = result_path
    load_before = loadavg()
    busy_before = _busy_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command,
        env=child_env,
        cwd=cwd,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, stop, peaks), daemon=True)
    sampler.start()
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    busy_after = _busy_cpu_s()
    load_after = loadavg()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    foreign = None
    if busy_before is not None and busy_after is not None:
        # /proc/stat ticks are coarse (10 ms) while rusage is exact; clamp the small negative noise.
        foreign = max(0.0, (busy_after - busy_before) - cpu)
    result = None
    if os.path.exists(result_path):
        result = json.loads(Path(result_path).read_text())
        os.unlink(result_path)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {shlex.join(command)}")
    return ChildRun(
        command=command,
        wall_s=wall,
        cpu_s=cpu,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        # ru_maxrss (KiB) also counts the parent's image the child was forked from, before its exec:
        # the sampled VmHWM (since exec) is the child's own peak when the sampler saw it.
        peak_rss_mb=peaks.get("hwm") or usage.ru_maxrss / 1024,
        peak_tree_rss_mb=peaks.get("tree"),
        load_before=load_before,
        load_after=load_after,
        foreign_load=None if foreign is None else foreign / max(wall, 1e-9),
        flags=load_flag(cpu, wall, foreign, load_before[0], load_after[0]),
        result=result,
    )


def child_report(payload: Any) -> None:
    """In a child started by `measure_child`: hand `payload` (JSON-ready) back to the parent."""
    path = os.environ.get(CHILD_RESULT_ENV)
    if path:
        Path(path).write_text(json.dumps(payload))


def child_cpu_s() -> float:
    """CPU-seconds of this process so far (for in-child steady-state windows)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------------------------
# One command line for the parent and its children


def parse_or_run_child(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    sides: Sequence[str],
    child: Callable[[str, Path], None],
) -> argparse.Namespace | None:
    """Parse `argv` with a benchmark's `parser` plus the hidden `--side NAME --spec FILE` of its child
    processes. In a child (`--side` given): run `child(side, spec)` and return None; in the parent:
    the parsed arguments."""
    parser.add_argument("--side", choices=list(sides), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        child(args.side, args.spec)
        return None
    return args


def side_runner(
    module: str, spec: Path, env: Mapping[str, str] | None = None
) -> Callable[[str], Callable[[], ChildRun]]:
    """side(name): a function that runs side `name` of `python -m module` (with `--side name --spec
    spec`) in a fresh measured process, for `interleave`."""

    def side(name: str) -> Callable[[], ChildRun]:
        command = [sys.executable, "-m", module, "--side", name, "--spec", str(spec)]
        return lambda: measure_child(command, env=env)

    return side


def hf_training_args(cfg: Any, out: Path, steps: int, bf16: bool, **extra: Any) -> dict[str, Any]:
    """transformers' TrainingArguments (as keyword arguments, recorded in the results JSON) that run
    our RunConfig's optimization: AdamW with the same lr, betas, eps and weight decay, linear warm-up
    and decay over `steps`, the same clipping, seed and dtype; one log (of step 1: its loss is the
    equal-work check), no checkpoints, no evaluation, no reporting, no dataloader workers. `extra`:
    the benchmark's own settings (batch size, sampler, ...)."""
    import torch

    return {
        "output_dir": str(out),
        "max_steps": steps,
        "learning_rate": cfg.lr,
        "warmup_steps": cfg.warmup_steps,
        "lr_scheduler_type": "linear",
        "weight_decay": cfg.weight_decay,
        "adam_beta1": cfg.betas[0],
        "adam_beta2": cfg.betas[1],
        "adam_epsilon": cfg.eps,
        "max_grad_norm": cfg.grad_clip,
        "optim": "adamw_torch",
        "bf16": bf16,
        "use_cpu": not torch.cuda.is_available(),
        "logging_first_step": True,
        "logging_steps": steps + 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": cfg.seed,
    } | extra


# ---------------------------------------------------------------------------------------------------
# Interleaved repeats and their summary


def interleave(
    sides: Mapping[str, Callable[[], ChildRun]],
    repeats: int,
    on_run: Callable[[str, int, ChildRun], None] | None = None,
) -> dict[str, list[ChildRun]]:
    """Run the sides in turn, A B A B ..., `repeats` times each; returns the runs per side in order."""
    runs: dict[str, list[ChildRun]] = {name: [] for name in sides}
    for rep in range(repeats):
        for name, fn in sides.items():
            run = fn()
            runs[name].append(run)
            if on_run is not None:
                on_run(name, rep, run)
    return runs


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "values": list(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def compare(ours: Sequence[float], peer: Sequence[float], higher_is_better: bool) -> dict[str, Any]:
    """Min and median of each side and the ratios ours/peer of both.

    For a rate (higher is better) the ratio is ours/peer; for a time or a cost it is peer/ours, so a
    ratio above 1 always means ours is ahead. "best" pairs the best run of each side (max of a rate,
    min of a time): the run least disturbed by the rest of the machine.
    """
    o, p = summary(ours), summary(peer)
    best = "max" if higher_is_better else "min"

    def ratio(a: float, b: float) -> float:
        return a / b if higher_is_better else b / a

    return {
        "ours": o,
        "peer": p,
        "higher_is_better": higher_is_better,
        "ratio_of_min": ratio(o["min"], p["min"]),
        "ratio_of_median": ratio(o["median"], p["median"]),
        "ratio_of_best": ratio(o[best], p[best]),
    }


def flags_of(runs: Mapping[str, Sequence[ChildRun]]) -> list[str]:
    """Every flag raised in these runs, labelled with side and repeat."""
    return [f"{name}#{i}: {f}" for name, rs in runs.items() for i, r in enumerate(rs) for f in r.flags]


# ---------------------------------------------------------------------------------------------------
# Matmul peak


def matmul_peak(device: str = "cpu", dtype: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n x n torch.matmul over repeated timed rounds, with the current threads.

    The denominator of MFU: what this machine's BLAS actually reaches, not a nominal figure.
    """
    import torch

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        reps = 10 if dev.type == "cuda" else 1
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
        if time.perf_counter() >= deadline:
            return best


# ---------------------------------------------------------------------------------------------------
# Results


def command_line() -> str:
    """This process's command as a user would type it (`python -m bench.x ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


@dataclass
class Result:
    """The JSON one benchmark writes: what ran, on what, and what came out."""

    name: str
    command: str
    equal_work: str
    """plain-language statement of what both sides do identically"""
    ours: dict[str, Any]
    """our configuration"""
    peer: dict[str, Any]
    """the peer's exact configuration"""
    metrics: dict[str, Any]
    """compare() outputs and any derived figures"""
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    versions: dict[str, str | None] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def write_result(result: Result, directory: Path = RESULTS, path: Path | None = None) -> Path:
    """Write bench/results/<name>.json (or `path`) and return where it went."""
    path = path or directory / f"{result.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2, default=_jsonable) + "\n")
    return path


def runs_json(runs: Mapping[str, Sequence[ChildRun]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [r.to_json() for r in rs] for name, rs in runs.items()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, tuple | set):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
