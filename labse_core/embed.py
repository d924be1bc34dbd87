"""Sentence embeddings from an exported model folder (or an in-memory encoder + tokenizer).

``encode`` tokenizes once, sorts sentences by token length, runs the encoder on batches of similar
length (little padding, so little compute spent on [PAD] positions) and puts the rows back in the
caller's order. Mathematically every row depends only on its own sentence
(attention masks out padding), so the result equals encoding one sentence at a time, to float
rounding (the export tests check 1e-5).

Run (CPU; on a GPU machine add ``--device cuda``):

    python -m labse_core.embed --model checkpoints/export/labse-tiny --input sentences.txt \\
        --output embeddings.parquet
    cat sentences.txt | python -m labse_core.embed --model DIR --output embeddings.npy

Writes ``.npy`` (float32 array, shape (N, D), row i = input line i) or ``.parquet`` (columns
``text`` string, ``embedding`` list<float32>, one row per input line, in input order).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from labse_core.export import default_max_length, inference_precision, load_encoder
from labse_core.model.encoder import LabseEncoder
from labse_core.model.inference import fast_embed
from labse_core.model.precision import PrecisionError, autocast, resolve_precision

log = logging.getLogger(__name__)

SORT_CHUNK = 65_536
"""Sentences tokenized and length-sorted together. Bounds the memory of token ids for huge inputs
(a mining run embeds millions of lines) while keeping batches well length-matched."""

@dataclass
class InferenceModel:
    """A model folder loaded for one precision (``load_for_inference``): ``encode`` runs it as loaded.

    fp32: the encoder as exported; bf16: all its weights cast to bfloat16 once, every op in bf16 (1.25x
    the speed of autocast over float32 weights, which casts every weight again per batch and keeps
    LayerNorm in float32; cosine to fp32 >= 0.9999 on multilingual-e5-small, docs/inference.md); int8:
    ``labse_core.model.int8.Int8Encoder`` on the folder's int8 files (CPU)."""

    encoder: LabseEncoder
    tokenizer: Any
    precision: str
    """What runs: fp32, bf16 or int8 (``auto`` resolved)."""
    device: torch.device
    int8: Any = None


ModelRef = str | os.PathLike[str] | tuple[LabseEncoder, Any] | InferenceModel


def resolve_model(model: ModelRef) -> tuple[LabseEncoder, Any]:
    """(encoder, tokenizer) from a model folder or an (encoder, tokenizer) pair."""
    if isinstance(model, InferenceModel):
        return model.encoder, model.tokenizer
    if isinstance(model, tuple):
        if len(model) != 2:
            raise TypeError("pass a model folder or an (encoder, tokenizer) pair")
        return model
    return load_encoder(model)


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_precision(folder: str | os.PathLike[str], precision: str = "auto",
                     device: str | torch.device | None = None) -> str:
    """What ``load_for_inference(folder, precision, device)`` runs (without loading the model); raises
    ``PrecisionError`` as it does."""
    from labse_core.model.int8 import has_int8, missing_int8_message

    if precision == "auto" and (own := inference_precision(folder)) is not None:
        precision = own  # the folder's setting (labse quantize --default): checked like an explicit one
    # has_int8 reads the weights' head and tail (a content digest): once, and only where int8 can be chosen
    ready = precision in ("auto", "int8") and has_int8(folder)
    resolved = resolve_precision(precision, _pick_device(device), int8_ready=ready)
    if resolved == "int8" and not ready:
        raise PrecisionError(missing_int8_message(folder))
    return resolved


def load_for_inference(folder: str | os.PathLike[str], precision: str = "auto",
                       device: str | torch.device | None = None) -> InferenceModel:
    """Load an exported folder to encode in ``precision`` (fp32, bf16, int8 or auto: the folder's own
    ``inference_precision`` setting if it has one, else bf16 where the hardware multiplies bf16, else
    int8 on a CPU when the folder holds its int8 files, else fp32; ``labse_core.model.precision``).
    A precision this machine or folder cannot run raises ``PrecisionError`` with one line saying what is
    missing and how to get it."""
    from labse_core.model.int8 import Int8Encoder

    dev = _pick_device(device)
    resolved = choose_precision(folder, precision, dev)
    encoder, tokenizer = load_encoder(folder)
    int8 = None
    if resolved == "int8":
        int8 = Int8Encoder(folder, encoder.cfg.pooling)
    elif resolved == "bf16":
        encoder.to(dev, dtype=torch.bfloat16)
    else:
        encoder.to(dev)
    return InferenceModel(encoder, tokenizer, resolved, dev, int8)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: input_ids, attention_mask, both (B, T_max)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def encode(
    sentences: Sequence[str],
    model: ModelRef,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> np.ndarray:
    """Unit-length embeddings, float32 array (N, D), row i for ``sentences[i]``.

    ``model``: an exported folder (``labse_core.export``) or ``(encoder, tokenizer)``; an encoder
    passed in is moved to ``device`` (default: CUDA if available) and is back in its previous
    train/eval mode afterwards. ``max_length``: tokens per sentence, [CLS] and [SEP] included;
    longer sentences are truncated. Default: the model's own limit, ``model_max_length`` of its
    tokenizer capped at the encoder's positions (128 for ``tiny``, 512 for ``base``), which is what
    ``export_model`` saves and transformers / sentence-transformers truncate to, so all loaders agree.
    The encoder's ``cfg.input_prefix`` (e5: ``"query: "``) is prepended to every sentence first; its
    tokens count towards ``max_length``. ``precision``: for a folder or a pair, ``fp32`` (default),
    ``bf16`` or ``auto`` (``labse_core.model.precision``; a folder also ``int8``); a precision the device
    cannot run raises ``PrecisionError``. An ``InferenceModel`` (``load_for_inference``) runs in the
    precision it was loaded for (``precision`` None or the same).
    """
    if isinstance(sentences, str):
        raise TypeError("encode takes a sequence of sentences, not one string: wrap it in a list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentences[{i}] is {type(s).__name__}, not str")
    if not isinstance(model, InferenceModel) and not isinstance(model, tuple) and precision not in (None, "fp32"):
        model = load_for_inference(model, precision, device)  # a folder: its weights cast once, or its int8 files
    if isinstance(model, InferenceModel):
        if precision not in (None, "auto", model.precision):
            raise PrecisionError(f"precision {precision}: this model was loaded for {model.precision}")
        device, precision = model.device, model.precision
    elif precision == "int8":
        raise PrecisionError("precision int8 needs a model folder with its int8 files (labse quantize DIR), "
                             "not an encoder in memory")
    encoder, tokenizer = resolve_model(model)
    positions = encoder.cfg.max_position_embeddings
    if max_length is None:
        max_length = default_max_length(encoder.cfg, tokenizer)
    if not 2 <= max_length <= positions:
        raise ValueError(
            f"max_length must be in [2, {positions}] (the encoder's positions), got {max_length}"
        )

    n, d = len(sentences), encoder.cfg.hidden_size
    out = np.empty((n, d), dtype=np.float32)
    if n == 0:
        return out
    dev = _pick_device(device)
    int8 = model.int8 if isinstance(model, InferenceModel) else None
    if isinstance(model, InferenceModel):  # weights already in their precision: no autocast
        cast = contextlib.nullcontext()
    else:  # an encoder in memory (training's evaluation): bf16 through autocast, weights untouched
        cast = autocast(resolve_precision(precision or "fp32", dev), dev)
        encoder.to(dev)
    was_training = encoder.training
    encoder.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else encoder.cfg.pad_token_id
    prefix = encoder.cfg.input_prefix
    try:
        with torch.inference_mode(), cast, tqdm(total=n, unit="sent", desc="embed", disable=None if progress else True) as bar:  # None: off when not a tty
            for start in range(0, n, SORT_CHUNK):
                chunk = [prefix + s for s in sentences[start : start + SORT_CHUNK]]
                ids = tokenizer(
                    chunk,
                    add_special_tokens=True,
                    truncation=True,
                    max_length=max_length,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                )["input_ids"]
                # Longest first: an out-of-memory shows up on the first batch, not after an hour.
                order = np.argsort(
                    -np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)), kind="stable"
                )
                for b in range(0, len(order), batch_size):
                    idx = order[b : b + batch_size]
                    if int8 is not None:
                        out[start + idx] = int8.embed([ids[i] for i in idx])
                        bar.update(len(idx))
                        continue
                    input_ids, mask = _pad([ids[i] for i in idx], pad_id)  # (B, T)
                    emb = fast_embed(encoder, input_ids.to(dev), mask.to(dev))  # (B, D)
                    # Unit length in float32 (a bf16 forward pass normalizes in bf16: norms off by ~1e-3).
                    out[start + idx] = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()
                    bar.update(len(idx))
    finally:
        encoder.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------------
# Files


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """UTF-8 lines of a file, or of stdin for ``-``; line i of the input is row i of the output.

    Only "\\n" (and a "\\r" before it) ends a line: U+2028, U+0085 and lone "\\r" inside a sentence
    stay part of it. Empty lines are kept, so rows stay aligned with input lines.
    """
    if str(path) == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        data = Path(path).read_bytes()
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline at the end of the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def write_embeddings(path: str | os.PathLike[str], sentences: Sequence[str], embeddings: np.ndarray) -> Path:
    """Write ``.npy`` or ``.parquet`` (text, embedding list<float32>) atomically; returns the path."""
    # storage is imported here, not at module level: encode() (and the MLflow model, which ships
    # labse_core alone) does not need it.
    from storage.io import PARQUET_COMPRESSION, atomic_path
    from storage.schemas import EMBEDDINGS_SCHEMA

    path = Path(path)
    if len(sentences) != len(embeddings):
        raise ValueError(f"{len(sentences)} sentences but {len(embeddings)} embeddings")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, embeddings)  # a file object: np.save would append ".npy" to a bare tmp name
    elif suffix == ".parquet":
        d = embeddings.shape[1] if embeddings.ndim == 2 else 0
        flat = pa.array(embeddings.reshape(-1), type=pa.float32())
        offsets = pa.array(np.arange(0, (len(embeddings) + 1) * d, d, dtype=np.int32))
        table = pa.table(
            {
                "text": pa.array(list(sentences), type=pa.string()),
                "embedding": pa.ListArray.from_arrays(offsets, flat),
            },
            schema=EMBEDDINGS_SCHEMA,
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)
    else:
        raise ValueError(f"output must end in .npy or .parquet, got {path.name!r}")
    return path


def embed_file(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: ModelRef,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> Path:
    """Embed every line of ``input`` (a UTF-8 text file, ``-`` for stdin) into ``output``.

    ``output``: ``.npy`` (float32 (N, D)) or ``.parquet`` (text, embedding list<float32>), in input
    order, written atomically. Returns the output path.
    """
    if Path(output).suffix.lower() not in (".npy", ".parquet"):  # fail before the expensive part
        raise ValueError(f"output must end in .npy or .parquet, got {Path(output).name!r}")
    sentences = read_lines(input)
    emb = encode(
        sentences, model, batch_size=batch_size, max_length=max_length, device=device, progress=progress,
        precision=precision,
    )
    return write_embeddings(output, sentences, emb)


# ---------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m labse_core.embed",
        description="Embed one sentence per line with an exported LaBSE-style model.",
    )
    p.add_argument("--model", required=True, help="exported model folder (labse_core.export)")
    p.add_argument(
        "--input", default="-", help="UTF-8 text file, one sentence per line; '-' = stdin (default)"
    )
    p.add_argument("--output", required=True, help="out.npy (float32 N x D) or out.parquet (text, embedding)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per sentence, [CLS]/[SEP] included (default: the model's max_seq_length)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "int8"),
                   help="fp32 (default), bf16, int8 (CPU; labse quantize DIR first) or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = embed_file(
        args.input,
        args.output,
        args.model,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        progress=not args.no_progress,
        precision=args.precision,
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
