"""Data stages under faults: `labse prepare`, `labse vocab` and `labse shard` SIGKILLed mid-write, a full
disk, two writers at once. Real CLI processes on real gettext catalogs; kills are real SIGKILLs at points
chosen by a seeded random (``storage.faults`` hooks in the stage code, or a SIGKILL of the whole process
group from outside once staging holds part files).

Every kill test checks: the lake is byte-for-byte the previous version after the kill (once a reader ran:
``labse sql``, whose start-up rolls back an interrupted publish), no staging folder or worker process
outlives the run, the catalog still reads it, and a rerun ends equal (rows, manifests, vocabulary bytes) to
an uninterrupted run. The default run covers every fault path once (a worker killed, the driver's
lost-worker path on the main thread; the whole process group killed from outside; the driver killed at
each of the publish points), each on a stage drawn by a seeded random, so that all three stages are
used; ``LABSE_FAULT_TEST_SEED`` draws other stages and hit numbers (default 15); ``LABSE_FAULT_SWEEP=1``
runs every point of every stage (slow: for a release check).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.faults.conftest import SIGKILLED, labse_cmd, labse_env, pids_in_group, run_labse, tree_digest

SEED = int(os.environ.get("LABSE_FAULT_TEST_SEED", "15"))
SWEEP = os.environ.get("LABSE_FAULT_SWEEP") == "1"
CATALOGS = ["de/diffutils", "de/apt", "de/sed", "de/grep", "fr/diffutils", "fr/sed", "fr/grep", "ru/sed", "ru/grep"]
WORKERS = ["--workers", "2"]  # the multi-process direct runner: worker processes that must not outlive a kill

# The CLI commands of the runs under test; the "previous" versions come from the same commands with other
# settings, so a kill that let any new file through would show.
PREPARE = ["prepare", *WORKERS]  # + --eval-set
VOCAB = ["vocab", "--vocab-size", "600", "--sample-size", "3000", *WORKERS]
SHARD = ["shard", "--rows-per-shard", "300", "--max-len", "32", *WORKERS]
OLD_PREPARE = ["prepare", "--max-per-source", "1", *WORKERS]
OLD_VOCAB = ["vocab", "--vocab-size", "500", "--sample-size", "2000", *WORKERS]
OLD_SHARD = ["shard", "--rows-per-shard", "500", "--max-len", "32", *WORKERS]

# Kill points per stage: (LABSE_FAULT_AT, who dies). "external:N" = the test SIGKILLs the process group
# once N part files are in staging (the driver and its workers, mid-write).
POINTS = {
    "prepare": [("prepare.part_written:2", "worker"), ("external:1", "group"), ("dataset.staged", "driver"),
                ("dataset.manifest:2", "driver"), ("dataset.swap:1", "driver"), ("dataset.swap:2", "driver")],
    "vocab": [("vocab.part_written:1", "worker"), ("dataset.staged", "driver"), ("dataset.swap:1", "driver")],
    "shard": [("shard.part_written:2", "worker"), ("external:2", "group"), ("dataset.manifest:3", "driver"),
              ("dataset.staged", "driver"), ("dataset.swap:2", "driver"), ("dataset.swap:4", "driver")],
}


def fault_path(point: str, who: str) -> str:
    """What a kill exercises: a lost worker, the group killed from outside, or the driver killed at one of
    storage.datasets' publish points (the hit number only picks which folder or file)."""
    return point.partition(":")[0] if who == "driver" else who


def covering_points(seed: int) -> list[tuple[str, str, str]]:
    """(stage, point, who): one per fault path, drawn by ``seed`` among the stages that have it, a stage
    not used yet preferred (paths in name order), so the five cover the three stages."""
    rng = random.Random(f"{seed}-cover")
    by_path: dict[str, list[tuple[str, str, str]]] = {}
    for stage, points in POINTS.items():
        for point, who in points:
            by_path.setdefault(fault_path(point, who), []).append((stage, point, who))
    chosen: list[tuple[str, str, str]] = []
    for path in sorted(by_path):
        fresh = [c for c in by_path[path] if c[0] not in {s for s, _, _ in chosen}]
        chosen.append(rng.choice(fresh or by_path[path]))
    return chosen


CASES = [(s, p, w) for s in POINTS for p, w in POINTS[s]] if SWEEP else covering_points(SEED)


def test_the_default_run_covers_every_fault_path_and_stage():
    for seed in (SEED, 0, 1, 2):
        cases = covering_points(seed)
        assert {fault_path(p, w) for _, p, w in cases} == {fault_path(p, w) for pts in POINTS.values() for p, w in pts}
        assert {s for s, _, _ in cases} == set(POINTS) and len(cases) == 5


def _ok(r, what: str) -> None:
    assert r.rc == 0, f"{what}: rc {r.rc}\n{r.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------------
# What a lake holds, independent of run ids, timestamps, file splits and the home's path


def _norm(obj, home: Path):
    if isinstance(obj, dict):
        return {k: _norm(v, home) for k, v in obj.items() if k not in ("created_at", "run_id", "beam")}
    if isinstance(obj, list):
        return [_norm(v, home) for v in obj]
    if isinstance(obj, str):  # a path into a lake (the baselines were built in another home, then copied)
        return re.sub(r"^/\S*?/lake/", "<home>/lake/", obj.replace(str(home), "<home>"))
    return obj


def contents(home: Path) -> dict:
    """Every published dataset's rows (sorted, hashed) and normalised manifest, the vocabulary's bytes, the
    TFRecord copies' bytes: equal for two homes that ran the same commands, whatever the run ids."""
    lake = home / "lake"
    out: dict = {}
    for mpath in sorted(lake.rglob("_manifest.json")):
        rel = mpath.parent.relative_to(lake).as_posix()
        if rel.startswith("_staging"):
            continue
        m = json.loads(mpath.read_text())
        if "files" in m and isinstance(m["files"], list):  # a dataset
            rows = []
            for f in m["files"]:
                t = pq.ParquetFile(mpath.parent / f["path"]).read()
                part = json.dumps(f.get("partition", {}), sort_keys=True)
                rows += [part + json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist()]
            assert len(rows) == m["rows"] == sum(m["partitions"].values()), f"{rel}: counts do not add up"
            out[rel] = {"rows": hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest(), "n": m["rows"],
                        "partitions": m["partitions"], "stats": _norm(m["stats"], home),
                        "producer": _norm(m["producer"], home)}
        else:  # the TFRecord copies
            out[rel] = {"manifest": _norm(m, home),
                        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mpath.parent.glob("*.tfrecord")}}
    vocab = lake / "vocab"
    if vocab.is_dir():
        for p in sorted(vocab.rglob("*")):
            if p.is_file():
                data = json.loads(p.read_text()) if p.name == "vocab.json" else None
                out[f"vocab/{p.relative_to(vocab)}"] = (
                    _norm({k: v for k, v in data.items() if k != "corpus_manifest_created_at"}, home)
                    if data is not None else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def diff(a, b, at: str = "") -> list[str]:
    """The leaf paths where two ``contents`` differ (a readable assertion message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{at}/{k}")]
    return [] if a == b else [f"{at}: {str(a)[:150]} != {str(b)[:150]}"]


def lake_files(home: Path) -> dict[str, str]:
    """Byte digest of every published file (staging excluded)."""
    return tree_digest(home / "lake", ignore=("_staging",))


def staging_leftovers(home: Path) -> list[str]:
    st = home / "lake" / "_staging"
    return sorted(p.name for p in st.iterdir() if not p.name.endswith(".lock")) if st.exists() else []


def copy_home(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("catalog.duckdb*", "prefect", "mlflow"))
    return dst


# ---------------------------------------------------------------------------------------------------
# Baselines, built once per module by the same CLI commands


def _beam():
    from beam_jobs.options import BeamConfig

    return BeamConfig(running_mode="in_memory", num_workers=1)


def _in_process(home: Path, stage: str, args: list[str], evalset: Path, catalogs: list[Path]) -> None:
    """What ``labse ARGS`` runs, called in this process on the in-memory runner (the baselines cost seconds,
    not a worker start-up each); the configs are those the CLI builds from ARGS."""
    from beam_jobs import gettext_ingest, prepare, shard, vocab
    from labse_core.vocab import VocabConfig
    from storage.layout import Layout

    layout = Layout.from_env(home).ensure()
    opt = dict(zip(args[1::2], args[2::2], strict=False)) if stage != "ingest" else {}
    if stage == "ingest":
        gettext_ingest.run(gettext_ingest.GettextIngestConfig(locale_roots=[], paths=catalogs, beam=_beam()), layout)
    elif stage == "prepare":
        cap = int(opt["--max-per-source"]) if "--max-per-source" in opt else None
        prepare.run(prepare.PrepareConfig(eval_sets=[evalset], max_translations_per_source=cap, beam=_beam()), layout)
    elif stage == "vocab":
        cfg = VocabConfig(vocab_size=int(opt["--vocab-size"]), sample_size=int(opt["--sample-size"]))
        vocab.run(vocab.VocabStageConfig(vocab=cfg, beam=_beam()), layout)
    else:
        shard.run(shard.ShardConfig(rows_per_shard=int(opt["--rows-per-shard"]), max_len=int(opt["--max-len"]),
                                    beam=_beam()), layout)


@pytest.fixture(scope="module")
def homes(tmp_path_factory, real_catalogs) -> dict[str, Path]:
    """``before``: ingest + old prepare/vocab/shard versions; ``prepare``/``vocab``/``shard``: ``before`` plus
    the uninterrupted runs under test, one after the other. Each is a home to copy, never to modify."""
    paths = [real_catalogs / f"{c.split('/')[0]}/LC_MESSAGES/{c.split('/')[1]}.mo" for c in CATALOGS]
    paths = [p for p in paths if p.exists()]
    if len(paths) < 5:
        pytest.skip("this machine lacks the gettext catalogs these tests read (diffutils, sed, grep, apt)")
    root = tmp_path_factory.mktemp("faults-data")
    evalset = root / "eval.txt"
    evalset.write_text("Hallo Welt\n")  # a tiny evaluation set: decontamination without Tatoeba's start-up cost
    home = root / "build"
    for stage, args in (("ingest", []), ("prepare", OLD_PREPARE), ("vocab", OLD_VOCAB), ("shard", OLD_SHARD)):
        _in_process(home, stage, args, evalset, paths)
    out = {"before": copy_home(home, root / "before"), "eval": evalset}
    for stage, args in (("prepare", PREPARE), ("vocab", VOCAB), ("shard", SHARD)):
        _in_process(home, stage, args, evalset, paths)
        out[stage] = copy_home(home, root / stage)
    return out


# A reader: refreshes the DuckDB catalog from the manifests, lists every dataset through it (exit 2 if one
# is damaged).
READER = ["datasets", "--format", "csv"]


def catalog_rows(csv_text: str) -> dict[str, int]:
    import csv
    import io

    return {r["name"]: int(r["rows"]) for r in csv.DictReader(io.StringIO(csv_text))}


def manifest_rows(lake: Path) -> dict[str, int]:
    from storage.schemas import DATASETS

    out = {}
    for spec in DATASETS.values():
        m = lake / spec.relpath / "_manifest.json"
        if m.exists():
            out[spec.name] = json.loads(m.read_text())["rows"]
    return out


STAGES = {"prepare": ("before", PREPARE), "vocab": ("prepare", VOCAB), "shard": ("vocab", SHARD)}


def _run_until_parts(home: Path, args: list[str], parts: int) -> tuple[int, str, int]:
    """Start ``labse ARGS``; SIGKILL its whole process group once staging holds ``parts`` part files."""
    p = subprocess.Popen(labse_cmd(*args), env=labse_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    staging = home / "lake" / "_staging"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        written = [f for f in staging.glob("*/**/*") if f.suffix in (".parquet", ".tfrecord", ".txt")
                   and not f.name.startswith(".")] if staging.exists() else []
        if len(written) >= parts:
            os.killpg(p.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    _, err = p.communicate(timeout=60)
    return p.returncode, err, p.pid


def _no_process_left(pgid: int, within: float = 20.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := pids_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


@pytest.mark.parametrize("stage,point,who", CASES, ids=lambda v: str(v).replace(":", "@") if isinstance(v, str) else None)
def test_stage_killed_mid_write_keeps_the_previous_version_and_reruns_equal(homes, tmp_path, stage, point, who):
    base, args = STAGES[stage]
    args = args + (["--eval-set", str(homes["eval"])] if stage == "prepare" else [])
    home = copy_home(homes[base], tmp_path / "home")
    before = lake_files(home)

    if point.startswith("external:"):
        rc, err, pgid = _run_until_parts(home, args, int(point.split(":")[1]))
    else:
        p = subprocess.Popen(labse_cmd(*args), env=labse_env(home, fault=point), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # a hung stage must not outlive the test
            p.communicate()
            pytest.fail(f"{stage} with {point} hung (a lost worker must fail the stage, not hang it)")
        rc, pgid = p.returncode, p.pid
    name, _, hit = point.partition(":")
    if who != "group":  # the kill happened where it was asked to (not some other death)
        assert f"fault injected: {name}:{hit or 1} " in err, err[-2000:]
    if who == "worker":  # the driver sees its worker vanish: a one-line error, nothing published
        assert rc == 2 and "a Beam worker process died" in err, (rc, err[-2000:])
        assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    else:
        assert rc == SIGKILLED, (rc, err[-2000:])
    assert not _no_process_left(pgid), "Beam worker processes outlived the killed command"

    # A reader (its start-up rolls back an interrupted publish) sees exactly the previous version.
    q = run_labse(home, *READER)
    _ok(q, "labse datasets")
    assert lake_files(home) == before, f"{stage} killed at {point}: the published lake changed"
    assert staging_leftovers(home) == []
    assert catalog_rows(q.stdout) == manifest_rows(home / "lake")

    _ok(run_labse(home, *args), f"{stage} rerun")
    got, want = contents(home), contents(homes[stage])
    assert got == want, f"{stage} rerun after a kill at {point} differs: {diff(got, want)}"
    assert staging_leftovers(home) == []


# A stage run on a thread other than the main one, as a Prefect task runs it inside `labse pipeline`.
IN_A_THREAD = textwrap.dedent("""
    import os, sys, threading
    sys.path.insert(0, os.getcwd())
    from beam_jobs import vocab
    from beam_jobs.options import BeamConfig
    from labse_core.vocab import VocabConfig
    from storage.layout import Layout
    out = {}
    def stage():
        cfg = vocab.VocabStageConfig(vocab=VocabConfig(vocab_size=600, sample_size=3000), beam=BeamConfig(num_workers=2))
        try:
            vocab.run(cfg, Layout.from_env())
            out["error"] = None
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
    t = threading.Thread(target=stage, name="task")
    t.start()
    t.join(120)
    print("hung" if t.is_alive() else out["error"], flush=True)
    os._exit(3 if t.is_alive() else 0)
""")


def test_a_lost_worker_fails_a_stage_running_outside_the_main_thread(homes, tmp_path):
    """No signal handler can be installed off the main thread: the dead worker's pending instructions
    are failed instead (beam_jobs.failures), so the stage raises WorkerLost rather than hanging."""
    home = copy_home(homes["prepare"], tmp_path / "home")
    before = lake_files(home)
    p = subprocess.Popen([sys.executable, "-c", IN_A_THREAD], env=labse_env(home, fault="vocab.part_written:1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.startswith("WorkerLost: vocab: a Beam worker process died"), \
        (p.returncode, out, err[-2000:])
    assert not _no_process_left(p.pid), "Beam worker processes outlived the stage"
    assert lake_files(home) == before and staging_leftovers(home) == []


# ---------------------------------------------------------------------------------------------------
# Full disk


FULL_DISK = textwrap.dedent("""
    import json, os, subprocess, sys
    sys.path.insert(0, os.getcwd())
    from tests.faults.conftest import tree_digest
    home, free, stage, reader = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    lake = os.path.join(home, "lake")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", lake], check=True)
    subprocess.run(["cp", "-a", lake + ".base/.", lake], check=True)
    before = tree_digest(__import__("pathlib").Path(lake), ignore=("_staging",))
    filler = os.path.join(home, "lake", "_filler")
    with open(filler, "wb") as fh:  # fill the tmpfs, then give back `free` bytes: not enough for the stage
        try:
            while True:
                fh.write(b"\\0" * 65536)
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, os.path.getsize(filler) - free))
    env = dict(os.environ, LABSE_HOME=home)
    r = subprocess.run(stage, capture_output=True, text=True, env=env)
    st = os.path.join(lake, "_staging")
    leftovers = sorted(n for n in os.listdir(st) if not n.endswith(".lock")) if os.path.isdir(st) else []
    os.unlink(filler)
    after = tree_digest(__import__("pathlib").Path(lake), ignore=("_staging",))
    q = subprocess.run(reader, capture_output=True, text=True, env=env)
    print(json.dumps({"rc": r.returncode, "stderr": r.stderr, "intact": before == after, "leftovers": leftovers,
                      "reader_rc": q.returncode, "reader": q.stdout, "reader_err": q.stderr}))
""")


def _with_a_small_tmpfs(home: Path, script: str, *args: str) -> tuple[dict, str, list[str]]:
    """Run ``script`` (it mounts a small tmpfs, runs the stage, prints a JSON line) in a private mount
    namespace; the stage's result, its stderr and stderr's non-blank lines. The stage must have failed
    with exit code 2. -U maps this user to root in a new user namespace (no privilege needed), -m gives a
    private mount namespace: the tmpfs exists for this check only, whoever runs the suite."""
    p = subprocess.run(["unshare", "-Urm", sys.executable, "-c", script, *args], capture_output=True, text=True,
                       env=labse_env(home), timeout=300)
    if p.returncode != 0 and any(s in p.stderr for s in ("Operation not permitted", "unshare failed", "mount:")):
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip().splitlines()[-1]})")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    err = r["stderr"]
    assert r["rc"] == 2, err[-3000:]
    return r, err, [x for x in err.splitlines() if x.strip()]


def test_full_disk_fails_cleanly_and_leaves_the_lake_valid(homes, tmp_path):
    """`labse prepare` on a lake (a small tmpfs) with ~100 KB free: a one-line error naming the lake and the
    full disk (exit 2, no traceback), the previous version byte-identical, staging cleaned, the catalog reads it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs in a private mount namespace")
    home = copy_home(homes["before"], tmp_path / "home")
    (home / "lake").rename(home / "lake.base")
    (home / "lake").mkdir()
    stage = labse_cmd(*PREPARE, "--eval-set", str(homes["eval"]))
    reader = labse_cmd(*READER)
    r, err, lines = _with_a_small_tmpfs(home, FULL_DISK, str(home), str(96 * 1024), json.dumps(stage), json.dumps(reader))
    assert "Traceback" not in err and lines[-1].startswith("error:") and "no space left" in lines[-1].lower(), err[:3000]
    assert str(home / "lake") in lines[-1], lines[-1]  # names where it ran out
    assert r["intact"], "the published lake changed"
    assert r["leftovers"] == [], r["leftovers"]
    assert r["reader_rc"] == 0, r["reader_err"]
    assert catalog_rows(r["reader"]) == manifest_rows(home / "lake.base")


SPILL_FULL = textwrap.dedent("""
    import json, os, subprocess, sys
    spill, size, stage = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", spill], check=True)
    r = subprocess.run(stage, capture_output=True, text=True, env=dict(os.environ, LABSE_SPILL_DIR=spill))
    print(json.dumps({"rc": r.returncode, "stderr": r.stderr, "left": os.listdir(spill)}))
""")


def test_a_disk_that_fills_while_spilling_is_one_line_and_loses_nothing(homes, tmp_path):
    """The dedupe's spill (LABSE_SPILL_DIR, a 64 KiB tmpfs here) fills: one line naming the spill folder
    and the space the run needs (exit 2, no traceback), the published corpus unchanged, the spill and
    staging removed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs in a private mount namespace")
    home = copy_home(homes["before"], tmp_path / "home")
    before = lake_files(home)
    spill = tmp_path / "spill"
    spill.mkdir()
    stage = labse_cmd(*PREPARE, "--eval-set", str(homes["eval"]))
    r, err, lines = _with_a_small_tmpfs(home, SPILL_FULL, str(spill), "64k", json.dumps(stage))
    assert "Traceback" not in err and lines[-1].startswith("error:"), err[-3000:]
    assert f"no space left on device while spilling to {spill}/spill-" in lines[-1], lines[-1]
    assert re.search(r"the spill needs about [\d.]+ (GiB|MiB) free", lines[-1]), lines[-1]
    assert lake_files(home) == before, "the published lake changed"
    assert staging_leftovers(home) == [] and r["left"] == [], (staging_leftovers(home), r["left"])


# ---------------------------------------------------------------------------------------------------
# Two writers at once


def test_two_stage_commands_at_once_serialise_on_the_lake_lock(homes, tmp_path):
    """Two `labse prepare` started together on one home: the second waits for the first (one line on
    stderr naming the holder), both succeed, and the lake ends equal to one uninterrupted run, valid."""
    home = copy_home(homes["before"], tmp_path / "home")
    args = [*PREPARE, "--eval-set", str(homes["eval"])]
    procs = [subprocess.Popen(labse_cmd(*args), env=labse_env(home), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    waited = [e for e in errs if "prepare: waiting for the run that holds" in e]
    assert len(waited) == 1, errs  # exactly one waited: they never ran at the same time
    line = next(x for x in waited[0].splitlines() if "waiting for" in x)
    assert str(home / "run" / "lake.lock") in line and "pid " in line and ": prepare, since" in line
    got, want = contents(home), contents(homes["prepare"])
    assert got == want, diff(got, want)
    q = run_labse(home, *READER)
    _ok(q, "labse datasets")
    assert catalog_rows(q.stdout) == manifest_rows(home / "lake") and staging_leftovers(home) == []


def test_pipeline_waits_for_the_lake_lock_before_any_work(tmp_path):
    """`labse pipeline` takes the same lock, for its whole run: while another process holds it, the
    pipeline says so on one line and writes nothing (it is killed there; the stage tests above cover what
    happens after the wait)."""
    from storage.layout import Layout
    from storage.locks import lake_lock

    home = tmp_path / "home"
    layout = Layout.from_env(home).ensure()
    with lake_lock(layout, "a test holding the lake"):
        p = subprocess.Popen(labse_cmd("pipeline", "--preset", "smoke"), env=labse_env(home),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        lines: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and p.poll() is None and not any("waiting for" in x for x in lines):
            time.sleep(0.2)
        waiting = [x for x in lines if "waiting for" in x]
        time.sleep(1.0)  # it must stay blocked
        published = [m for m in (home / "lake").rglob("_manifest.json") if "_staging" not in m.parts]
        still_running = p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert waiting and "labse pipeline: waiting for the run that holds" in waiting[0], "".join(lines)[-3000:]
    assert "a test holding the lake" in waiting[0]
    assert still_running and published == []
    assert not _no_process_left(p.pid)
