"""int8 CPU inference of an exported encoder folder through CTranslate2.

``write_int8(folder)`` converts the folder's BERT weights (``labse_core.export``) into a CTranslate2 model
with int8 weights in ``folder/int8/`` (about a quarter of the float32 size); ``Int8Encoder(folder)``
runs it with int8 matrix multiplies (weights int8 per output row, activations quantized per row on the
fly) and pools as the folder says: BERT's pooler (dense + tanh over [CLS], LaBSE) or the masked mean of
the last layer (e5). The caller tokenizes (``labse_core.embed.encode``), so every precision sees the
same token ids.

Chosen by measurement among the int8 engines that run this model (docs/inference.md): on a CPU without
bf16 hardware (AVX2 only) it encodes multilingual-e5-small 1.8x faster than torch in float32, at cosine
>= 0.99 to float32; PyTorch's dynamic int8 quantization was slower and less exact (cosine 0.97), ONNX
Runtime's int8 slower at equal quality. On a CPU with bf16 hardware (AMX / AVX512-BF16) the bf16 path
is faster still, so ``auto`` picks bf16 there (``labse_core.model.precision``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from labse_core.model.precision import PrecisionError

INT8_DIR = "int8"
"""The sub-folder of an exported model folder that holds its int8 model."""
_STAMP = "labse_int8.json"


def int8_dir(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / INT8_DIR


def _weights_digest(folder: Path) -> str:
    """Size and sampled content (first and last 4 MiB) of the folder's weight files and its config: an int8
    model written from other weights is stale. Content, not mtimes, so a copied folder (an MLflow artifact,
    a registry pull) keeps its int8 files."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        p = folder / name
        if not p.exists():
            continue
        size = p.stat().st_size
        h.update(f"{name}\0{size}\0".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(4 << 20))
            if size > 8 << 20:
                fh.seek(size - (4 << 20))
                h.update(fh.read())
    return h.hexdigest()


def has_int8(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds an int8 model written from its current weights."""
    folder = Path(folder)
    stamp = int8_dir(folder) / _STAMP
    try:
        return json.loads(stamp.read_text()).get("weights") == _weights_digest(folder)
    except (OSError, ValueError):
        return False


def missing_int8_message(folder: str | os.PathLike[str]) -> str:
    what = "is stale (the weights changed)" if int8_dir(folder).exists() else "is missing"
    return (f"precision int8: {int8_dir(folder)} {what}; write it with: labse quantize {folder} "
            "(or use --precision fp32 / bf16)")


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:  # pragma: no cover - in the lock; a hand-made environment may lack it
        raise PrecisionError("precision int8 needs the ctranslate2 package: pip install -c constraints.txt "
                             "ctranslate2 (it is in the project's lock)") from e
    return ctranslate2


def write_int8(folder: str | os.PathLike[str], force: bool = False) -> Path:
    """Convert the exported model in ``folder`` to ``folder/int8/`` (int8 weights); returns that folder.

    Already there and written from the current weights: nothing is done unless ``force``. The folder
    is written next to its final place and renamed, so a killed conversion leaves no half model."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not an exported model folder (no config.json)")
    out = int8_dir(folder)
    if has_int8(folder) and not force:
        return out
    _ctranslate2()
    if zero := _all_zero_matrices(folder):
        # CTranslate2 converts such a matrix but its int8 forward pass then fails ("expected storage to be of
        # type float32, but is of type int8"): refuse here, with the reason, instead of at the first batch.
        raise ValueError(f"{folder}: {len(zero)} weight matrices are all zero ({', '.join(zero[:3])}"
                         f"{', ...' if len(zero) > 3 else ''}); CTranslate2's int8 cannot run them: use "
                         "--precision bf16 or fp32")
    import transformers
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, local_files_only=True, **kwargs)
            # transformers 5 dropped the attribute (absolute positions are the only kind BertModel has);
            # CTranslate2's BERT loader still checks it.
            if getattr(model.config, "position_embedding_type", None) is None:
                model.config.position_embedding_type = "absolute"
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return super().load_tokenizer(tokenizer_class, model_name_or_path, local_files_only=True, **kwargs)

    tmp = folder / f".{INT8_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # e5 has no pooler: BertModel warns that it made one up
    try:
        _Converter(str(folder)).convert(str(tmp), quantization="int8", force=True)
        (tmp / _STAMP).write_text(json.dumps({"weights": _weights_digest(folder), "quantization": "int8"}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        transformers.logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _all_zero_matrices(folder: Path) -> list[str]:
    """Names of the 2-D weights of ``folder/model.safetensors`` that are all zero (a pruned or hand-made
    model; never a trained one)."""
    path = folder / "model.safetensors"
    if not path.exists():
        return []
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if name.endswith(".weight") and len(f.get_slice(name).get_shape()) == 2:
                if not f.get_tensor(name).any():
                    out.append(name)
    return out


class Int8Encoder:
    """An exported folder's encoder run in int8 by CTranslate2 (its ``int8/`` sub-folder).

    ``embed(token_ids)`` -> unit-length float32 (B, D) for a batch of token id lists (special tokens and
    input prefix included, as ``labse_core.embed.encode`` tokenizes)."""

    def __init__(self, folder: str | os.PathLike[str], pooling: str, threads: int | None = None):
        if not has_int8(folder):
            raise PrecisionError(missing_int8_message(folder))
        ct2 = _ctranslate2()
        if "int8" not in ct2.get_supported_compute_types("cpu"):
            raise PrecisionError("precision int8: this CPU has no int8 matrix multiply CTranslate2 can use; "
                                 "use --precision fp32")
        import torch

        self.pooling = pooling
        self.folder = Path(folder)
        self.model = ct2.Encoder(str(int8_dir(folder)), device="cpu", compute_type="int8",
                                 intra_threads=threads or torch.get_num_threads(), inter_threads=1)

    def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        out = self.model.forward_batch(token_ids)
        if self.pooling == "mean":
            h = np.asarray(out.last_hidden_state, dtype=np.float32)  # (B, T, D)
            lengths = np.fromiter((len(x) for x in token_ids), dtype=np.int64, count=len(token_ids))
            keep = (np.arange(h.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
            emb = (h * keep).sum(axis=1) / lengths[:, None]
        else:
            emb = np.asarray(out.pooler_output, dtype=np.float32)  # tanh(W h_[CLS] + b)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
