"""Fine-tuning and encoding throughput: ours vs sentence-transformers, equal work.

    python -m bench.finetune_bench                    # CPU, `small` encoder: ~5 minutes on 2 cores
    python -m bench.finetune_bench --model base --steps 8 --repeats 2   # `base`: shorter
    python -m bench.finetune_bench --quick            # ~2 minutes
    python -m bench.finetune_bench --model base --steps 30 --batch-size 128 --bf16   # on a GPU

Four sides, each in its own fresh process, interleaved A B C D A B C D ... (bench.common):
  ours-train   `labse_core.finetune.train.run`: streamed pair shards, one (2B, T) forward, the
               bidirectional in-batch softmax loss (labse_core.losses.ams with margin 0, scale 20);
  peer-train   sentence-transformers' own trainer (`SentenceTransformerTrainer`, what `fit` runs) with
               `MultipleNegativesSymmetricRankingLoss` (scale 20, no margin) on *the same pairs in the
               same batches* (our stream's first warmup + steps batches, in order, through a sequential
               batch sampler), tokenizing text in its collator as it always does;
  ours-encode  `labse_core.embed.encode` of --encode-sentences sentences of those pairs;
  peer-encode  `SentenceTransformer.encode` of the same sentences from the same folder.
Equal work, enforced: the same initial weights (a freshly initialised encoder exported once as a model
folder that both load), the same tokenizer and max_len, batch size, AdamW hyper-parameters, linear
warm-up/decay, clipping 1.0, dropout 0, dtype (fp32 on CPU) and threads (torch.set_num_threads and
OMP/MKL in each child). The peer's real tokens per step are counted where its model reads them and must
equal ours (same batches). The encoders' embeddings must agree (max |diff| reported). What differs by
design: ours tokenizes once when the shards are written (the peer in every step), and our encoder
runs over the real tokens only (no work at padding) and computes only the [CLS] row in the last layer
(the only row the pooling reads; labse_core.model.unpadded), in training and in encoding: on `small`
the last layer is 1/4 of the layers, on `base` 1/12. Our loss sums the two directions, sentence-transformers' averages them
(first-step loss: ours = 2 x peer's; Adam makes the scale irrelevant).

Writes bench/results/finetune_bench[_<model>][.quick].json: pairs/s and sentences/s (min, median, ratios),
each child's wall time, CPU-seconds, peak RSS, the load average and other processes' CPU.
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
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pyarrow as pa
import torch

from bench import common
from labse_core.data.shards import write_shards
from labse_core.gettext_catalog import catalog_pairs, read_mo
from storage.schemas import SHARD_PAIRS

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "ru")
DOMAINS = ("glib20", "coreutils")
PACKAGES = ("torch", "transformers", "sentence-transformers", "accelerate", "datasets", "tokenizers", "numpy")
SIDES = ("ours-train", "peer-train", "ours-encode", "peer-encode")


def build_pair_shards(out: Path, vocab_size: int = 4000) -> tuple[Path, Path, int]:
    """(shard folder, tokenizer folder, vocab size) of this machine's gettext en -> de/fr/es/ru pairs."""
    from labse_core import vocab

    rows = sorted(
        {
            (lang, p.src_text, p.tgt_text)
            for lang in LANGS
            for d in DOMAINS
            if (LOCALES / lang / "LC_MESSAGES" / f"{d}.mo").is_file()
            for p in catalog_pairs(read_mo(LOCALES / lang / "LC_MESSAGES" / f"{d}.mo"))
            if p.src_text != p.tgt_text and len(p.src_text) < 300
        }
    )
    if not rows:
        raise SystemExit(f"no gettext catalogs for {LANGS} under {LOCALES}")
    texts = sorted({r[1] for r in rows} | {r[2] for r in rows})
    spm = vocab.train_sentencepiece(
        texts, out / "spm", vocab.VocabConfig(vocab_size=vocab_size, num_threads=1)
    )
    hf = vocab.export_hf_tokenizer(spm, out / "hf")
    tok = vocab.load_tokenizer(hf)
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]

    def ids(xs):
        return pa.array(tok(xs, add_special_tokens=False)["input_ids"], pa.list_(pa.int32()))

    table = pa.table(
        {
            "src_lang": ["en"] * len(rows),
            "tgt_lang": [r[0] for r in rows],
            "src_text": [r[1] for r in rows],
            "tgt_text": [r[2] for r in rows],
            "src_ids": ids([r[1] for r in rows]),
            "tgt_ids": ids([r[2] for r in rows]),
        }
    )
    write_shards(SHARD_PAIRS, table, out / "pairs", rows_per_file=5000)
    return out / "pairs", hf, len(tok)


def our_batches(cfg, files: Path, steps: int) -> list[list[dict]]:
    """The first `steps` batches (rows with texts) our run reads: the same PairBatcher as `run`."""
    from labse_core.data.shards import shard_files
    from labse_core.finetune.data import PairBatcher, acceptance_probs, scan_pairs

    scan = scan_pairs(shard_files(files), cfg.eval_fraction, cfg.eval_max_pairs, cfg.train_fraction)
    batcher = PairBatcher(cfg, files, 0, 1, acceptance_probs(scan.train_counts, cfg.balance_alpha))
    return [batcher.next() for _ in range(steps)]


def finetune_config(spec: dict):
    from labse_core.finetune.config import FinetuneConfig

    return FinetuneConfig(**spec["config"])


# ---------------------------------------------------------------------------------------------------
# The sides (each in its own process: `--side NAME --spec spec.json`)


def side_ours_train(spec: dict, work: Path) -> dict:
    from labse_core.finetune.train import run
    from storage.layout import Layout

    result = run(finetune_config(spec), Layout(work))
    return {"step_times": result.step_times, "pairs": result.pairs, "losses": result.losses}


def peer_arguments(cfg, out: Path, steps: int, bf16: bool) -> dict:
    """SentenceTransformerTrainingArguments, exactly (recorded in the results JSON)."""
    return common.hf_training_args(
        cfg, out, steps, bf16, per_device_train_batch_size=cfg.batch_size, dataloader_drop_last=True
    )


def side_peer_train(spec: dict, work: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.losses import MultipleNegativesSymmetricRankingLoss
    from transformers import PrinterCallback, TrainerCallback

    cfg = finetune_config(spec)
    batches = json.loads(Path(spec["batches"]).read_text())
    marks: list[float] = []
    losses: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kwargs):
            tokens.append(0)

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(DefaultBatchSampler):
        """Our batches, in our order: consecutive runs of batch_size rows, no shuffling."""

        def __iter__(self):
            n = len(self.sampler) // self.batch_size
            return iter([list(range(i * self.batch_size, (i + 1) * self.batch_size)) for i in range(n)])

        def __len__(self) -> int:
            return len(self.sampler) // self.batch_size

    model = SentenceTransformer(
        spec["init"], device="cuda" if torch.cuda.is_available() else "cpu", local_files_only=True
    )
    model.max_seq_length = cfg.max_len

    def count(module, args, kwargs):  # the transformer module reads {"input_ids", "attention_mask", ...}
        features = args[0] if args else kwargs["features"]
        tokens[-1] += int(features["attention_mask"].sum())

    model[0].register_forward_pre_hook(count, with_kwargs=True)
    data = Dataset.from_dict(
        {"anchor": [r[0] for b in batches for r in b], "positive": [r[1] for b in batches for r in b]}
    )
    args = Args(**peer_arguments(cfg, work / "st", len(batches), spec["bf16"]), batch_sampler=InOrder)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=MultipleNegativesSymmetricRankingLoss(model, scale=20.0),
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)  # no log lines on stdout
    trainer.train()
    return {"step_times": np.diff(marks).tolist(), "tokens": tokens, "losses": losses}


def side_ours_encode(spec: dict, work: Path) -> dict:
    from labse_core.embed import encode
    from labse_core.export import load_encoder

    sentences = json.loads(Path(spec["sentences"]).read_text())
    model = load_encoder(spec["init"])
    kw = dict(batch_size=spec["encode_batch_size"], max_length=spec["config"]["max_len"], progress=False)
    encode(sentences[:64], model, **kw)  # warm-up (allocator, first-call costs)
    t0 = time.perf_counter()
    emb = encode(sentences, model, **kw)
    seconds = time.perf_counter() - t0
    np.save(work.parent / "ours-encode.npy", emb)
    return {"seconds": seconds, "sentences": len(sentences)}


def side_peer_encode(spec: dict, work: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    sentences = json.loads(Path(spec["sentences"]).read_text())
    st = SentenceTransformer(
        spec["init"], device="cuda" if torch.cuda.is_available() else "cpu", local_files_only=True
    )
    st.max_seq_length = spec["config"]["max_len"]
    st.encode(sentences[:64], batch_size=spec["encode_batch_size"])
    t0 = time.perf_counter()
    emb = st.encode(sentences, batch_size=spec["encode_batch_size"], convert_to_numpy=True)
    seconds = time.perf_counter() - t0
    np.save(work.parent / "peer-encode.npy", emb)
    return {"seconds": seconds, "sentences": len(sentences)}


def child(side: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    if not torch.cuda.is_available():
        torch.set_num_threads(spec["threads"])
    fn = {
        "ours-train": side_ours_train,
        "peer-train": side_peer_train,
        "ours-encode": side_ours_encode,
        "peer-encode": side_peer_encode,
    }[side]
    with tempfile.TemporaryDirectory(prefix=f"finetune-bench-{side}-", dir=spec_path.parent) as tmp:
        out = fn(spec, Path(tmp))
    common.child_report(out | {"threads": torch.get_num_threads()})


# ---------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench.finetune_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="small", choices=("tiny", "small", "base"))
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side (default 30; --quick 10)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per side")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--encode-sentences", type=int, default=None, help="default 2000; --quick 600")
    parser.add_argument("--encode-batch-size", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=None, help="A B C D ... repeats (default 3; --quick 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per side on CPU")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (GPU)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, sentences and repeats")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/finetune_bench[...].json)"
    )
    args = common.parse_or_run_child(parser, argv, SIDES, child)
    if args is None:  # a child process: it has run its side
        return {}
    steps = args.steps or (10 if args.quick else 30)
    repeats = args.repeats or (2 if args.quick else 3)
    n_encode = args.encode_sentences or (600 if args.quick else 2000)

    from labse_core.export import export_model
    from labse_core.finetune.config import tiny_cpu
    from labse_core.finetune.data import collate_pairs
    from labse_core.finetune.train import build_encoder

    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    t0 = time.perf_counter()
    shards, hf, vocab_size = build_pair_shards(work)
    total = args.warmup + steps
    cfg = tiny_cpu(
        run_name="bench",
        encoder_preset=args.model,
        vocab_size=vocab_size,
        dropout=0.0,
        pair_shards=str(shards),
        tokenizer_dir=str(hf),
        batch_size=args.batch_size,
        max_len=args.max_len,
        max_steps=total,
        lr=1e-4,
        warmup_steps=1,
        loss={"margin": 0.0, "scale": 20.0, "bidirectional": True},
        eval_fraction=0.0,
        eval_at_start=False,
        eval_every=10**9,
        checkpoint_every=10**9,
        mlflow=False,
        progress=False,
        export_final=False,
        bf16=args.bf16,
    )
    init = export_model(build_encoder(cfg), hf, work / "init")
    batches = our_batches(cfg, shards, total)
    (work / "batches.json").write_text(
        json.dumps([[(r["src_text"], r["tgt_text"]) for r in b] for b in batches])
    )
    our_tokens = [
        int(collate_pairs(b, cfg.max_len, cfg.special_ids)["attention_mask"].sum()) for b in batches
    ]
    sentences = [s for b in batches for r in b for s in (r["src_text"], r["tgt_text"])]
    sentences = (sentences * (1 + n_encode // max(len(sentences), 1)))[:n_encode]
    (work / "sentences.json").write_text(json.dumps(sentences))
    spec = {
        "config": cfg.model_dump(mode="json"),
        "init": str(init),
        "batches": str(work / "batches.json"),
        "sentences": str(work / "sentences.json"),
        "encode_batch_size": args.encode_batch_size,
        "threads": args.threads,
        "bf16": args.bf16,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    print(
        f"data: {vocab_size}-piece vocabulary, pair shards, initial model folder in {time.perf_counter() - t0:.1f}s"
    )

    side = common.side_runner("bench.finetune_bench", work / "spec.json", common.thread_env(args.threads))

    def rate(name: str, r: common.ChildRun) -> float:
        if name.endswith("encode"):
            return r.result["sentences"] / r.result["seconds"]
        return args.batch_size * steps / sum(r.result["step_times"][args.warmup :])

    def show(name: str, rep: int, r: common.ChildRun) -> None:
        unit = "sentences/s" if name.endswith("encode") else "pairs/s"
        flag = f"  FLAGGED: {'; '.join(r.flags)}" if r.flags else ""
        print(
            f"  {name:<12} #{rep + 1}: {rate(name, r):9,.1f} {unit:<12} child {r.wall_s:6.1f}s wall "
            f"{r.cpu_s:6.1f} CPU-s {r.peak_rss_mb:6.0f} MB{flag}",
            flush=True,
        )

    runs = common.interleave({name: side(name) for name in SIDES}, repeats, show)

    # Equal work, checked.
    for r in runs["peer-train"]:
        if r.result["tokens"] != our_tokens:
            raise SystemExit(
                "the peer's batches differ from ours (real tokens per step "
                f"{r.result['tokens'][:5]}... vs {our_tokens[:5]}...): not equal work"
            )
    for name, rs in runs.items():
        for r in rs:
            if r.result["threads"] != (
                torch.get_num_threads() if torch.cuda.is_available() else args.threads
            ):
                raise SystemExit(f"{name}: ran with {r.result['threads']} threads, not {args.threads}")
    ours_emb, peer_emb = np.load(work / "ours-encode.npy"), np.load(work / "peer-encode.npy")
    max_diff = float(np.abs(ours_emb - peer_emb).max())
    if max_diff > 1e-3:
        raise SystemExit(
            f"embeddings differ by up to {max_diff:.2e}: the two encoders do not compute the same"
        )

    rates = {name: [rate(name, r) for r in rs] for name, rs in runs.items()}
    shutil.rmtree(work, ignore_errors=True)  # shards, batches, model folders: not needed any more

    def cpu(name):
        return [r.cpu_s for r in runs[name]]

    metrics = {
        "train_pairs_per_s": common.compare(rates["ours-train"], rates["peer-train"], higher_is_better=True),
        "encode_sentences_per_s": common.compare(
            rates["ours-encode"], rates["peer-encode"], higher_is_better=True
        ),
        "train_child_cpu_s": common.compare(cpu("ours-train"), cpu("peer-train"), higher_is_better=False),
        "encode_child_cpu_s": common.compare(cpu("ours-encode"), cpu("peer-encode"), higher_is_better=False),
        "peak_rss_mb": {name: max(r.peak_rss_mb for r in rs) for name, rs in runs.items()},
        "first_step_loss": {
            "ours (sum of both directions)": runs["ours-train"][0].result["losses"][0],
            "peer (mean of both directions)": runs["peer-train"][0].result["losses"][0],
        },
        "timed_real_tokens_per_side": sum(our_tokens[args.warmup :]),
        "encode_max_abs_diff": max_diff,
    }
    name = (
        "finetune_bench"
        + ("" if args.model == "small" else f"_{args.model}")
        + (".quick" if args.quick else "")
    )
    dtype = "bf16 autocast" if args.bf16 else "fp32"
    result = common.Result(
        name=name,
        command=common.command_line(),
        equal_work=(
            f"same {args.model} initial weights (one exported folder), same tokenizer, the same {total} batches "
            f"of {args.batch_size} pairs in the same order (real tokens per step checked equal), max_len "
            f"{args.max_len}, in-batch softmax loss both directions scale 20 no margin, AdamW same "
            f"hyper-parameters and schedule, clipping 1.0, dropout 0, {dtype}, {args.threads} thread(s) per "
            f"side, each side in its own process; encoding: same folder, the same {n_encode} sentences, "
            f"batch {args.encode_batch_size}, embeddings checked equal. By design: ours reads pre-tokenized "
            "ids, skips padding and computes only the [CLS] row in the last layer."
        ),
        ours={
            "train": "labse_core.finetune.train.run",
            "encode": "labse_core.embed.encode",
            "config": cfg.model_dump(mode="json"),
        },
        peer={
            "train": "sentence_transformers.SentenceTransformerTrainer + MultipleNegativesSymmetricRankingLoss(scale=20)",
            "training_arguments": peer_arguments(cfg, Path("<tmp>"), total, args.bf16)
            | {
                "output_dir": "<tmp>",
                "batch_sampler": "sequential batches of batch_size (our batches, in order)",
            },
            "encode": f"SentenceTransformer(folder).encode(batch_size={args.encode_batch_size}), max_seq_length {args.max_len}",
        },
        metrics=metrics,
        runs=common.runs_json(runs),
        flags=common.flags_of(runs),
        versions=common.versions(*PACKAGES),
    )
    for d in (result.ours, result.peer):
        d |= {"threads": args.threads, "timed_steps": steps, "warmup_steps_excluded": args.warmup}
    path = common.write_result(result, path=args.out)

    t, e = metrics["train_pairs_per_s"], metrics["encode_sentences_per_s"]
    print(
        f"\nmodel {args.model}, batch {args.batch_size}, {steps} timed steps after {args.warmup}, {repeats} repeats, {dtype}"
    )
    print(
        f"train  pairs/s      ours median {t['ours']['median']:8.1f}  peer median {t['peer']['median']:8.1f}  "
        f"ratio median {t['ratio_of_median']:.2f}x  best {t['ratio_of_best']:.2f}x"
    )
    print(
        f"encode sentences/s  ours median {e['ours']['median']:8.1f}  peer median {e['peer']['median']:8.1f}  "
        f"ratio median {e['ratio_of_median']:.2f}x  best {e['ratio_of_best']:.2f}x  (max |diff| {max_diff:.1e})"
    )
    if result.flags:
        print("FLAGGED (load from other processes):\n  " + "\n  ".join(result.flags))
    print(f"wrote {path}")
    return dataclasses.asdict(result)


if __name__ == "__main__":
    main()
