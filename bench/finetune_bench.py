"""Fine-tuning and encoding throughput: ours vs sentence-transformers, same model, weights, data, batch.

    python -m bench.finetune_bench                          # CPU: tiny encoder, about a minute on 2 cores
    python -m bench.finetune_bench --model base --steps 30 --batch-size 128    # on a GPU

What it does, in one process:
  1. builds SHARD_PAIRS shards from this machine's gettext catalogs (en -> de/fr/es/ru) tokenized with
     the project's sentencepiece vocabulary (labse_core.vocab);
  2. exports the freshly initialised encoder (seeded) as a model folder, so both systems start from
     the same weights;
  3. training: our loop (`labse_core.finetune.train.run`: streamed shards, one (2B, T) forward, AMS)
     vs sentence-transformers' own trainer (`SentenceTransformerTrainer`, which `SentenceTransformer.fit`
     runs) with `MultipleNegativesSymmetricRankingLoss` (its bidirectional in-batch-negatives loss,
     scale 20, no margin) on the same pairs, batch size, lr, weight decay and clipping. The peer
     tokenizes text in its collator each step, as it always does; ours reads ids tokenized once by
     the sharding job (that is part of the design being measured);
  4. encoding: `labse_core.embed.encode` vs `SentenceTransformer.encode` on the same exported weights
     and sentences, same batch size, alternated for --rounds rounds (best of each);
  5. prints pairs/s and sentences/s and the ratios ours/peer (first `--warmup` steps excluded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pyarrow as pa
import torch

from labse_core.data.shards import write_shards
from labse_core.gettext_catalog import catalog_pairs, read_mo
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "ru")
DOMAINS = ("glib20", "coreutils")


def build_pair_shards(out: Path, vocab_size: int = 4000) -> tuple[Path, Path, int, list[tuple[str, str]]]:
    """(shard folder, tokenizer folder, vocab size, (src, tgt) texts in file order)."""
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
        raise SystemExit("no gettext catalogs on this machine")
    texts = sorted({r[1] for r in rows} | {r[2] for r in rows})
    spm = vocab.train_sentencepiece(texts, out / "spm", vocab.VocabConfig(vocab_size=vocab_size))
    hf = vocab.export_hf_tokenizer(spm, out / "hf")
    tok = vocab.load_tokenizer(hf)
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]

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
    write_shards(SHARD_PAIRS, table, out / "lake/shards/pairs", rows_per_file=5000)
    return out / "lake/shards/pairs", hf, len(tok), [(r[1], r[2]) for r in rows]


def peer_train(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    batch_size: int,
    steps: int,
    lr: float,
    max_len: int,
    device: str,
    out_dir: Path,
) -> list[float]:
    """sentence-transformers' own training loop (`SentenceTransformerTrainer`, which `fit` runs) with
    `MultipleNegativesSymmetricRankingLoss` over the same pairs, batch size, lr and clipping; the wall
    time of every optimizer step (end to end, data loading and tokenization included, as ours)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesSymmetricRankingLoss
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    model.max_seq_length = max_len
    needed = pairs * (1 + batch_size * steps // max(len(pairs), 1))
    data = Dataset.from_dict(
        {"anchor": [p[0] for p in needed[: batch_size * steps]],
         "positive": [p[1] for p in needed[: batch_size * steps]]}
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=1,
        max_grad_norm=1.0,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        dataloader_drop_last=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    clock = StepClock()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=MultipleNegativesSymmetricRankingLoss(model),
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in itertools.pairwise(clock.marks)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench.finetune_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--encode-sentences", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="encode measurements per system (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", help="write the results JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    from labse_core.embed import encode
    from labse_core.export import export_model, load_encoder
    from labse_core.finetune.train import build_encoder, run, tiny_cpu

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        shards, hf, vocab_size, pairs = build_pair_shards(tmp)
        cfg = tiny_cpu(
            encoder_preset=args.model,
            vocab_size=vocab_size,
            pair_shards=str(shards),
            tokenizer_dir=str(hf),
            batch_size=args.batch_size,
            max_len=args.max_len,
            max_steps=args.warmup + args.steps,
            eval_fraction=0.0,
            eval_at_start=False,
            eval_every=10**9,
            checkpoint_every=10**9,
            mlflow=False,
            progress=False,
            export_final=False,
            lr=1e-4,
            warmup_steps=1,
            bf16=True,
        )
        init = export_model(build_encoder(cfg), hf, tmp / "init")

        ours = run(cfg, Layout(tmp / "home"))
        ours_t = ours.step_times[args.warmup :]
        ours_pairs_s = args.batch_size * len(ours_t) / sum(ours_t)
        peer_t = peer_train(
            init, pairs, args.batch_size, args.warmup + args.steps, 1e-4, args.max_len, device, tmp / "st"
        )
        peer_pairs_s = args.batch_size * args.steps / sum(peer_t[args.warmup :])

        from sentence_transformers import SentenceTransformer

        sentences = [s for p in pairs for s in p][: args.encode_sentences]
        enc_model = load_encoder(init)
        st = SentenceTransformer(str(init), device=device, local_files_only=True)
        st.max_seq_length = args.max_len
        encode(sentences[:64], enc_model, max_length=args.max_len, device=device, progress=False)  # warm
        st.encode(sentences[:64], batch_size=64)
        # Alternate the two for --rounds rounds and keep each one's best: background load on a shared
        # machine then slows both alike instead of whichever happened to run second.
        ours_enc = peer_enc = 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            a = encode(
                sentences, enc_model, batch_size=64, max_length=args.max_len, device=device, progress=False
            )
            ours_enc = max(ours_enc, len(sentences) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            b = st.encode(sentences, batch_size=64, convert_to_numpy=True)
            peer_enc = max(peer_enc, len(sentences) / (time.perf_counter() - t0))
        max_diff = float(np.abs(a - b).max())

    result = {
        "device": device,
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "train_pairs_per_s": {
            "ours": ours_pairs_s,
            "sentence_transformers": peer_pairs_s,
            "ratio": ours_pairs_s / peer_pairs_s,
        },
        "encode_sentences_per_s": {
            "ours": ours_enc,
            "sentence_transformers": peer_enc,
            "ratio": ours_enc / peer_enc,
        },
        "encode_max_abs_diff": max_diff,
    }
    print(
        f"train  pairs/s      ours {ours_pairs_s:9.1f}  sentence-transformers {peer_pairs_s:9.1f}  "
        f"ratio {ours_pairs_s / peer_pairs_s:.2f}"
    )
    print(
        f"encode sentences/s  ours {ours_enc:9.1f}  sentence-transformers {peer_enc:9.1f}  "
        f"ratio {ours_enc / peer_enc:.2f}  (max |diff| {max_diff:.1e})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
