"""Data preparation: our ``prepare`` stage vs OpusFilter, the same rules on the same pairs, same machine.

    python -m bench.prepare_bench                  # every gettext catalog of this machine (~1.76 M pairs)
    python -m bench.prepare_bench --quick          # de + ja, the two equal-work variants, one run per side
    python -m bench.prepare_bench --home ~/labse_home --keep   # reuse that home's corpus_raw, keep the files
    python -m bench.prepare_bench --variants equal-no-langid --repeats 3 --merge   # one variant, keep the rest

Writes ``bench/results/prepare_bench.json`` (``prepare_bench.quick.json`` with ``--quick``): per
variant, each side's wall time, CPU-seconds (the whole process tree: our Beam SDK workers, every
OpusFilter process), peak memory, pairs kept, and the ratios ours/OpusFilter of min and median over
interleaved repeats (ours, OpusFilter, ours, OpusFilter ...), the load average and the foreign load
around every run (a disturbed run is flagged), the versions, and the exact OpusFilter YAML.

Variants (``--variants``, default all three):

- ``equal-langid`` (**equal work**): both tools apply the same rules: the mapping below, with our
  ``placeholder_mismatch`` rule switched off (OpusFilter has no equivalent), and language ID on the
  same texts: only the non-English side, only with >= ``lang_id_min_letters`` letters, only for pairs
  that passed every other filter, rejected when another language is >= ``lang_id_min_confidence``
  likely. OpusFilter runs that with its own identifier (py3langid ``classify``, one text at a time)
  through ``bench/opusfilter_scope.py``'s ``ScopedLangidFilter``; ours with its batched model.
- ``equal-no-langid`` (**equal work**): the same without language ID on either side.
- ``recommended`` (**each tool's recommended configuration, not equal work**): ours with its
  defaults (every rule); OpusFilter with the filter set and thresholds ``opusfilter-autogen --method
  defaults`` writes for a language pair (scripts and languages filled in per pair, as autogen does
  from ``--scripts`` and ``--langs``), after ``remove_duplicates`` and the Tatoeba decontamination.

Setup, not timed: ``corpus_raw`` is ingested from /usr/share/locale into a temporary LABSE_HOME
(``beam_jobs.gettext_ingest``) or reused from ``--home``; the same pairs are exported for OpusFilter as
aligned text files, one file pair per language (``<lang>.src`` English, ``<lang>.tgt``; line breaks
inside a text become spaces, as our normalization does), and the evaluation sentences (Tatoeba v1)
as overlap files. Ours runs ``beam_jobs.prepare.run`` (Beam DirectRunner, multi_processing,
``--workers`` processes, Parquet out, clean + rejects) in a child process; OpusFilter runs one
``opusfilter`` process per shard of languages (``--workers`` shards balanced by pair count, all at
once, under one shell that waits for them). Every process of both sides gets one BLAS thread.

Mapping of the rules (ours: ``labse_core.prepare`` + ``labse_core.text.filters``, thresholds from
``FilterConfig``; OpusFilter 3.3.1 steps and filters) in the equal-work variants:

    ours                          OpusFilter                                      remaining difference
    ----------------------------  ----------------------------------------------  --------------------------------
    normalize_text (NFC, spaces,  preprocess: WhitespaceNormalizer + RegExpSub    OpusFilter: no Unicode normal
      controls, accelerators)       ("(_F)" suffixes, _ & ~ before a letter)        form, simpler accelerator rule
    eval_overlap                  remove_duplicates overlap=Tatoeba, per side     lowercased text, not our key
    empty_side, too_short,        LengthFilter unit=char [min_chars, max_chars]
      too_long                      + LengthFilter unit=word [min_words, max_words]
    markup_or_url, min_letters    RegExpFilter "\\p{L}" accept_match              markup not removed first
    length_ratio                  LengthRatioFilter unit=char, max_length_ratio   no smoothing, no CJK weights
    copy                          SimilarityFilter threshold=1.0, lowercase       Levenshtein, not key equality
    repetition                    RepetitionFilter threshold=repeats-1, 2..32 ch  one regex, any unit
    placeholder_mismatch          none                                            switched off in ours
    number_mismatch               NonZeroNumeralsFilter threshold=1.0             digit order, no tolerance
    script_mismatch               CharacterScoreFilter [Latin, script],           one script per side: several
                                    thresholds script_min_share                     expected scripts are scored
                                                                                    but never rejected
    lang_id (equal-langid only)   ScopedLangidFilter (LangidFilter's classify)    letters counted on the text
    duplicate (normalized key)    remove_duplicates lowercase=true                lowercased text, not our key
    clean + rejects Parquet,      clean text files only                           ours writes more
      manifests, accounting

OpusFilter runs its steps in its cheapest order (preprocess -> dedupe -> decontaminate -> filter:
removing duplicates first leaves fewer pairs to filter); ours filters, then dedupes. The JSON
records each tool's kept count: the decisions are close, not identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "bench" / "requirements-opusfilter.txt"
DEFAULT_OPUS_VENV = REPO_ROOT / ".venv-opusfilter"
QUICK_LANGS = ("de", "ja")
VARIANTS = ("equal-langid", "equal-no-langid", "recommended")
TARGET_RATIO = 2.0

# Characters that end a line for OpusFilter (Python text files, universal newlines).
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " "})


def our_rules(variant: str) -> dict:
    """``PrepareConfig`` overrides of ours for a variant (JSON-ready)."""
    if variant == "equal-langid":
        return {"rules": {"filters": {"disabled": ["placeholder_mismatch"]}}}
    if variant == "equal-no-langid":
        return {"rules": {"filters": {"disabled": ["lang_id", "placeholder_mismatch"]}}}
    return {}


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
# OpusFilter: environment and probe

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
from lingua import Language
ok = []
for s in json.loads(sys.argv[1]):
    try:
        regex.compile(r"\p{^Script=%s}" % s)
        ok.append(s)
    except Exception:
        pass
from importlib.metadata import version
print(json.dumps({"labels": list(f.identifier.nb_classes), "scripts": ok, "probe_score": score,
                  "lingua": sorted(x.iso_code_639_1.name.lower() for x in Language.all()),
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
        env=common.thread_env(1),
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


def shard_languages(counts: dict[str, int], n: int) -> list[list[str]]:
    """Languages into ``n`` shards of ~equal pair count (greedy, largest first)."""
    shards: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for lang, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        i = load.index(min(load))
        shards[i].append(lang)
        load[i] += c
    return [s for s in shards if s]


def count_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return n


# ---------------------------------------------------------------------------------------------------
# OpusFilter: configuration per variant


def _preprocess_steps(lang: str, raw: Path, files) -> list[dict]:
    return [
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


def equal_filters(lang: str, probe: dict, langid: bool) -> list[dict]:
    """OpusFilter filters doing what our rules do (module docstring), thresholds from FilterConfig."""
    from labse_core.text.filters import DEFAULT_FILTERS as F

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
    if langid:
        label = _langid_label(lang, set(probe["labels"]))
        accepted = sorted(_accepted_labels(label)) if label else []
        filters.append(
            {
                "ScopedLangidFilter": {
                    "languages": ["en", label or "en"],
                    "accepted": accepted,
                    "side": 1,
                    "min_letters": F.lang_id_min_letters,
                    "min_confidence": F.lang_id_min_confidence,
                },
                "module": "opusfilter_scope",
            }
        )
    return filters


def _accepted_labels(label: str) -> set[str]:
    from labse_core.text.langid import LANGID_CONFUSABLE

    out = {label}
    for group in LANGID_CONFUSABLE:
        if label in group:
            out |= group
    return out


def recommended_filters(lang: str, probe: dict, defaults: list[dict]) -> list[dict]:
    """OpusFilter's recommended filters (``opusfilter_defaults``, made for en/de) for the pair (en, lang):
    the scripts and languages filled in as ``opusfilter-autogen --langs en <lang> --scripts Latin <script>``
    would; a filter autogen cannot configure for the language (a script the ``regex`` module does not
    know, several expected scripts; a language lingua does not know) is left out, as autogen does."""
    from labse_core.text.scripts import expected_scripts

    tgt = expected_scripts(lang)
    script = (
        next(iter(tgt))
        if tgt is not None and len(tgt) == 1 and next(iter(tgt)) in set(probe["scripts"])
        else None
    )
    base = lang.split("-")[0]
    out = []
    for item in defaults:
        ((name, params),) = item.items()
        params = dict(params or {})
        if name == "CharacterScoreFilter":
            if script is None:
                continue
            params["scripts"] = ["Latin", script]
        elif "languages" in params:
            if base not in probe["lingua"]:
                continue
            params["languages"] = ["en", base]
        out.append({name: params})
    return out


def language_steps(
    lang: str, raw: Path, work: Path, eval_files: dict[str, Path], filters: list[dict], decontaminate: bool
) -> list[dict]:
    """OpusFilter steps for one language file pair: preprocess, dedupe, (decontaminate), filter."""

    def files(stage: str) -> list[str]:
        return [str(work / stage / f"{lang}.src"), str(work / stage / f"{lang}.tgt")]

    steps = _preprocess_steps(lang, raw, files)
    current = "dedup"
    base = lang.split("-")[0]
    for side, eval_lang in ((0, "en"), (1, base)) if decontaminate else ():
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
    steps.append(
        {
            "type": "filter",
            "parameters": {"inputs": files(current), "outputs": files("clean"), "filters": filters},
        }
    )
    return steps


def write_configs(
    variant: str,
    counts: dict[str, int],
    raw: Path,
    work: Path,
    eval_files: dict[str, Path],
    probe: dict,
    n_shards: int,
    defaults: list[dict],
) -> list[Path]:
    """One OpusFilter configuration per shard of languages in ``work/<variant>``; outputs under
    ``work/<variant>/out``."""
    import yaml

    folder = work / variant
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    paths = []
    for i, langs in enumerate(shard_languages(counts, n_shards)):
        steps = []
        for lang in sorted(langs):
            if variant == "recommended":
                filters = recommended_filters(lang, probe, defaults)
            else:
                filters = equal_filters(lang, probe, langid=variant == "equal-langid")
            # every variant removes Tatoeba sentences: ours does in each of them
            steps += language_steps(lang, raw, out, eval_files, filters, decontaminate=True)
        cfg = {"common": {"output_directory": str(out), "default_n_jobs": 1}, "steps": steps}
        paths.append(folder / f"opusfilter-shard{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------------
# The two sides, each one measured child process


def _ours_main(args: dict) -> None:
    """Child: run the prepare stage, report its counters."""
    from beam_jobs.options import BeamConfig
    from beam_jobs.prepare import PrepareConfig, run
    from storage.layout import Layout

    cfg = PrepareConfig(
        eval_sets=[Path(p) for p in args["eval_sets"]],
        beam=BeamConfig(num_workers=args["workers"], running_mode="multi_processing"),
        **args["overrides"],
    )
    r = run(cfg, Layout.from_env(args["home"]))
    common.child_report(
        {
            "input_pairs": r.stats["input_pairs"],
            "kept": r.stats.get("clean_new", 0),
            "stage_seconds": r.seconds,
            "rejected_by_reason": {
                k.split(".", 1)[1]: v for k, v in r.stats.items() if k.startswith("rejected.")
            },
        }
    )


def run_ours(home: Path, eval_sets: list[Path], workers: int, variant: str, log: Path) -> common.ChildRun:
    args = {
        "home": str(home),
        "eval_sets": [str(p) for p in eval_sets],
        "workers": workers,
        "overrides": our_rules(variant),
    }
    cmd = [sys.executable, "-m", "bench.prepare_bench", "--child-ours", json.dumps(args)]
    with open(log, "a") as f, _redirect(f):
        return common.measure_child(cmd, env=common.thread_env(1), cwd=REPO_ROOT)


def run_opusfilter(exe: Path, configs: list[Path], langs: list[str], log: Path) -> common.ChildRun:
    """Every shard's ``opusfilter`` at once under one shell, which waits for all of them (so that
    their CPU time is the child's); then the kept pairs are counted (not timed)."""
    out = configs[0].parent / "out"
    shutil.rmtree(out, ignore_errors=True)  # outputs of an earlier repeat (OpusFilter skips existing ones)
    script = " ".join(
        f"{shlex.quote(str(exe))} --overwrite {shlex.quote(str(c))} & p{i}=$!;" for i, c in enumerate(configs)
    )
    script += " rc=0;" + "".join(f" wait $p{i} || rc=1;" for i in range(len(configs))) + " exit $rc"
    # PYTHONPATH: opusfilter_scope.py; TQDM_DISABLE: no progress bars into the log (less work for it)
    env = common.thread_env(1) | {"PYTHONPATH": str(REPO_ROOT / "bench"), "TQDM_DISABLE": "1"}  # opusfilter_scope.py
    with open(log, "a") as f, _redirect(f):
        run = common.measure_child(["sh", "-c", script], env=env, cwd=configs[0].parent)
    run.result = {
        "kept": count_lines([out / "clean" / f"{lang}.src" for lang in langs]),
        "after_dedupe": count_lines([out / "dedup" / f"{lang}.src" for lang in langs]),
    }
    return run


class _redirect:
    """Send this process's stdout/stderr (inherited by the child) to a log file for a while."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.f.fileno(), 1)
        os.dup2(self.f.fileno(), 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])


def opusfilter_defaults(venv: Path, work: Path) -> list[dict]:
    """The filter list ``opusfilter-autogen --method defaults`` writes for an (en, de) Latin/Latin pair:
    OpusFilter's recommended configuration, which ``recommended_filters`` adapts to each language."""
    import yaml

    folder = work / "autogen"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.en").write_text("Open the file\n", encoding="utf-8")
    (folder / "a.de").write_text("Die Datei öffnen\n", encoding="utf-8")
    cmd = [
        str(venv / "bin" / "opusfilter-autogen"),
        "--method",
        "defaults",
        "--files",
        "a.en",
        "a.de",
        "--langs",
        "en",
        "de",
        "--scripts",
        "Latin",
        "Latin",
        "--work-dir",
        "w",
        "-o",
        "autogen.yaml",
    ]
    subprocess.run(cmd, cwd=folder, capture_output=True, env=common.thread_env(1), check=True)
    cfg = yaml.safe_load((folder / "autogen.yaml").read_text(encoding="utf-8"))
    return next(s["parameters"]["filters"] for s in cfg["steps"] if s["type"] == "filter")


# ---------------------------------------------------------------------------------------------------
# Report


def side_metrics(runs: list[common.ChildRun], pairs: int) -> dict:
    walls = [r.wall_s for r in runs]
    cpus = [r.cpu_s for r in runs]
    return {
        "wall_s": common.summary(walls),
        "cpu_s": common.summary(cpus),
        "pairs_per_s": common.summary([pairs / w for w in walls]),
        "pairs_per_cpu_s": common.summary([pairs / c for c in cpus]),
        "peak_tree_rss_gib": max((r.peak_tree_rss_mb or 0) for r in runs) / 1024,
        "peak_process_rss_gib": max(r.peak_rss_mb for r in runs) / 1024,
        "kept": runs[-1].result.get("kept") if runs[-1].result else None,
    }


def variant_metrics(runs: dict[str, list[common.ChildRun]], pairs: int) -> dict:
    ours, peer = runs["ours"], runs["opusfilter"]
    return {
        "pairs": pairs,
        "ours": side_metrics(ours, pairs),
        "opusfilter": side_metrics(peer, pairs),
        "wall": common.compare([r.wall_s for r in ours], [r.wall_s for r in peer], higher_is_better=False),
        "cpu": common.compare([r.cpu_s for r in ours], [r.cpu_s for r in peer], higher_is_better=False),
        "ours_rejected_by_reason": ours[-1].result.get("rejected_by_reason") if ours[-1].result else None,
    }


def line(variant: str, m: dict) -> str:
    o, p = m["ours"], m["opusfilter"]
    return (
        f"{variant:<16} ours {o['wall_s']['median']:7.1f} s wall {o['cpu_s']['median']:7.1f} CPU-s "
        f"({o['pairs_per_cpu_s']['median']:,.0f} pairs/CPU-s, peak {o['peak_tree_rss_gib']:.2f} GiB, kept {o['kept']:,}) | "
        f"OpusFilter {p['wall_s']['median']:7.1f} s {p['cpu_s']['median']:7.1f} CPU-s "
        f"({p['pairs_per_cpu_s']['median']:,.0f}/CPU-s, peak {p['peak_tree_rss_gib']:.2f} GiB, kept {p['kept']:,}) | "
        f"ratio wall {m['wall']['ratio_of_median']:.2f}x (min {m['wall']['ratio_of_min']:.2f}x), "
        f"CPU {m['cpu']['ratio_of_median']:.2f}x (min {m['cpu']['ratio_of_min']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prepare_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {','.join(QUICK_LANGS)}, one repeat per side")
    ap.add_argument(
        "--home", type=Path, help="LABSE_HOME to use (ingested if it has no corpus_raw); default: temporary"
    )
    ap.add_argument(
        "--work", type=Path, help="folder for exported files and OpusFilter outputs; default: temporary"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary home and work folder")
    ap.add_argument(
        "--workers", type=int, default=2, help="our Beam workers = OpusFilter processes (default 2)"
    )
    ap.add_argument(
        "--repeats", type=int, help="runs per side and variant, interleaved (default 2; --quick 1)"
    )
    ap.add_argument(
        "--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; --quick: the two equal-work ones)"
    )
    ap.add_argument("--opusfilter-venv", type=Path, default=DEFAULT_OPUS_VENV)
    ap.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/prepare_bench[.quick].json)"
    )
    ap.add_argument("--merge", action="store_true",
                    help="keep the other variants already in the results JSON (one variant per run on a busy machine)")
    ap.add_argument("--child-ours", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_ours:
        _ours_main(json.loads(args.child_ours))
        return 0
    variants = [v for v in (args.variants or (",".join(VARIANTS[:2]) if args.quick else ",".join(VARIANTS))).split(",") if v]
    if unknown := sorted(set(variants) - set(VARIANTS)):
        print(f"prepare_bench: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.quick else 2)

    from storage.layout import default_eval_sets

    tmp = Path(tempfile.mkdtemp(prefix="labse-prepare-bench-"))
    home = (args.home or tmp / "home").expanduser().resolve()
    work = (args.work or tmp / "work").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    name = "prepare_bench.quick" if args.quick else "prepare_bench"
    eval_sets = default_eval_sets()
    try:
        n_raw = ensure_raw_corpus(home, QUICK_LANGS if args.quick else None, args.workers)
        exe = ensure_opusfilter_venv(args.opusfilter_venv)
        from labse_core.text.scripts import SCRIPTS

        probe = probe_opusfilter(args.opusfilter_venv, list(SCRIPTS))
        defaults = opusfilter_defaults(args.opusfilter_venv, work)
        t = time.perf_counter()
        counts = export_for_opusfilter(home, work / "raw")
        eval_files = export_eval_sets(eval_sets, work / "eval")
        configs = {
            v: write_configs(v, counts, work / "raw", work, eval_files, probe, args.workers, defaults)
            for v in variants
        }
        pairs = sum(counts.values())
        assert pairs == n_raw, (pairs, n_raw)
        print(
            f"[bench] {pairs:,} pairs in {len(counts)} languages exported for OpusFilter "
            f"({time.perf_counter() - t:.0f} s, not timed); {repeats} repeat(s) per side, interleaved"
        )
        results, all_runs, flags = {}, {}, []
        for v in variants:

            def ours(v=v):
                return run_ours(home, eval_sets, args.workers, v, work / f"ours-{v}.log")

            def peer(v=v):
                return run_opusfilter(exe, configs[v], sorted(counts), work / f"opusfilter-{v}.log")

            def show(side, rep, run, v=v):
                print(
                    f"[bench] {v} {side} #{rep}: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} CPU-s, "
                    f"load {run.load_before[0]:.2f} -> {run.load_after[0]:.2f}"
                    + (f", FLAGGED: {'; '.join(run.flags)}" if run.flags else ""),
                    flush=True,
                )

            runs = common.interleave({"ours": ours, "opusfilter": peer}, repeats, on_run=show)
            results[v] = variant_metrics(runs, pairs) | {
                "command": common.command_line(), "repeats": repeats,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            all_runs |= {f"{v}/{side}": rs for side, rs in runs.items()}
            flags += [f"{v}/{f}" for f in common.flags_of(runs)]
            print(line(v, results[v]), flush=True)
        peer_cfg = {
            "opusfilter": probe["opusfilter"],
            "py3langid": probe["py3langid"],
            "processes": len(next(iter(configs.values()))),
            "blas_threads": 1,
            "recommended_defaults": defaults,
        }
        yaml_by_variant = {v: {p.name: p.read_text(encoding="utf-8") for p in ps} for v, ps in configs.items()}
        overrides = {v: our_rules(v) for v in variants}
        out_path = args.out or common.RESULTS / f"{name}.json"
        if args.merge and out_path.exists():
            # variants measured by an earlier command (one lock hold per variant on the full set)
            old = json.loads(out_path.read_text())
            for v, m in old["metrics"]["variants"].items():
                if v not in results:
                    results[v] = m
                    yaml_by_variant[v] = old["peer"]["yaml"][v]
                    overrides[v] = old["ours"]["overrides_by_variant"][v]
            old_runs = {k: rs for k, rs in old["runs"].items() if k.split("/")[0] not in variants}
            old_flags = [f for f in old["flags"] if f.split("/")[0] not in variants]
        else:
            old_runs, old_flags = {}, []
        peer_cfg["yaml"] = yaml_by_variant
        equal = {v: results[v] for v in results if v.startswith("equal")}
        result = common.Result(
            name=name,
            command=common.command_line(),
            equal_work=(
                "equal-langid and equal-no-langid: the same rules on the same pairs (the mapping in "
                "bench/prepare_bench.py's docstring; our placeholder_mismatch rule off, OpusFilter has none), "
                "dedupe and Tatoeba decontamination on both, language ID on the same side and length scope "
                "(equal-langid) or on neither (equal-no-langid). recommended: each tool's own recommended "
                "configuration, NOT equal work."
            ),
            ours={
                "stage": "beam_jobs.prepare.run",
                "runner": "DirectRunner multi_processing",
                "workers": args.workers,
                "blas_threads": 1,
                "eval_sets": [str(p) for p in eval_sets],
                "overrides_by_variant": overrides,
            },
            peer=peer_cfg,
            metrics={
                "raw_pairs": n_raw,
                "languages": len(counts),
                "variants": results,
                "target": {
                    "min_ratio": TARGET_RATIO,
                    "met_in_equal_work_variants": {
                        v: m["wall"]["ratio_of_median"] >= TARGET_RATIO
                        and m["cpu"]["ratio_of_median"] >= TARGET_RATIO
                        for v, m in equal.items()
                    },
                },
            },
            runs=old_runs | common.runs_json(all_runs),
            flags=old_flags + flags,
            versions=common.versions("apache-beam", "pyarrow", "numpy", "py3langid")
            | {
                "opusfilter (its venv)": probe["opusfilter"],
                "py3langid (OpusFilter's venv)": probe["py3langid"],
            },
        )
        path = common.write_result(result, out_path.parent)
        if path != out_path:
            path.rename(out_path)
            path = out_path
        print()
        for v in results:
            print(line(v, results[v]))
        if flags:
            print(f"FLAGGED runs (load from other processes): {'; '.join(flags)}")
        print(f"results: {path}")
    finally:
        if args.keep:
            print(f"[bench] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # only the temporary folder this run created
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
