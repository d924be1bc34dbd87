"""storage.faults: the hook kills for real, at the chosen hit, and only when asked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from storage import faults


def _run(at: str | None, calls: list[str], seed: str | None = None) -> subprocess.CompletedProcess[str]:
    """Call ``maybe_die`` for each point in a fresh interpreter; print the index after each survived call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSE_FAULT_")}
    if at is not None:
        env[faults.ENV_AT] = at
    if seed is not None:
        env[faults.ENV_SEED] = seed
    code = (
        "import atexit, sys\n"
        "from storage import faults\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        f"for i, p in enumerate({calls!r}, 1):\n"
        "    faults.maybe_die(p); print(i, flush=True)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_unset_is_a_no_op(monkeypatch):
    monkeypatch.delenv(faults.ENV_AT, raising=False)
    faults.reload()
    for _ in range(3):
        faults.maybe_die("dataset.swap")
    faults.maybe_die("no.such.point")  # unset: not even validated, zero cost


def test_parse():
    assert faults.parse("dataset.swap") == ("dataset.swap", 1)
    assert faults.parse("shard.part_written:3") == ("shard.part_written", 3)
    a = faults.parse("shard.part_written:random", "7")
    assert a == faults.parse("shard.part_written:random", "7")  # seeded: deterministic
    assert 1 <= a[1] <= faults.RANDOM_MAX_HIT
    hits = {faults.parse("vocab.part_written:random", str(s))[1] for s in range(40)}
    assert hits == set(range(1, faults.RANDOM_MAX_HIT + 1))  # and the seed does choose
    for bad, seed in [("dataset.swapp", None), ("dataset.swap:0", None), ("dataset.swap:x", None),
                      ("dataset.swap:random", None), ("dataset.swap:random", "abc")]:
        with pytest.raises(faults.FaultSpecError) as e:
            faults.parse(bad, seed)
        assert "\n" not in str(e.value) and faults.ENV_AT in str(e.value)


def test_kills_at_the_chosen_hit_without_cleanup():
    p = _run("shard.part_written:3", ["dataset.swap", "shard.part_written", "shard.part_written",
                                      "shard.part_written", "shard.part_written"])
    assert p.returncode == -signal.SIGKILL
    assert p.stdout.split() == ["1", "2", "3"]  # died on the 3rd hit of the point, the 4th call
    assert "atexit ran" not in p.stdout
    assert "fault injected: shard.part_written:3" in p.stderr


def test_random_hit_matches_parse():
    _, hit = faults.parse("prepare.part_written:random", "11")
    p = _run("prepare.part_written:random", ["prepare.part_written"] * 5, seed="11")
    assert p.returncode == -signal.SIGKILL
    assert p.stdout.split() == [str(i) for i in range(1, hit)]


def test_point_not_reached_exits_normally():
    p = _run("dataset.swap", ["dataset.staged"])
    assert p.returncode == 0 and "atexit ran" in p.stdout


def test_unknown_point_in_env_is_a_one_line_error():
    p = _run("dataset.swapp", ["dataset.swap"])
    assert p.returncode == 1
    assert "FaultSpecError" in p.stderr and "unknown fault point 'dataset.swapp'" in p.stderr
