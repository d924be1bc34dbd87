"""Pretraining throughput: our loop vs Hugging Face's Trainer + BertForMaskedLM, equal work.

    python -m bench.pretrain_bench                  # CPU, `small` encoder: ~5 minutes on 2 cores
    python -m bench.pretrain_bench --quick          # ~1.5 minutes: fewer steps, one repeat fewer
    python -m bench.pretrain_bench --model base --steps 30 --batch-size 128 --bf16   # on a GPU

Equal work, enforced:
  * the same model: BertForMaskedLM holds our freshly initialised weights (same seed, mapped by name,
    decoder tied to the word embeddings as ours), the same geometry, dropout 0 on both sides;
  * the same data: the peer trains on *the batches our run reads* (the first warmup + steps batches of
    our stream of gettext MLM shards, already masked, saved once by the parent), so sentences, batch
    size, sequence lengths, padding and masked positions are identical. Each side reports the real
    tokens of every step and the parent checks the two lists are equal, and that both sides' first-step
    loss agrees (same weights, same batch: the same number up to float rounding);
  * the same optimizer and schedule: AdamW (lr, betas, eps, weight decay without decay on biases and
    LayerNorm weights: the Trainer's default grouping), linear warm-up + decay, clipping at 1.0;
  * the same dtype (fp32 on CPU; bf16 autocast on a GPU with --bf16) and the same threads: each side
    runs in its own fresh process with torch.set_num_threads(--threads) and OMP/MKL_NUM_THREADS set.
What differs, by design (the implementation being measured): our MLM head is computed at the masked
positions only (BertForMaskedLM computes it at every position); our encoder runs over the real tokens
only and its last layer only for the masked rows the head reads (labse_core.model.unpadded: the same
function to float rounding); our AdamW is the fused kernel (the Trainer's default `adamw_torch` is the
foreach one). Our timed steps include reading, collating and masking the batch from Parquet (the
peer's batches are prebuilt tensors: that favours the peer).

Metric: real (non-pad) tokens per second over the timed steps (the first --warmup steps excluded),
interleaved repeats A B A B ..., min and median of each and the ratios of both; each child's wall
time, CPU-seconds and peak RSS, the load average and other processes' CPU (bench.common). MFU =
tokens/s x flops_per_token(encoder, mean padded length) / the matmul peak measured here with the same
threads; flops_per_token = 6 N + 12 L d T (head excluded, the same numerator for both sides).
Writes bench/results/pretrain_bench[_<model>][.quick].json.
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
from labse_core.model.encoder import flops_per_token
from labse_core.pretrain.config import PretrainConfig
from labse_core.pretrain.data import make_loader
from labse_core.pretrain.train import build_model, run
from storage.layout import Layout
from storage.schemas import SHARD_MLM

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "ru", "ja", "pt")
DOMAINS = ("glib20", "gtk20")
PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pyarrow", "sentencepiece")


# ---------------------------------------------------------------------------------------------------
# Data


def build_mlm_shards(out: Path, vocab_size: int = 3000) -> tuple[Path, int]:
    """MLM shards of gettext sentences (English + 6 languages); returns (folder, vocabulary size)."""
    from labse_core import vocab

    sentences: list[tuple[str, str]] = []
    english: set[str] = set()
    for lang in LANGS:
        for domain in DOMAINS:
            path = LOCALES / lang / "LC_MESSAGES" / f"{domain}.mo"
            if path.is_file():
                for p in catalog_pairs(read_mo(path)):
                    sentences.append((lang, p.tgt_text))
                    english.add(p.src_text)
    sentences += [("en", t) for t in sorted(english)]
    if not sentences:
        raise SystemExit(f"no gettext catalogs for {LANGS} under {LOCALES}")
    texts = [t for _, t in sentences]
    import sentencepiece as spm

    # One trainer thread: the same vocabulary on every run (and no competition with a measurement).
    model = vocab.train_sentencepiece(
        texts, out / "spm", vocab.VocabConfig(vocab_size=vocab_size, num_threads=1)
    )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    table = pa.table(
        {
            "lang": [lang for lang, _ in sentences],
            "text": texts,
            "input_ids": pa.array(sp.encode(texts), pa.list_(pa.int32())),
        }
    ).take(np.random.default_rng(0).permutation(len(texts)))
    write_shards(SHARD_MLM, table, out / "mlm", rows_per_file=5000)
    return out / "mlm", sp.get_piece_size()


# ---------------------------------------------------------------------------------------------------
# The two sides (each runs in its own process: `--side ours|peer --spec spec.json`)


def config_of(spec: dict) -> PretrainConfig:
    return PretrainConfig(**spec["config"])


def side_ours(spec: dict, work: Path) -> dict:
    cfg = config_of(spec).model_copy(update=spec.get("ours_overrides", {}))
    result = run(cfg, Layout(work))
    return {
        "step_times": result.step_times,
        "tokens": result.tokens,
        "losses": result.losses,
        "threads": torch.get_num_threads(),
    }


def hf_masked_lm(cfg: PretrainConfig):
    """BertForMaskedLM holding the same initial weights as our model (same seed, mapped by name)."""
    from transformers import BertForMaskedLM

    ours = build_model(cfg)
    peer = BertForMaskedLM(ours.encoder.bert.config)
    state = {f"bert.{k}": v for k, v in ours.encoder.bert.state_dict().items()}
    state |= {
        f"cls.predictions.{k}": v
        for k, v in ours.head.state_dict().items()
        if not k.startswith("word_embeddings")
    }
    missing, unexpected = peer.load_state_dict(state, strict=False)
    if unexpected or not all("decoder" in k for k in missing):
        raise RuntimeError(
            f"weight mapping to BertForMaskedLM failed: missing {missing}, unexpected {unexpected}"
        )
    peer.tie_weights()
    if (
        peer.cls.predictions.decoder.weight.data_ptr()
        != peer.bert.embeddings.word_embeddings.weight.data_ptr()
    ):
        raise RuntimeError("BertForMaskedLM's decoder is not tied to its word embeddings")
    return peer


def peer_arguments(cfg: PretrainConfig, out: Path, steps: int, bf16: bool) -> dict:
    """TrainingArguments, exactly (recorded in the results JSON): one dataset item is one prebuilt batch."""
    return common.hf_training_args(cfg, out, steps, bf16, per_device_train_batch_size=1, remove_unused_columns=False)


def side_peer(spec: dict, work: Path) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    cfg = config_of(spec)
    batches = torch.load(spec["batches"], weights_only=True)
    model = hf_masked_lm(cfg)
    cuda = torch.cuda.is_available()
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(Trainer):
        """The Trainer, but reading its dataset in order (ours reads the batches in this order)."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    seen: list[int] = []  # real tokens of every batch the model is called on, as the Trainer feeds it

    def count(module, args, kwargs):
        seen.append(int(kwargs["attention_mask"].sum()))

    model.register_forward_pre_hook(count, with_kwargs=True)
    args = TrainingArguments(**peer_arguments(cfg, work / "peer", len(batches), spec["bf16"]))
    trainer = InOrder(
        model=model,
        args=args,
        train_dataset=batches,
        data_collator=lambda items: items[0],
        callbacks=[Clock()],
    )
    start = time.perf_counter()
    trainer.remove_callback(PrinterCallback)  # no log lines on stdout
    trainer.train()
    return {
        "step_times": np.diff([start, *ends]).tolist(),
        "tokens": seen,
        "losses": losses,
        "threads": torch.get_num_threads(),
    }


def child(side: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    if not torch.cuda.is_available():
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"pretrain-bench-{side}-") as tmp:
        out = (side_ours if side == "ours" else side_peer)(spec, Path(tmp))
    common.child_report(out)


# ---------------------------------------------------------------------------------------------------
# Main


def steady_rate(out: dict, warmup: int) -> float:
    """Real tokens per second over the steps after the warm-up."""
    return sum(out["tokens"][warmup:]) / sum(out["step_times"][warmup:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pretrain_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="small", choices=["tiny", "small", "base"])
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side (default 40; --quick 15)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps per side")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=None, help="A B A B ... repeats (default 3; --quick 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads per side on CPU (default 1: on a small shared machine two OpenMP threads "
        "per matmul spin-wait on each other)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (GPU)")
    parser.add_argument(
        "--ours",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a field of our PretrainConfig only (e.g. compile=true); recorded in the results",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and repeats (for `make bench-quick`)"
    )
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/pretrain_bench[...].json)"
    )
    args = common.parse_or_run_child(parser, argv, ("ours", "peer"), child)
    if args is None:  # a child process: it has run its side
        return {}
    steps = args.steps or (15 if args.quick else 40)
    repeats = args.repeats or (2 if args.quick else 3)
    ours_overrides = {}
    for item in args.ours:
        key, _, value = item.partition("=")
        if key not in PretrainConfig.model_fields:
            parser.error(f"--ours {item}: PretrainConfig has no field {key!r}")
        ours_overrides[key] = json.loads(value)
    cuda = torch.cuda.is_available()
    if cuda and not args.bf16:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    work = Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
    t0 = time.perf_counter()
    shards, vocab_size = build_mlm_shards(work / "data")
    print(f"data: MLM shards of gettext text in {time.perf_counter() - t0:.1f}s, vocabulary {vocab_size}")

    total = args.warmup + steps
    cfg = PretrainConfig(
        run_name="bench",
        encoder_preset=args.model,
        vocab_size=vocab_size,
        dropout=0.0,
        mlm_shards=str(shards),
        tlm_ratio=0.0,
        max_len=args.max_len,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_steps=args.warmup,
        max_steps=total,
        bf16=args.bf16,
        checkpoint_every=10**9,
        mlflow=False,
        progress=False,
    )
    # The peer's batches: the first `total` batches of the very stream our run reads.
    loader = make_loader(cfg, "mlm", shards, 0, 1)
    it = iter(loader)
    batches = [next(it) for _ in range(total)]
    torch.save(batches, work / "batches.pt")
    real = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup :])
    padded = sum(b["attention_mask"].numel() for b in batches[args.warmup :])
    mean_len = float(np.mean([b["input_ids"].shape[1] for b in batches[args.warmup :]]))
    ecfg = build_model(cfg).encoder.cfg
    fpt = flops_per_token(ecfg, round(mean_len))
    spec = {
        "config": cfg.model_dump(mode="json"),
        "ours_overrides": ours_overrides,
        "batches": str(work / "batches.pt"),
        "threads": args.threads,
        "bf16": args.bf16,
    }
    (work / "spec.json").write_text(json.dumps(spec))

    torch.set_num_threads(args.threads)
    device = "cuda" if cuda else "cpu"
    dtype = "bfloat16" if args.bf16 else "float32"
    peak = common.matmul_peak(device, dtype, 8192 if cuda else 1024, seconds=3.0)
    print(f"measured {dtype} matmul peak ({args.threads} thread(s)): {peak / 1e9:,.1f} GFLOP/s")

    side = common.side_runner("bench.pretrain_bench", work / "spec.json", common.thread_env(args.threads))

    def show(name: str, rep: int, r: common.ChildRun) -> None:
        rate = steady_rate(r.result, args.warmup)
        flag = f"  FLAGGED: {'; '.join(r.flags)}" if r.flags else ""
        print(
            f"  {name:<4} #{rep + 1}: {rate:9,.0f} real tokens/s   child {r.wall_s:6.1f}s wall "
            f"{r.cpu_s:6.1f} CPU-s {r.peak_rss_mb:6.0f} MB{flag}",
            flush=True,
        )

    runs = common.interleave({"ours": side("ours"), "peer": side("peer")}, repeats, show)

    # Equal work, checked: the same real tokens per step, the same first-step loss.
    for name, rs in runs.items():
        for r in rs:
            if r.result["tokens"] != runs["ours"][0].result["tokens"]:
                raise SystemExit(
                    f"{name}: its batches differ from ours (real tokens per step): not equal work"
                )
            if r.result["threads"] != (torch.get_num_threads() if cuda else args.threads):
                raise SystemExit(f"{name}: ran with {r.result['threads']} threads, not {args.threads}")
    loss0 = {name: rs[0].result["losses"][0] for name, rs in runs.items()}
    if abs(loss0["ours"] - loss0["peer"]) > 1e-3 * max(1.0, abs(loss0["peer"])):
        raise SystemExit(
            f"first-step losses differ (ours {loss0['ours']:.5f}, peer {loss0['peer']:.5f}): not equal work"
        )

    rates = {name: [steady_rate(r.result, args.warmup) for r in rs] for name, rs in runs.items()}
    shutil.rmtree(work, ignore_errors=True)  # shards, batches, model folders: not needed any more
    tokens_cmp = common.compare(rates["ours"], rates["peer"], higher_is_better=True)
    mfu = {
        name: {"best": max(v) * fpt / peak, "median": tokens_cmp[name]["median"] * fpt / peak}
        for name, v in rates.items()
    }
    metrics = {
        "real_tokens_per_s": tokens_cmp,
        "child_wall_s": common.compare(
            [r.wall_s for r in runs["ours"]], [r.wall_s for r in runs["peer"]], higher_is_better=False
        ),
        "child_cpu_s": common.compare(
            [r.cpu_s for r in runs["ours"]], [r.cpu_s for r in runs["peer"]], higher_is_better=False
        ),
        "peak_rss_mb": {name: max(r.peak_rss_mb for r in rs) for name, rs in runs.items()},
        "mfu": mfu,
        "matmul_peak_flops": peak,
        "model_flops_per_token": fpt,
        "first_step_loss": loss0,
        "timed_real_tokens_per_side": real,
        "timed_padded_tokens_per_side": padded,
        "padding": 1 - real / padded,
        "mean_padded_len": mean_len,
    }
    name = (
        "pretrain_bench"
        + ("" if args.model == "small" else f"_{args.model}")
        + (".quick" if args.quick else "")
    )
    result = common.Result(
        name=name,
        command=common.command_line(),
        equal_work=(
            f"same {args.model} model and initial weights (BertForMaskedLM loaded from ours, decoder tied), "
            f"the same {total} batches of {args.batch_size} sentences (max_len {args.max_len}, already "
            f"masked: identical real tokens per step, checked, and first-step loss, checked), AdamW with the "
            f"same hyper-parameters and schedule, clipping 1.0, dropout 0, {dtype}, {args.threads} thread(s) "
            "per side, each side in its own process. Differences by design: our MLM head runs at masked "
            "positions only, our encoder over real tokens only with its last layer for the masked rows only, "
            "our AdamW is fused; our steps include reading/collating/masking from Parquet, the peer's "
            "batches are prebuilt."
        ),
        ours={
            "system": "labse_core.pretrain.train.run",
            "config": cfg.model_dump(mode="json") | ours_overrides,
        },
        peer={
            "system": "transformers.Trainer + BertForMaskedLM",
            "training_arguments": peer_arguments(cfg, Path("<tmp>"), total, args.bf16)
            | {"output_dir": "<tmp>"},
            "bert_config": build_model(cfg).encoder.bert.config.to_diff_dict(),
            "batches": f"our stream's first {total} batches, in order (SequentialSampler), via a collator "
            "that returns them unchanged",
        },
        metrics=metrics,
        runs=common.runs_json(runs),
        flags=common.flags_of(runs),
        versions=common.versions(*PACKAGES),
    )
    result.ours["threads"] = result.peer["threads"] = args.threads
    result.ours["timed_steps"] = result.peer["timed_steps"] = steps
    result.ours["warmup_steps_excluded"] = result.peer["warmup_steps_excluded"] = args.warmup
    path = common.write_result(result, path=args.out)

    print(
        f"\nmodel {args.model} ({ecfg.num_layers} layers, d={ecfg.hidden_size}, V={ecfg.vocab_size}), batch "
        f"{args.batch_size}, mean padded length {mean_len:.1f}, padding {100 * metrics['padding']:.1f}%, "
        f"{steps} timed steps after {args.warmup}, {repeats} interleaved repeats, {dtype}, {args.threads} thread(s)"
    )
    for side_name in ("ours", "peer"):
        s = tokens_cmp[side_name]
        print(
            f"{side_name:<5} real tokens/s  max {s['max']:9,.0f}  median {s['median']:9,.0f}  min {s['min']:9,.0f}"
            f"   MFU (best) {100 * mfu[side_name]['best']:.1f}%"
        )
    print(
        f"ratio ours/peer: median {tokens_cmp['ratio_of_median']:.2f}x, best {tokens_cmp['ratio_of_best']:.2f}x, "
        f"min {tokens_cmp['ratio_of_min']:.2f}x"
    )
    if result.flags:
        print("FLAGGED (load from other processes):\n  " + "\n  ".join(result.flags))
    print(f"wrote {path}")
    return dataclasses.asdict(result)


if __name__ == "__main__":
    main()
