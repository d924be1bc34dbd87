"""bench.common: child measurement (CPU of descendants, peak RSS, reported payload), interleaving
order, the min/median/ratio summary against plain statistics, load flags and the results JSON."""

from __future__ import annotations

import json
import statistics
import sys

import pytest

from bench import common

BURN = "import time\nt=time.process_time()\nwhile time.process_time()-t<{s}: pass\n"


def test_child_cpu_includes_grandchild_and_payload():
    # The child burns 0.2 s itself and waits for a grandchild that burns 0.3 s: both must be counted.
    code = (
        "import subprocess, sys\n"
        + BURN.format(s=0.2)
        + f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}], check=True)\n"
        "from bench.common import child_report\nchild_report({'answer': 42})\n"
    )
    run = common.measure_child([sys.executable, "-c", code])
    assert run.cpu_s >= 0.45
    assert run.wall_s >= 0.45
    assert run.result == {"answer": 42}
    assert run.peak_rss_mb > 1
    assert run.load_before and run.load_after


def test_child_peak_rss_and_failure():
    # Held for 0.5 s: the peak is sampled (VmHWM) every 0.1 s.
    code = "import time\nb = bytearray(150 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\ntime.sleep(0.5)\n"
    run = common.measure_child([sys.executable, "-c", code])
    assert run.peak_rss_mb >= 150
    assert run.result is None
    with pytest.raises(RuntimeError, match="exit 3"):
        common.measure_child([sys.executable, "-c", "raise SystemExit(3)"], quiet=True)


def test_child_peak_excludes_the_parent_image():
    # ru_maxrss of a forked child counts the parent's pages before exec; the sampled VmHWM does not.
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    run = common.measure_child([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert run.peak_rss_mb < 200
    del ballast


def test_thread_env_sets_every_pool():
    env = common.thread_env(1, {"PATH": "/bin"})
    assert all(env[v] == "1" for v in common.THREAD_VARS) and env["PATH"] == "/bin"


def test_interleave_order():
    order: list[str] = []

    def side(name):
        def fn():
            order.append(name)
            return name

        return fn

    runs = common.interleave({"ours": side("ours"), "peer": side("peer")}, repeats=3)
    assert order == ["ours", "peer"] * 3
    assert runs == {"ours": ["ours"] * 3, "peer": ["peer"] * 3}


def test_compare_matches_plain_statistics():
    ours, peer = [3.0, 1.0, 2.0, 7.0], [5.0, 4.0, 6.0]
    rate = common.compare(ours, peer, higher_is_better=True)
    assert rate["ours"]["min"] == 1.0 and rate["ours"]["median"] == statistics.median(ours)
    assert rate["ratio_of_min"] == pytest.approx(1.0 / 4.0)
    assert rate["ratio_of_median"] == pytest.approx(statistics.median(ours) / 5.0)
    assert rate["ratio_of_best"] == pytest.approx(7.0 / 6.0)
    time_ = common.compare(ours, peer, higher_is_better=False)  # times: peer/ours, best = min
    assert time_["ratio_of_min"] == pytest.approx(4.0 / 1.0)
    assert time_["ratio_of_best"] == pytest.approx(4.0)
    assert time_["ratio_of_median"] == pytest.approx(5.0 / 2.5)


def test_load_flag():
    assert common.load_flag(10.0, 10.0, 1.0, 0.2, 1.0) == []
    foreign = common.load_flag(10.0, 10.0, 8.0, 0.2, 1.0)
    assert len(foreign) == 1 and foreign[0].startswith("foreign load 0.80")
    rise = common.load_flag(10.0, 10.0, 0.0, 0.2, 2.0)  # own 1 core + 0.5 < 1.8 rise
    assert len(rise) == 1 and rise[0].startswith("load average rose")


def test_write_result_and_machine(tmp_path):
    m = common.machine()
    assert m["cpu_count"] >= 1 and isinstance(m["cpu_model"], str)
    assert common.versions("pytest", "no-such-package-xyz") == {
        "pytest": pytest.__version__,
        "no-such-package-xyz": None,
    }
    r = common.Result(
        name="demo",
        command="python -m bench.demo --quick",
        equal_work="same",
        ours={"a": 1},
        peer={"b": (1, 2)},
        metrics={"x": common.compare([1.0], [2.0], True)},
    )
    path = common.write_result(r, tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "demo.json" and data["peer"] == {"b": [1, 2]}
    assert data["machine"]["cpu_count"] == m["cpu_count"] and data["metrics"]["x"]["ratio_of_min"] == 0.5


def test_matmul_peak_is_the_best_round_of_2n3_flops(monkeypatch):
    """On a scripted clock: rounds of 0.5, 0.25 and 0.4 s, the third one past the 1 s deadline. The peak
    is the best round's 2*n^3 multiply-adds per second (not the mean, the last, or n^3), and the timing
    loop stops at the deadline."""
    import types

    ticks = iter([0.0,  # the deadline: 0.0 + 1.0
                  0.0, 0.5, 0.5,  # round 1: start, end, deadline check
                  0.5, 0.75, 0.75,  # round 2
                  0.75, 1.15, 1.15])  # round 3: past the deadline, the last
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert common.matmul_peak(n=64, seconds=1.0) == pytest.approx(2 * 64**3 / 0.25)
    assert next(ticks, None) is None


def test_matmul_peak_agrees_with_a_plain_timing():
    """The real measurement against the same matmul timed here (best of 20): the same order of magnitude
    (a shared machine's load moves both; a wrong unit or FLOP count would not be within 10x)."""
    import time

    import torch

    a, b = torch.randn(128, 128), torch.randn(128, 128)
    best = 0.0
    for _ in range(20):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 128**3 / (time.perf_counter() - t0))
    peak = common.matmul_peak(n=128, seconds=0.1)
    assert best / 10 < peak < best * 10, (peak, best)


def test_parse_or_run_child_runs_the_side_or_returns_the_arguments(tmp_path):
    import argparse

    ran = []

    def parser():
        p = argparse.ArgumentParser()
        p.add_argument("--quick", action="store_true")
        return p

    spec = tmp_path / "spec.json"
    args = common.parse_or_run_child(parser(), ["--side", "b", "--spec", str(spec)], ("a", "b"), lambda *a: ran.append(a))
    assert args is None and ran == [("b", spec)]
    args = common.parse_or_run_child(parser(), ["--quick"], ("a", "b"), lambda *a: ran.append(a))
    assert args.quick and args.side is None and len(ran) == 1


def test_hf_training_args_carry_our_optimization(tmp_path):
    from transformers import TrainingArguments

    from labse_core.finetune.config import tiny_cpu

    cfg = tiny_cpu(lr=3e-4, warmup_steps=2, weight_decay=0.02, grad_clip=0.5, seed=5)
    a = TrainingArguments(**common.hf_training_args(cfg, tmp_path, 7, False, per_device_train_batch_size=4))
    assert (a.learning_rate, a.warmup_steps, a.weight_decay, a.max_grad_norm, a.seed) == (3e-4, 2, 0.02, 0.5, 5)
    assert (a.adam_beta1, a.adam_beta2, a.adam_epsilon) == (*cfg.betas, cfg.eps)
    assert (a.max_steps, a.per_device_train_batch_size, a.logging_steps) == (7, 4, 8)
