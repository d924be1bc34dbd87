"""Data preparation throughput: our ``prepare`` stage vs OpusFilter, same raw pairs, same machine, one run.

    python -m bench.prepare_bench                  # all gettext catalogs of this machine (~1.76 M pairs, ~25 min)
    python -m bench.prepare_bench --quick          # 10 languages (~0.48 M pairs, ~10 min): a fast check
    python -m bench.prepare_bench --home ~/labse_home --keep   # reuse that home's corpus_raw, keep the files
    python -m bench.prepare_bench --only ours --profile 100000 # ours only, plus where its CPU time goes
    python -m bench.prepare_bench --only ours --prepare-set rows_per_file=10000   # try a stage setting

Writes ``bench/results/prepare_bench.json`` (``prepare_bench.quick.json`` with ``--quick``) and
prints a table: system, pairs, kept, seconds, pairs/s, peak memory, CPU seconds, pairs per CPU-second.
Target (issue "Beam data pipeline"): ours >= 2x OpusFilter's pairs/s on 2 cores, our peak memory
< 4 GiB. Wall-clock pairs/s depends on what else runs on the machine; pairs per CPU-second much
less (both systems are CPU bound), so the JSON gives both ratios, the load average, each process's
CPU time and peak RSS, and a timeline of RSS and CPU by process role (main, Beam SDK worker).

What it does:
  1. ``corpus_raw``: ingests every catalog under /usr/share/locale into a temporary LABSE_HOME
     (``beam_jobs.gettext_ingest``; not timed), or reuses the one in ``--home``.
  2. Exports the same raw pairs for OpusFilter as aligned text files, one file pair per language
     (``raw/<lang>.src`` English, ``raw/<lang>.tgt``), line breaks inside a text turned into spaces
     (OpusFilter is line based; our normalization turns them into spaces too). Also the evaluation
     sentences (Tatoeba v1, the same ``PrepareConfig.eval_sets`` our stage uses) as overlap files.
  3. Ours: ``beam_jobs.prepare.run`` with its defaults (normalize, decontaminate, every filter,
     dedupe, Parquet out, clean + rejects) on Beam's DirectRunner, multi_processing, ``--workers``
     processes, in a child process: seconds = wall time of that child (interpreter start and imports
     included), pairs/s = input pairs / seconds.
  4. OpusFilter (``.venv-opusfilter/bin/opusfilter config.yaml``, created from
     ``bench/requirements-opusfilter.txt`` if missing) on the exported files, timed the same way.
  Peak memory of each system is the largest sum of RSS over its whole process tree (the child, the
  Beam SDK workers / the OpusFilter processes), sampled every 0.1 s: an upper bound, shared pages
  count once per process. Both systems run with one BLAS thread per process (``--blas-threads``):
  with 2 processes on 2 cores, OpenBLAS's own threads only contend (py3langid's classify, one
  ``np.dot`` per text, is ~10x slower with 2 BLAS threads on a busy 2-core machine).

How OpusFilter is run, and why (the fairest setting we found for it):
  - **Per language (option a), not one big file.** Our filters use each pair's languages (expected
    script, language ID); OpusFilter's are configured per file pair with fixed languages, so each
    language gets its own steps. Running language-agnostic filters on one file (option b) would skip
    the script and language checks that are part of our cost.
  - **2 cores:** the languages are split into ``--workers`` shards balanced by pair count, one
    ``opusfilter`` process per shard, run concurrently (OpusFilter's own ``n_jobs`` would split and
    merge the files of every step and reload the filters per step and job; whole shards do neither).
  - **Cheapest step order:** preprocess -> dedupe -> decontaminate -> filter (ours filters before it
    dedupes; removing duplicates first means fewer pairs to filter, which only helps OpusFilter).
  - **Decontamination** is ``remove_duplicates`` with ``overlap``: the English side against the
    English Tatoeba sentences, the other side against that language's Tatoeba sentences (ours
    checks both sides against every evaluation sentence, through a normalized key).

Mapping of the work (ours: ``labse_core.prepare.process_batch`` + ``labse_core.text.filters``,
thresholds from ``FilterConfig`` defaults; OpusFilter 3.3.1 steps and filters):

    ours                          OpusFilter                                      OpusFilter differs in
    ----------------------------  ----------------------------------------------  --------------------------------
    normalize_text (NFC, spaces,  preprocess: WhitespaceNormalizer + RegExpSub    no Unicode normal form; simpler
      controls, accelerators)       ("(_F)" suffixes, _ & ~ before a letter)        accelerator rule
    eval_overlap                  remove_duplicates overlap=Tatoeba, per side     lowercased text, not our key
    empty_side, too_short,        LengthFilter unit=char [min_chars, max_chars]
      too_long                      + LengthFilter unit=word [min_words, max_words]
    markup_or_url, min_letters    RegExpFilter "\\p{L}" accept_match              markup not removed first
    length_ratio                  LengthRatioFilter unit=char, max_length_ratio   no smoothing, no CJK weights
    copy                          SimilarityFilter threshold=1.0, lowercase       Levenshtein, not key equality
    repetition                    RepetitionFilter threshold=repeats-1, 2..32 ch  one regex, any unit
    placeholder_mismatch          -                                               no equivalent: not done
    number_mismatch               NonZeroNumeralsFilter threshold=1.0             digit order, no tolerance
    script_mismatch               CharacterScoreFilter [Latin, script],           one script per side: ja, ko,
                                    thresholds script_min_share                     zh-Hant, iu, tzm (several) and
                                                                                    nv, pi (unknown) are scored
                                                                                    but never rejected
    lang_id (sides with >= 20     LangidFilter (what LanguageIDFilter with        classifies every text of both
      letters, not English;         id_method: langid runs), languages             sides (English never rejected);
      reject if >= 0.9 sure of      [en, label], thresholds [-1, 0]                rejects any other top label;
      another language)                                                             none where py3langid lacks the
                                                                                    language, as ours
    duplicate (normalized key)    remove_duplicates lowercase=true                lowercased text, not our key
    clean + rejects Parquet,      clean text files only
      manifests, accounting

So OpusFilter does less in places (no placeholder check, no rejects output, no Parquet) and more in
others (language ID on every text, both sides): the ratio compares two complete cleaning passes of
the same input, not identical decisions; the JSON records each system's kept count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "bench" / "requirements-opusfilter.txt"
DEFAULT_OPUS_VENV = REPO_ROOT / ".venv-opusfilter"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
QUICK_LANGS = ("de", "fr", "es", "pt", "ru", "uk", "ja", "zh", "ar", "hi")
TARGET_RATIO = 2.0
TARGET_PEAK_GIB = 4.0
GIB = 1 << 30

# Characters that end a line for OpusFilter (Python text files, universal newlines).
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " "})


# ---------------------------------------------------------------------------------------------------
# Measuring a process tree


@dataclass
class Measurement:
    system: str
    pairs: int
    kept: int
    seconds: float
    peak_rss_gib: float
    """Largest sum of RSS over the process tree (sampled every 0.1 s)."""
    max_process_rss_gib: float
    """Largest RSS of one process of the tree."""
    cpu_seconds: float
    """User + system CPU time of the tree (last sample of each process)."""
    processes: int
    details: dict = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    @property
    def pairs_per_cpu_s(self) -> float:
        """Less sensitive than pairs/s to other jobs sharing the cores (both systems are CPU bound)."""
        return self.pairs / self.cpu_seconds if self.cpu_seconds else 0.0


class TreeSampler(threading.Thread):
    """Samples RSS and CPU time of some processes and all their descendants until stopped."""

    def __init__(self, pids: list[int], interval: float = 0.1):
        super().__init__(daemon=True)
        self.roots = [psutil.Process(p) for p in pids]
        self.interval = interval
        self.peak = 0
        self.max_one = 0
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.timeline: list[dict] = []
        """Every 2 s (coarser for long runs): elapsed seconds, GiB of RSS and CPU seconds by process role."""
        self._t0 = time.perf_counter()
        self._next_mark = 0.0
        self._mark_every = 2.0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        procs: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                procs[root.pid] = root
                for c in root.children(recursive=True):
                    procs[c.pid] = c
            except psutil.NoSuchProcess:
                pass
        total = 0
        by_role: dict[str, list[float]] = {}
        for pid, p in procs.items():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            total += rss
            self.max_one = max(self.max_one, rss)
            self.cpu[pid] = t.user + t.system
            self.rss[pid] = max(self.rss.get(pid, 0), rss)
            if pid not in self.role:
                self.role[pid] = _role(p, pid in {r.pid for r in self.roots})
            acc = by_role.setdefault(self.role[pid], [0.0, 0.0])
            acc[0] += rss / GIB
            acc[1] += self.cpu[pid]
        self.peak = max(self.peak, total)
        elapsed = time.perf_counter() - self._t0
        if elapsed >= self._next_mark:
            if len(self.timeline) >= 200:  # keep it short: halve the resolution
                self.timeline, self._mark_every = self.timeline[::2], 2 * self._mark_every
            self._next_mark = elapsed + self._mark_every
            self.timeline.append(
                {"t": round(elapsed, 1), "rss_gib": round(total / GIB, 2)}
                | {f"{role}_rss_gib": round(v[0], 2) for role, v in sorted(by_role.items())}
                | {f"{role}_cpu_s": round(v[1], 1) for role, v in sorted(by_role.items())}
            )

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _role(p: psutil.Process, is_root: bool) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        cmd = ""
    if "sdk_worker_main" in cmd:
        return "beam-sdk-worker"
    return "main" if is_root else "child"


def per_process(s: TreeSampler) -> list[dict]:
    """CPU seconds and peak RSS of each process of the tree, by role, largest CPU first."""
    rows = [
        {
            "role": s.role.get(pid, "?"),
            "cpu_s": round(s.cpu[pid], 1),
            "peak_rss_gib": round(s.rss[pid] / GIB, 2),
        }
        for pid in s.cpu
        if s.cpu[pid] or s.rss[pid] >= 1 << 20  # not the ones seen only while starting
    ]
    return sorted(rows, key=lambda r: -r["cpu_s"])


def run_measured(
    cmds: list[list[str]], logs: list[Path], env: dict[str, str], cwd: Path
) -> tuple[float, TreeSampler]:
    """Start every command at once, wait for all; (wall seconds, sampler). Raises on a failure."""
    t0 = time.perf_counter()
    handles = [open(log, "w") for log in logs]
    procs = [
        subprocess.Popen(c, stdout=h, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        for c, h in zip(cmds, handles, strict=True)
    ]
    sampler = TreeSampler([p.pid for p in procs])
    sampler.start()
    try:
        codes = [p.wait() for p in procs]
    finally:
        sampler.stop()
        for h in handles:
            h.close()
    seconds = time.perf_counter() - t0
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"command failed (exit {code}); log {log}:\n{tail}")
    return seconds, sampler


def bench_env(blas_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if blas_threads > 0:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(blas_threads)
    return env


# ---------------------------------------------------------------------------------------------------
# Input: corpus_raw, and its export for OpusFilter


def ensure_raw_corpus(home: Path, langs: tuple[str, ...] | None, workers: int) -> int:
    """Ingest the gettext catalogs into ``home`` unless it already has ``corpus_raw``; its row count."""
    from beam_jobs import gettext_ingest
    from beam_jobs.options import BeamConfig
    from storage.datasets import current_manifest
    from storage.layout import Layout
    from storage.schemas import RAW_PAIRS

    layout = Layout.from_env(home)
    m = current_manifest(layout, RAW_PAIRS)
    if m is not None:
        print(f"[bench] reusing corpus_raw in {layout.home}: {m.rows:,} pairs, {len(m.partitions)} languages")
        return m.rows
    print(
        f"[bench] ingesting gettext catalogs into {layout.home} ({'languages ' + ','.join(langs) if langs else 'all'})"
    )
    cfg = gettext_ingest.GettextIngestConfig(
        languages=list(langs) if langs else None,
        beam=BeamConfig(num_workers=workers, running_mode="multi_processing"),
    )
    r = gettext_ingest.run(cfg, layout)
    print(f"[bench] ingest: {r.manifest.rows:,} pairs from {r.catalogs} catalogs in {r.seconds:.0f} s")
    return r.manifest.rows


def export_for_opusfilter(home: Path, out: Path) -> dict[str, int]:
    """``corpus_raw`` -> ``out/<lang>.src`` + ``out/<lang>.tgt`` (one pair per line); pairs per language."""
    import pyarrow.parquet as pq

    from storage.datasets import current_manifest
    from storage.layout import Layout
    from storage.schemas import RAW_PAIRS

    layout = Layout.from_env(home)
    m = current_manifest(layout, RAW_PAIRS)
    root = layout.dataset_dir(RAW_PAIRS.relpath)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    files: dict[str, list[str]] = {}
    for f in m.files:
        files.setdefault(f.partition["lang"], []).append(str(root / f.path))
    for lang, paths in sorted(files.items()):
        with (
            open(out / f"{lang}.src", "w", encoding="utf-8") as fs,
            open(out / f"{lang}.tgt", "w", encoding="utf-8") as ft,
        ):
            for path in sorted(paths):
                t = pq.read_table(path, columns=["src_text", "tgt_text"])
                for s, g in zip(
                    t.column("src_text").to_pylist(), t.column("tgt_text").to_pylist(), strict=True
                ):
                    fs.write((s or "").translate(_LINE_BREAKS) + "\n")
                    ft.write((g or "").translate(_LINE_BREAKS) + "\n")
                counts[lang] = counts.get(lang, 0) + t.num_rows
    return counts


def export_eval_sets(eval_sets: list[Path], out: Path) -> dict[str, Path]:
    """Evaluation sentences by base language -> ``out/<base>.txt`` (whitespace collapsed, one per line)."""
    from labse_core.readers.tatoeba import eval_sentences

    by_lang: dict[str, set[str]] = {}
    for p in eval_sets:
        if p.is_dir():
            items = eval_sentences(p)
        else:  # a text file of sentences: language unknown, matched against both sides
            items = (("*", t) for t in p.read_text(encoding="utf-8").splitlines())
        for lang, text in items:
            text = " ".join(text.split())
            if text:
                by_lang.setdefault(lang.split("-")[0], set()).add(text)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang, texts in by_lang.items():
        paths[lang] = out / f"{lang}.txt"
        paths[lang].write_text("".join(t + "\n" for t in sorted(texts)), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------------
# OpusFilter: environment, probe, configuration

# Run with the OpusFilter environment's Python, network blocked: the langid model must come from the
# package. Prints the model's labels and which Unicode script names the `regex` module accepts.
_PROBE = r"""
import json, socket, sys
def _blocked(*a, **k):
    raise OSError("network blocked by the bench probe")
socket.socket.connect = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
import regex
import opusfilter
from opusfilter.filters import LangidFilter
f = LangidFilter(languages=["en", "de"], thresholds=[-1, 0])   # what the filter step constructs
score = list(f.score([("Open the file and save it", "Die Datei öffnen und speichern")]))[0]
ok = []
for s in json.loads(sys.argv[1]):
    try:
        regex.compile(r"\p{^Script=%s}" % s)
        ok.append(s)
    except Exception:
        pass
from importlib.metadata import version
print(json.dumps({"labels": list(f.identifier.nb_classes), "scripts": ok, "probe_score": score,
                  "opusfilter": version("opusfilter"), "py3langid": version("py3langid")}))
"""


def ensure_opusfilter_venv(venv: Path) -> Path:
    exe = venv / "bin" / "opusfilter"
    if exe.exists():
        return exe
    print(
        f"[bench] {venv} not found: creating it and installing OpusFilter from {REQUIREMENTS.relative_to(REPO_ROOT)}"
    )
    print(
        "[bench] (a separate environment: OpusFilter's dependencies conflict with the platform's; a few minutes)"
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    if not exe.exists():
        raise RuntimeError(f"installing {REQUIREMENTS} did not produce {exe}")
    return exe


def probe_opusfilter(venv: Path, scripts: list[str]) -> dict:
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _PROBE, json.dumps(scripts)],
        capture_output=True,
        text=True,
        env=bench_env(1),
    )
    if r.returncode != 0:
        raise RuntimeError(f"OpusFilter probe failed (langid model or regex scripts):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _script_filter(lang: str, known_scripts: set[str], share: float) -> dict:
    """CharacterScoreFilter for (en, lang): one script per side; a language with several expected
    scripts (or none) is scored against Latin with threshold 0 (computed, never rejected)."""
    from labse_core.text.scripts import expected_scripts

    tgt = expected_scripts(lang)
    src_script = "Latin"
    if tgt is not None and len(tgt) == 1 and next(iter(tgt)) in known_scripts:
        return {
            "CharacterScoreFilter": {"scripts": [src_script, next(iter(tgt))], "thresholds": [share, share]}
        }
    return {"CharacterScoreFilter": {"scripts": [src_script, "Latin"], "thresholds": [share, 0.0]}}


def _langid_label(lang: str, labels: set[str]) -> str | None:
    """py3langid label for a canonical code, as ``labse_core.text.filters.LangId.accepted`` maps it."""
    from labse_core.text.filters import LANGID_LABEL

    label = LANGID_LABEL.get(lang) or (None if "-" in lang else lang)
    return label if label in labels else None


def language_steps(lang: str, raw: Path, work: Path, eval_files: dict[str, Path], probe: dict) -> list[dict]:
    """OpusFilter steps for one language file pair: preprocess, dedupe, decontaminate, filter."""
    from labse_core.text.filters import DEFAULT_FILTERS as F

    def files(stage: str) -> list[str]:
        return [str(work / stage / f"{lang}.src"), str(work / stage / f"{lang}.tgt")]

    # `work` is the OpusFilter output directory: each step writes a folder of its own there

    steps: list[dict] = [
        {
            "type": "preprocess",
            "parameters": {
                "inputs": [str(raw / f"{lang}.src"), str(raw / f"{lang}.tgt")],
                "outputs": files("pre"),
                "preprocessors": [
                    {"WhitespaceNormalizer": {}},
                    {
                        "RegExpSub": {
                            "patterns": [[r"\s*\([_&~]\w\)", "", 0, []], [r"[_&~](?=[^\W\d_])", "", 0, []]]
                        }
                    },
                ],
            },
        },
        {
            "type": "remove_duplicates",
            "parameters": {"inputs": files("pre"), "outputs": files("dedup"), "lowercase": True},
        },
    ]
    current = "dedup"
    base = lang.split("-")[0]
    for side, eval_lang in ((0, "en"), (1, base)):
        overlap = [p for k in (eval_lang, "*") if (p := eval_files.get(k))]
        for i, path in enumerate(overlap):
            nxt = f"decontam{side}{i}"
            steps.append(
                {
                    "type": "remove_duplicates",
                    "parameters": {
                        "inputs": files(current),
                        "outputs": files(nxt),
                        "compare": [side],
                        "lowercase": True,
                        "overlap": [str(path), str(path)],
                    },
                }
            )
            current = nxt
    filters: list[dict] = [
        {"LengthFilter": {"unit": "char", "min_length": F.min_chars, "max_length": F.max_chars}},
        {"LengthFilter": {"unit": "word", "min_length": F.min_words, "max_length": F.max_words}},
        {"RegExpFilter": {"regexps": r"\p{L}", "accept_match": True}},
        {"LengthRatioFilter": {"unit": "char", "threshold": F.max_length_ratio}},
        {"SimilarityFilter": {"threshold": 1.0, "lowercase": True, "unit": "char"}},
        {"RepetitionFilter": {"threshold": F.repetition_min_repeats - 1, "min_length": 2, "max_length": 32}},
        {"NonZeroNumeralsFilter": {"threshold": 1.0}},
        _script_filter(lang, set(probe["scripts"]), F.script_min_share),
    ]
    label = _langid_label(lang, set(probe["labels"]))
    if label is not None:
        filters.append({"LangidFilter": {"languages": ["en", label], "thresholds": [-1, 0]}})
    steps.append(
        {
            "type": "filter",
            "parameters": {"inputs": files(current), "outputs": files("clean"), "filters": filters},
        }
    )
    return steps


def shard_languages(counts: dict[str, int], n: int) -> list[list[str]]:
    """Languages into ``n`` shards of ~equal pair count (greedy, largest first)."""
    shards: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for lang, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        i = load.index(min(load))
        shards[i].append(lang)
        load[i] += c
    return [s for s in shards if s]


def write_configs(
    counts: dict[str, int],
    raw: Path,
    work: Path,
    out: Path,
    eval_files: dict[str, Path],
    probe: dict,
    n_shards: int,
) -> list[Path]:
    """One OpusFilter configuration per shard in ``work``; every step writes under ``out``."""
    import yaml

    paths = []
    for i, langs in enumerate(shard_languages(counts, n_shards)):
        cfg = {
            "common": {"output_directory": str(out), "default_n_jobs": 1},
            "steps": [s for lang in sorted(langs) for s in language_steps(lang, raw, out, eval_files, probe)],
        }
        paths.append(work / f"opusfilter-shard{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return paths


def count_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return n


# ---------------------------------------------------------------------------------------------------
# The two systems


def _ours_main() -> None:
    """Child process: ``python -c 'from bench.prepare_bench import _ours_main; _ours_main()' ARGS_JSON``."""
    args = json.loads(sys.argv[1])
    from beam_jobs.options import BeamConfig
    from beam_jobs.prepare import PrepareConfig, run
    from storage.layout import Layout

    cfg = PrepareConfig(
        eval_sets=[Path(p) for p in args["eval_sets"]],
        beam=BeamConfig(num_workers=args["workers"], running_mode="multi_processing"),
        **args["overrides"],
    )
    r = run(cfg, Layout.from_env(args["home"]))
    Path(args["out"]).write_text(
        json.dumps(
            {
                "stats": r.stats,
                "seconds": r.seconds,
                "clean_rows": r.clean.rows,
                "reject_rows": r.rejects.rows,
            }
        )
    )


def run_ours(
    home: Path,
    eval_sets: list[Path],
    workers: int,
    work: Path,
    env: dict[str, str],
    overrides: dict | None = None,
) -> Measurement:
    out = work / "ours-result.json"
    args = {
        "home": str(home),
        "eval_sets": [str(p) for p in eval_sets],
        "workers": workers,
        "out": str(out),
        "overrides": overrides or {},
    }
    cmd = [sys.executable, "-c", "from bench.prepare_bench import _ours_main; _ours_main()", json.dumps(args)]
    seconds, s = run_measured([cmd], [work / "ours.log"], env, REPO_ROOT)
    res = json.loads(out.read_text())
    stats = res["stats"]
    return Measurement(
        system=f"ours: labse prepare (Beam DirectRunner, multi_processing, {workers} workers)"
        + "".join(f", {k}={v}" for k, v in (overrides or {}).items()),
        pairs=stats["input_pairs"],
        kept=stats.get("clean_new", 0),
        seconds=seconds,
        peak_rss_gib=s.peak / GIB,
        max_process_rss_gib=s.max_one / GIB,
        cpu_seconds=sum(s.cpu.values()),
        processes=len(per_process(s)),
        details={
            "per_process": per_process(s),
            "timeline": s.timeline,
            "stage_seconds": res["seconds"],
            "rejected_by_reason": {
                k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("rejected.")
            },
        },
    )


def run_opusfilter(
    exe: Path,
    configs: list[Path],
    pairs: int,
    counts: dict[str, int],
    work: Path,
    out: Path,
    env: dict[str, str],
    version: str,
) -> Measurement:
    shutil.rmtree(out, ignore_errors=True)  # outputs of an earlier run (OpusFilter skips existing ones)
    cmds = [[str(exe), "--overwrite", str(c)] for c in configs]
    logs = [c.with_suffix(".log") for c in configs]
    seconds, s = run_measured(cmds, logs, env, work)
    kept = count_lines([out / "clean" / f"{lang}.src" for lang in counts])
    deduped = count_lines([out / "dedup" / f"{lang}.src" for lang in counts])
    return Measurement(
        system=f"OpusFilter {version} ({len(configs)} concurrent processes, languages sharded)",
        pairs=pairs,
        kept=kept,
        seconds=seconds,
        peak_rss_gib=s.peak / GIB,
        max_process_rss_gib=s.max_one / GIB,
        cpu_seconds=sum(s.cpu.values()),
        processes=len(per_process(s)),
        details={
            "per_process": per_process(s),
            "timeline": s.timeline,
            "after_dedupe": deduped,
            "configs": [str(c) for c in configs],
        },
    )


# ---------------------------------------------------------------------------------------------------
# Where our time goes: the pure per-pair functions vs everything Beam adds around them

# (label, function name, file suffix, caller name or None): cumulative time of that function, counted
# only when called from `caller`, so that nested entries do not double count.
_PROFILE_PARTS = (
    ("normalize_text (2 per pair)", "normalize_text", "text/normalize.py", "process_batch"),
    ("eval_overlap lookup (sentence_key)", "sentence_key", "text/normalize.py", "process_batch"),
    ("filters before language ID", "_check_before_langid", "text/filters.py", "check_pairs"),
    ("language ID (LangId.top, batched)", "top", "text/filters.py", "check_pairs"),
    ("pair_key (dedupe key)", "pair_key", "labse_core/prepare.py", "process_batch"),
    ("reject_row", "reject_row", "labse_core/prepare.py", "process_batch"),
)


def _cumtime(stats: dict, func: str, file_suffix: str, caller: str | None) -> float:
    total = 0.0
    for (file, _, name), (_, _, _, ct, callers) in stats.items():
        if name != func or not file.endswith(file_suffix):
            continue
        if caller is None:
            total += ct
        else:
            total += sum(v[3] for (_, _, cname), v in callers.items() if cname == caller)
    return total


def profile_core(home: Path, eval_sets: list[Path], sample: int, batch_size: int = 2000) -> dict:
    """``labse_core.prepare.process_batch`` alone, in this process, on every k-th raw pair (``sample``
    pairs, all languages): pairs per CPU-second without Beam, and a cProfile breakdown by step.
    Reading the Parquet rows (``ReadParquetBatches``' work) is timed over the whole corpus."""
    import cProfile
    import pstats

    import pyarrow.parquet as pq

    from beam_jobs.io import partition_values
    from labse_core import prepare as core
    from labse_core.text import filters as flt
    from storage.datasets import current_manifest
    from storage.layout import Layout
    from storage.schemas import RAW_PAIRS

    layout = Layout.from_env(home)
    m = current_manifest(layout, RAW_PAIRS)
    root = layout.dataset_dir(RAW_PAIRS.relpath)
    stride = max(1, m.rows // sample)
    rows: list[dict] = []
    t = time.process_time()
    seen = 0
    for f in m.files:
        path = str(root / f.path)
        fixed = partition_values(path)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            part = batch.to_pylist()
            for r in part:
                r.update(fixed)
            rows.extend(part[(-seen) % stride :: stride])
            seen += len(part)
    read_cpu_per_pair = (time.process_time() - t) / m.rows
    rules = core.PrepareRules()
    t = time.process_time()
    eval_keys = core.load_eval_keys(eval_sets, rules.normalize)
    flt.get_langid()
    setup_cpu = time.process_time() - t
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    core.process_batch(batches[0], rules, eval_keys)  # warm caches (lru caches, regexes)
    t = time.process_time()
    for b in batches:
        core.process_batch(b, rules, eval_keys)
    plain_cpu = time.process_time() - t
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        core.process_batch(b, rules, eval_keys)
    prof.disable()
    stats = pstats.Stats(prof).stats
    whole = _cumtime(stats, "process_batch", "labse_core/prepare.py", None)
    parts = {label: _cumtime(stats, *spec) for label, *spec in _PROFILE_PARTS}
    parts["rest of process_batch (loop, dict copies)"] = whole - sum(parts.values())
    return {
        "sample_pairs": len(rows),
        "process_batch_pairs_per_cpu_s": round(len(rows) / plain_cpu, 1),
        "process_batch_cpu_us_per_pair": round(plain_cpu / len(rows) * 1e6, 1),
        "parquet_read_cpu_us_per_pair": round(read_cpu_per_pair * 1e6, 1),
        "worker_setup_cpu_s": round(setup_cpu, 2),
        "profile_share": {k: round(v / whole, 3) for k, v in parts.items()},
    }


def beam_breakdown(ours: Measurement, prof: dict, workers: int) -> dict:
    """Our measured CPU time split into what the pure functions need and what is left (Beam)."""
    n = ours.pairs
    pure = n * (prof["process_batch_cpu_us_per_pair"] + prof["parquet_read_cpu_us_per_pair"]) / 1e6
    pure += workers * prof["worker_setup_cpu_s"]
    return {
        "ours_cpu_s": round(ours.cpu_seconds, 1),
        "pure_functions_cpu_s": round(pure, 1),
        "beam_and_io_cpu_s": round(ours.cpu_seconds - pure, 1),
        "pure_share": round(pure / ours.cpu_seconds, 3) if ours.cpu_seconds else None,
        "ideal_pairs_per_s_on_workers": round(workers * n / pure, 1) if pure else None,
        "note": "pure = process_batch + reading Parquet rows + per-worker setup (eval keys, langid model); "
        "the rest is Beam (coders, the runner's shuffle and buffers, GroupByKey, dedupe) and writing Parquet",
    }


# ---------------------------------------------------------------------------------------------------
# Report


def table(rows: list[Measurement]) -> str:
    head = (
        f"{'system':<72} {'pairs':>10} {'kept':>10} {'seconds':>8} {'pairs/s':>9} {'peak GiB':>8} {'CPU s':>7} "
        f"{'pairs/CPU s':>11}"
    )
    lines = [head, "-" * len(head)]
    for m in rows:
        lines.append(
            f"{m.system:<72} {m.pairs:>10,} {m.kept:>10,} {m.seconds:>8.1f} {m.pairs_per_s:>9,.0f} "
            f"{m.peak_rss_gib:>8.2f} {m.cpu_seconds:>7.0f} {m.pairs_per_cpu_s:>11,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prepare_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"only {len(QUICK_LANGS)} languages: {','.join(QUICK_LANGS)}"
    )
    ap.add_argument(
        "--home",
        type=Path,
        help="LABSE_HOME to use (ingested if it has no corpus_raw); default: a temporary one",
    )
    ap.add_argument(
        "--work", type=Path, help="folder for exported files and OpusFilter outputs; default: temporary"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary home and work folder")
    ap.add_argument(
        "--workers", type=int, default=2, help="our Beam workers = OpusFilter processes (default 2)"
    )
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="OpenBLAS/OMP threads per process, both systems (0: leave)",
    )
    ap.add_argument("--opusfilter-venv", type=Path, default=DEFAULT_OPUS_VENV)
    ap.add_argument("--only", choices=("ours", "opusfilter"), help="run one system (no ratio)")
    ap.add_argument(
        "--prepare-set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a top-level PrepareConfig field for our run, e.g. rows_per_file=20000 (experiments; "
        "the default measures the stage as shipped)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile process_batch alone on N sampled pairs (e.g. 100000) and split our CPU time "
        "into pure functions vs Beam",
    )
    ap.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/prepare_bench[.quick].json)"
    )
    args = ap.parse_args(argv)

    from storage.layout import default_eval_sets

    tmp = Path(tempfile.mkdtemp(prefix="labse-prepare-bench-"))
    home = (args.home or tmp / "home").expanduser().resolve()
    work = (args.work or tmp / "work").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_json = args.out or RESULTS_DIR / ("prepare_bench.quick.json" if args.quick else "prepare_bench.json")
    env = bench_env(args.blas_threads)
    eval_sets = default_eval_sets()
    load_before = os.getloadavg()
    try:
        n_raw = ensure_raw_corpus(home, QUICK_LANGS if args.quick else None, args.workers)
        rows: list[Measurement] = []
        probe = None
        if args.only != "opusfilter":
            print(
                f"[bench] ours: prepare on {n_raw:,} pairs, {args.workers} workers (log {work / 'ours.log'})"
            )
            overrides = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.prepare_set)}
            rows.append(run_ours(home, eval_sets, args.workers, work, env, overrides))
            print(table(rows[-1:]))
        if args.only != "ours":
            exe = ensure_opusfilter_venv(args.opusfilter_venv)
            from labse_core.text.scripts import SCRIPTS

            probe = probe_opusfilter(args.opusfilter_venv, list(SCRIPTS))
            print(
                f"[bench] OpusFilter {probe['opusfilter']} probe (network blocked): py3langid {probe['py3langid']} "
                f"model loads from the package, {len(probe['labels'])} labels; "
                f"score of an en/de pair {probe['probe_score']}"
            )
            t = time.perf_counter()
            counts = export_for_opusfilter(home, work / "raw")
            eval_files = export_eval_sets(eval_sets, work / "eval")
            configs = write_configs(
                counts, work / "raw", work, work / "opusfilter", eval_files, probe, args.workers
            )
            print(
                f"[bench] exported {sum(counts.values()):,} pairs in {len(counts)} language file pairs "
                f"({time.perf_counter() - t:.0f} s, not timed); OpusFilter configs: {', '.join(map(str, configs))}"
            )
            rows.append(
                run_opusfilter(
                    exe,
                    configs,
                    sum(counts.values()),
                    counts,
                    work,
                    work / "opusfilter",
                    env,
                    probe["opusfilter"],
                )
            )
            print(table(rows[-1:]))
        profile = None
        if args.profile:
            print(f"[bench] profiling process_batch on {args.profile:,} sampled pairs (one process, no Beam)")
            profile = profile_core(home, eval_sets, args.profile)
            if args.only != "opusfilter":
                profile["breakdown"] = beam_breakdown(rows[0], profile, args.workers)
            print(json.dumps(profile, indent=2))
        ratio = rows[0].pairs_per_s / rows[1].pairs_per_s if len(rows) == 2 and rows[1].pairs_per_s else None
        cpu_ratio = (
            rows[0].pairs_per_cpu_s / rows[1].pairs_per_cpu_s
            if len(rows) == 2 and rows[1].pairs_per_cpu_s
            else None
        )
        ours = rows[0] if args.only != "opusfilter" else None
        result = {
            "benchmark": "prepare_bench",
            "quick": args.quick,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m bench.prepare_bench"
            + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "machine": {
                "cpus": os.cpu_count(),
                "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            },
            "settings": {
                "workers": args.workers,
                "blas_threads": args.blas_threads,
                "eval_sets": [str(p) for p in eval_sets],
                "raw_pairs": n_raw,
                "prepare_overrides": args.prepare_set,
            },
            "results": [
                asdict(m)
                | {"pairs_per_s": round(m.pairs_per_s, 1), "pairs_per_cpu_s": round(m.pairs_per_cpu_s, 1)}
                for m in rows
            ],
            "ratio_ours_over_opusfilter": round(ratio, 3) if ratio else None,
            "ratio_per_cpu_second": round(cpu_ratio, 3) if cpu_ratio else None,
            "target": {
                "min_ratio": TARGET_RATIO,
                "max_peak_gib": TARGET_PEAK_GIB,
                "ratio_met": ratio >= TARGET_RATIO if ratio else None,
                "memory_met": ours.peak_rss_gib < TARGET_PEAK_GIB if ours else None,
            },
            "opusfilter_probe": {k: v for k, v in (probe or {}).items() if k != "labels"},
            "profile": profile,
        }
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print()
        print(table(rows))
        if ratio:
            print(
                f"\nratio ours/OpusFilter: {ratio:.2f}x pairs/s (target >= {TARGET_RATIO:g}x: "
                f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}); our peak memory {ours.peak_rss_gib:.2f} GiB "
                f"(target < {TARGET_PEAK_GIB:g} GiB: {'met' if ours.peak_rss_gib < TARGET_PEAK_GIB else 'MISSED'})"
            )
            print(f"per CPU-second (less sensitive to other jobs on the machine): {cpu_ratio:.2f}x")
        print(
            f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            f"{' (other jobs were running: numbers are noisy)' if load_before[0] > 0.5 * (os.cpu_count() or 1) else ''}"
        )
        print(f"results: {out_json}")
    finally:
        if args.keep:
            print(f"[bench] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # only the temporary folder this run created
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
