"""Export a LabseEncoder as one self-contained model folder that three libraries load offline.

The same files serve as

* a Hugging Face BERT checkpoint. LaBSE's pooler (dense + tanh over [CLS]) is saved as BertModel's
  own ``pooler``: ``transformers.models.bert.BertPooler`` computes exactly ``tanh(W h_[CLS] + b)``, so

      embedding = F.normalize(AutoModel.from_pretrained(dir)(**batch).pooler_output, dim=-1)

  A mean-pooling encoder (``cfg.pooling == "mean"``, e.g. the imported multilingual-e5) has no
  pooler: embedding = normalize(masked mean of ``last_hidden_state``), of ``input_prefix + text``;
* a sentence-transformers model, Transformer -> Pooling(cls) -> Dense(D->D, tanh) -> Normalize
  (the pooler weights are stored a second time in ``2_Dense``; D*D floats, 2.4 MB for LaBSE), or
  Transformer -> Pooling(mean) -> Normalize, with the input prefix as the default prompt
  (``config_sentence_transformers.json``: ``prompts`` + ``default_prompt_name``), so that
  ``SentenceTransformer(dir).encode(texts)`` adds it;
* a labse_core model: ``load_encoder(dir) -> (LabseEncoder, tokenizer)``; pooling and input prefix
  come back from ``labse_export.json`` (``encoder_config``).

Folder layout (``export_model`` writes all of it)::

    <out_dir>/
      config.json                   BertConfig (architectures: BertModel)
      model.safetensors             BERT weights + pooler.dense (= LabseEncoder.pooler_dense)
      tokenizer.json                fast tokenizer (labse_core.vocab export)
      tokenizer_config.json         model_max_length = max_seq_length
      special_tokens_map.json
      modules.json                  sentence-transformers pipeline
      sentence_bert_config.json     its Transformer module (root folder)
      config_sentence_transformers.json
      1_Pooling/config.json         pooling_mode: cls (mean)
      2_Dense/config.json           D -> D, torch.nn.Tanh              (cls pooling only)
      2_Dense/model.safetensors     linear.weight, linear.bias         (cls pooling only)
      3_Normalize/config.json       (2_Normalize with mean pooling)
      labse_export.json             our metadata (EXPORT_FORMAT_VERSION, dims, versions, model card)
      README.md                     model card: data, settings, metrics, how to load, license

The folder is written under a temporary name beside ``out_dir`` and renamed into place when complete:
a crash or an exception mid-export never leaves a half folder under the final name.

Run:

    from labse_core.export import export_model, load_encoder
    export_model(encoder, "vocab/hf", "checkpoints/export/labse-tiny",
                 model_card={"data": "gettext catalogs, 26 locales", "metrics": {"tatoeba/acc": 0.91}})
    encoder, tokenizer = load_encoder("checkpoints/export/labse-tiny")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labse_core.model.encoder import EncoderConfig, LabseEncoder
from labse_core.packages import package_version
from storage.io import atomic_dir

log = logging.getLogger(__name__)

EXPORT_FORMAT_VERSION = 1
"""Version of the folder layout above; ``load_encoder`` refuses a newer one."""
METADATA_FILENAME = "labse_export.json"
README_FILENAME = "README.md"
PROMPT_NAME = "query"
"""Name of the sentence-transformers prompt that holds ``EncoderConfig.input_prefix`` (e5's "query: ")."""
POOLING_DESCRIPTIONS = {
    "cls": "cls -> dense -> tanh -> l2-normalize",
    "mean": "masked mean over tokens -> l2-normalize",
}
# Written by transformers 5 into tokenizer_config.json when a tokenizer was loaded from a local folder;
# they describe how *we* loaded it, not the tokenizer, and must not travel with the model.
_LOAD_TIME_TOKENIZER_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash")
# The class name every transformers release (4.x: PreTrainedTokenizerFast, 5.x: alias of
# TokenizersBackend) resolves to a tokenizer.json-backed tokenizer; 5.x writes "TokenizersBackend",
# which transformers 4 does not know.
_PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


@dataclass(frozen=True)
class ModelCard:
    """What README.md says about the model beyond its geometry. Every field is optional."""

    name: str = "LaBSE-style sentence encoder"
    """Title of the model card."""
    description: str = ""
    """A paragraph on what the model is for."""
    languages: tuple[str, ...] = ()
    """Language codes the model was trained on (ISO 639, as in the corpus partitions)."""
    data: str | Mapping[str, Any] | list[str] = ""
    """Training data: free text, a list of sources, or a mapping source -> size/description."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Training settings (batch size, margin, steps, ...), rendered as a table."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """Evaluation metrics, name -> value (e.g. ``tatoeba/acc@1``), rendered as a table."""
    license: str | None = None
    """License of the weights (SPDX id, e.g. ``apache-2.0``). None: not declared (``other``)."""
    base_model: str | None = None
    """What training started from (a checkpoint path or hub id), if anything."""
    mlflow_run_id: str | None = None
    """The MLflow run that produced the model, for lineage."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else the caller passed; rendered as a table under "Other"."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ModelCard:
        """Known keys become fields; unknown keys are kept under ``extra`` rather than dropped."""
        if d is None:
            return cls()
        if isinstance(d, ModelCard):
            return d
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {**dict(kwargs.pop("extra", {}) or {}), **{k: v for k, v in d.items() if k not in known}}
        if "languages" in kwargs:
            langs = kwargs["languages"]
            kwargs["languages"] = (langs,) if isinstance(langs, str) else tuple(langs)
        return cls(**kwargs, extra=extra)


# ---------------------------------------------------------------------------------------------------
# Export


def export_model(
    encoder: LabseEncoder,
    tokenizer_dir_or_obj: Any,
    out_dir: str | os.PathLike[str],
    *,
    model_card: ModelCard | Mapping[str, Any] | None = None,
    max_seq_length: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the self-contained model folder described in this module's docstring; returns its path.

    ``tokenizer_dir_or_obj``: a folder written by ``labse_core.vocab.export_hf_tokenizer`` or an
    already loaded HF tokenizer. ``max_seq_length``: longest input in tokens, saved as the
    tokenizer's ``model_max_length`` (what AutoTokenizer truncates to and what sentence-transformers
    reads); default the tokenizer's own limit capped at the encoder's positions (a ``tiny`` encoder
    has 128 positions while the tokenizer says 512). ``overwrite``: replace an existing folder (it is
    renamed aside only once the new one is complete and deleted after the swap: a reader may find
    no folder for an instant, never a mixed one); otherwise an existing ``out_dir`` is an error.
    """
    out = Path(out_dir).absolute()
    tokenizer = _as_tokenizer(tokenizer_dir_or_obj)
    cfg = encoder.cfg
    card = ModelCard.from_dict(model_card)
    max_len = _max_seq_length(tokenizer, cfg, max_seq_length)
    _check_tokenizer(tokenizer, cfg)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")

    with atomic_dir(out) as tmp:  # storage.io: fsync, rename into place, an older folder replaced
        _write_transformers_files(tmp, encoder, tokenizer, max_len)
        _write_sentence_transformers_files(tmp, encoder)
        meta = export_metadata(cfg, tokenizer, max_len, card)
        (tmp / METADATA_FILENAME).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        (tmp / README_FILENAME).write_text(render_model_card(card, meta, out.name), encoding="utf-8")
    log.info("exported %s (dim %d, max_seq_length %d)", out, cfg.hidden_size, max_len)
    return out


def _as_tokenizer(tokenizer_dir_or_obj: Any):
    if isinstance(tokenizer_dir_or_obj, (str, os.PathLike)):
        from labse_core.vocab import load_tokenizer

        return load_tokenizer(tokenizer_dir_or_obj)
    if not hasattr(tokenizer_dir_or_obj, "save_pretrained"):
        raise TypeError(f"expected a tokenizer folder or a HF tokenizer, got {type(tokenizer_dir_or_obj)!r}")
    return tokenizer_dir_or_obj


def default_max_length(cfg: EncoderConfig, tokenizer) -> int:
    """The tokenizer's ``model_max_length`` capped at the encoder's positions (HF's "no limit" is 1e30)."""
    positions = cfg.max_position_embeddings
    return min(int(getattr(tokenizer, "model_max_length", None) or positions), positions)


def _max_seq_length(tokenizer, cfg: EncoderConfig, requested: int | None) -> int:
    positions = cfg.max_position_embeddings
    if requested is None:
        return default_max_length(cfg, tokenizer)
    if not 2 <= requested <= positions:
        raise ValueError(
            f"max_seq_length must be in [2, {positions}] (the encoder's positions), got {requested}"
        )
    return requested


_SPARE_ROWS_SEEN: set[tuple[int, int]] = set()
"""(tokenizer ids, encoder rows) already reported: a pipeline exports the same model many times."""


def _check_tokenizer(tokenizer, cfg: EncoderConfig) -> None:
    n = len(tokenizer)
    if n > cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {n} ids but the encoder's embedding table has {cfg.vocab_size} rows: "
            "they were not built for each other"
        )
    if n < cfg.vocab_size and (n, cfg.vocab_size) not in _SPARE_ROWS_SEEN:
        _SPARE_ROWS_SEEN.add((n, cfg.vocab_size))
        log.warning(
            "tokenizer has %d ids, the encoder %d rows: the last rows are never used", n, cfg.vocab_size
        )
    if tokenizer.pad_token_id != cfg.pad_token_id:
        raise ValueError(f"tokenizer pad id {tokenizer.pad_token_id} != encoder pad id {cfg.pad_token_id}")
    if cfg.pooling == "cls" and tokenizer.cls_token_id is None:
        raise ValueError("tokenizer has no [CLS] token; LaBSE pools the [CLS] state")


def _write_transformers_files(tmp: Path, encoder: LabseEncoder, tokenizer, max_len: int) -> None:
    """config.json + model.safetensors (BertModel, with pooler for cls pooling) + tokenizer files."""
    # encoder.bert has no pooler of its own (LabseEncoder owns pooler_dense); BertModel's pooler is
    # `pooler.dense` + tanh, so saving pooler_dense under that name makes pooler_output our pooling.
    # Passing the state dict avoids a second copy of the model (1.9 GB for LaBSE).
    state = {k: v.detach() for k, v in encoder.bert.state_dict().items()}
    if encoder.pooler_dense is not None:
        state["pooler.dense.weight"] = encoder.pooler_dense.weight.detach()
        state["pooler.dense.bias"] = encoder.pooler_dense.bias.detach()
    encoder.bert.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    if not (tmp / "model.safetensors").exists():
        raise RuntimeError(
            f"transformers wrote {sorted(p.name for p in tmp.iterdir())}, not model.safetensors"
        )

    tokenizer.save_pretrained(tmp)
    tok_cfg_path = tmp / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    for key in _LOAD_TIME_TOKENIZER_KEYS:
        tok_cfg.pop(key, None)
    tok_cfg["model_max_length"] = max_len
    tok_cfg["tokenizer_class"] = _PORTABLE_TOKENIZER_CLASS
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if not (tmp / "special_tokens_map.json").exists():  # transformers 5 no longer writes it
        specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def _write_sentence_transformers_files(tmp: Path, encoder: LabseEncoder) -> None:
    """modules.json, the root Transformer config and the Pooling / Dense / Normalize modules.

    The three small modules are written by sentence-transformers' own classes, so their config
    format is the installed version's (6.x: ``embedding_dimension`` + ``pooling_mode``). The root
    Transformer config is written by hand: building that module would load the BERT weights again.
    """
    import sentence_transformers
    import transformers
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    d = encoder.cfg.hidden_size
    modules: list[tuple[str, type, nn.Module | None]] = [
        ("", Transformer, None),  # saved in the root folder: the files written above
        ("1_Pooling", Pooling, Pooling(d, pooling_mode=encoder.cfg.pooling)),
    ]
    if encoder.cfg.pooling == "cls":
        dense = Dense(
            d,
            d,
            bias=True,
            activation_function=nn.Tanh(),
            init_weight=encoder.pooler_dense.weight.detach().cpu().float().clone(),
            init_bias=encoder.pooler_dense.bias.detach().cpu().float().clone(),
        )
        modules.append(("2_Dense", Dense, dense))
    modules.append((f"{len(modules)}_Normalize", Normalize, Normalize()))
    entries = []
    for idx, (path, cls, module) in enumerate(modules):
        if module is not None:
            (tmp / path).mkdir()
            module.save(str(tmp / path), safe_serialization=True)
        entries.append(
            {"idx": idx, "name": str(idx), "path": path, "type": f"{cls.__module__}.{cls.__name__}"}
        )
    (tmp / "modules.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")

    # What Transformer.save_config writes for a text-only feature extractor in sentence-transformers 6.x;
    # max_seq_length is not here: 6.x reads it from tokenizer_config.json's model_max_length.
    sbert_config = {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    }
    (tmp / "sentence_bert_config.json").write_text(
        json.dumps(sbert_config, indent=4) + "\n", encoding="utf-8"
    )
    st_config = {
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "model_type": "SentenceTransformer",
        # The input prefix as the default prompt: SentenceTransformer.encode prepends it unless told
        # otherwise (prompt_name= / prompt=), as labse_core.embed.encode does.
        "prompts": {PROMPT_NAME: encoder.cfg.input_prefix} if encoder.cfg.input_prefix else {},
        "default_prompt_name": PROMPT_NAME if encoder.cfg.input_prefix else None,
        "similarity_fn_name": "cosine",
    }
    (tmp / "config_sentence_transformers.json").write_text(
        json.dumps(st_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def export_metadata(cfg: EncoderConfig, tokenizer, max_seq_length: int, card: ModelCard) -> dict[str, Any]:
    """The content of labse_export.json."""
    return {
        "format": "labse_export",
        "format_version": EXPORT_FORMAT_VERSION,
        "embedding_dim": cfg.hidden_size,
        "max_seq_length": max_seq_length,
        "vocab_size": len(tokenizer),
        "pooling": POOLING_DESCRIPTIONS[cfg.pooling],
        "input_prefix": cfg.input_prefix,
        "normalized": True,
        "encoder_config": asdict(cfg),
        "special_tokens": dict(
            sorted(
                ((str(t), tokenizer.convert_tokens_to_ids(t)) for t in tokenizer.all_special_tokens),
                key=lambda kv: kv[1],
            )
        ),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            name: package_version(name)
            for name in ("labse-platform", "torch", "transformers", "tokenizers", "sentence-transformers")
        },
        "model_card": asdict(card),
    }


# ---------------------------------------------------------------------------------------------------
# Model card


def _cell(v: Any, metric: bool = False) -> str:
    if metric and isinstance(v, float):  # metrics to 4 decimals; settings exactly as given (lr 2e-05)
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(rows: Mapping[str, Any], header: tuple[str, str], metric: bool = False) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(v, metric)} |" for k, v in rows.items()]
    return "\n".join(lines)


def render_model_card(card: ModelCard, meta: Mapping[str, Any], folder_name: str) -> str:
    """README.md: Hugging Face front matter, then data, settings, metrics, usage and license."""
    cfg = meta["encoder_config"]
    license_id = card.license or "other"
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front += [
        f"- {t}" for t in ("sentence-transformers", "feature-extraction", "sentence-similarity", "labse")
    ]
    if card.languages:
        front += ["language:"] + [f"- {json.dumps(lang)}" for lang in card.languages]
    front += [f"license: {json.dumps(license_id)}"]
    if card.base_model:
        front += [f"base_model: {json.dumps(card.base_model)}"]
    front += ["---", ""]

    mean = cfg.get("pooling", "cls") == "mean"
    prefix = cfg.get("input_prefix", "")
    geometry = {
        "architecture": "BERT encoder + masked mean pooling + L2 normalization"
        if mean
        else "BERT encoder + [CLS] pooler (dense + tanh) + L2 normalization (LaBSE)",
        "layers": cfg["num_layers"],
        "hidden size / embedding dim": meta["embedding_dim"],
        "attention heads": cfg["num_heads"],
        "feed-forward size": cfg["intermediate_size"],
        "vocabulary": meta["vocab_size"],
        "max_seq_length (tokens)": meta["max_seq_length"],
        "similarity": "cosine (= dot product: embeddings are unit length)",
    }
    if prefix:
        geometry["input prefix"] = json.dumps(prefix)
    body = [f"# {card.name}", ""]
    if card.description:
        body += [card.description, ""]
    body += [
        "A language-agnostic sentence encoder in the style of LaBSE (Feng et al. 2022, "
        "*Language-agnostic BERT Sentence Embedding*): translations of a sentence map to nearby "
        "unit vectors, so cosine similarity finds translations across languages.",
        "",
        "## Model",
        "",
        _table(geometry, ("", "")),
        "",
    ]
    if card.languages:
        body += ["## Languages", "", ", ".join(card.languages), ""]
    body += ["## Training data", ""]
    if isinstance(card.data, Mapping):
        body += [_table(card.data, ("source", "details")) if card.data else "Not recorded.", ""]
    elif isinstance(card.data, (list, tuple)):
        body += [f"- {item}" for item in card.data] + [""]
    else:
        body += [card.data or "Not recorded.", ""]
    body += [
        "## Training settings",
        "",
        _table(card.settings, ("setting", "value")) if card.settings else "Not recorded.",
        "",
    ]
    body += [
        "## Evaluation",
        "",
        _table(card.metrics, ("metric", "value"), metric=True)
        if card.metrics
        else "No metrics were recorded at export.",
        "",
    ]
    lineage = {k: v for k, v in (("base model", card.base_model), ("MLflow run", card.mlflow_run_id)) if v}
    if lineage:
        body += ["## Lineage", "", _table(lineage, ("", "")), ""]
    if card.extra:
        body += ["## Other", "", _table(card.extra, ("key", "value")), ""]

    path = f"path/to/{folder_name}"
    max_len = meta["max_seq_length"]
    if mean:
        hf_pooling = [
            "The sentence embedding is the masked mean of the last hidden states"
            + (f", of the input with the prefix {json.dumps(prefix)}:" if prefix else ":"),
            "",
            "```python",
            "import torch, torch.nn.functional as F",
            "from transformers import AutoModel, AutoTokenizer",
            "",
            f'tok = AutoTokenizer.from_pretrained("{path}")',
            f'model = AutoModel.from_pretrained("{path}").eval()  # its pooler is unused (and random)',
            f"texts = [{json.dumps(prefix)} + t for t in ['Hello world', 'Hallo Welt']]",
            f'batch = tok(texts, padding=True, truncation=True, max_length={max_len}, return_tensors="pt")',
            "with torch.no_grad():",
            "    h = model(**batch).last_hidden_state",
            "    m = batch['attention_mask'].unsqueeze(-1).float()",
            "    emb = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)",
            "```",
        ]
    else:
        hf_pooling = [
            "LaBSE's pooling is BERT's pooler (dense + tanh over [CLS]); normalize its output:",
            "",
            "```python",
            "import torch, torch.nn.functional as F",
            "from transformers import AutoModel, AutoTokenizer",
            "",
            f'tok = AutoTokenizer.from_pretrained("{path}")',
            f'model = AutoModel.from_pretrained("{path}").eval()',
            f'batch = tok(["Hello world", "Hallo Welt"], padding=True, truncation=True, max_length={max_len},',
            '            return_tensors="pt")',
            "with torch.no_grad():",
            "    emb = F.normalize(model(**batch).pooler_output, dim=-1)",
            "```",
        ]
    body += [
        "## Usage",
        "",
        "All three give the same embeddings (checked by the platform's export tests to 1e-5).",
        "",
        "### sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{path}")',
        'emb = model.encode(["Hello world", "Hallo Welt"])  # (2, D), unit length',
        "print(emb @ emb.T)",
        "```",
        "",
        "### transformers",
        "",
        *hf_pooling,
        "",
        "### labse_core (this platform)",
        "",
        "```python",
        "from labse_core.embed import encode",
        "",
        f'emb = encode(["Hello world", "Hallo Welt"], "{path}")  # numpy (2, D) float32',
        "```",
        "",
        f"or from a shell: `python -m labse_core.embed --model {path} --input sentences.txt "
        "--output embeddings.parquet`.",
        "",
        "### MLflow",
        "",
        "```python",
        "from labse_core.mlflow_model import log_encoder, load_registered",
        "",
        f'uri = log_encoder("{path}", registered_model_name="labse")',
        'emb = load_registered("labse").predict(["Hello world", "Hallo Welt"])',
        "```",
        "",
        "## Limitations",
        "",
        f"Inputs longer than {max_len} tokens are truncated. Quality follows the training data: languages "
        "and domains absent from it are embedded poorly.",
        "",
        "## License",
        "",
    ]
    if card.license:
        body += [f"The weights are released under `{card.license}`."]
    else:
        body += ["No license was declared for these weights when they were exported (`license: other`)."]
    body += [
        "",
        "The training data keeps its own terms (gettext catalogs, for instance, carry the licenses of the "
        "projects they come from); check them before redistributing the model. The platform code that "
        "produced it is Apache-2.0.",
        "",
    ]
    return "\n".join(front + body)


# ---------------------------------------------------------------------------------------------------
# Load


def read_export_metadata(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """labse_export.json of an exported folder, or None for a folder this module did not write."""
    path = Path(model_dir) / METADATA_FILENAME
    if not path.exists():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
    version = meta.get("format_version")
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format {version!r} is newer than this labse_core reads ({EXPORT_FORMAT_VERSION})"
        )
    return meta


INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")


def set_inference_precision(model_dir: str | os.PathLike[str], precision: str | None) -> None:
    """Record the precision ``--precision auto`` runs for this folder (``inference_precision`` in
    labse_export.json; None removes it, so the hardware decides: ``labse_core.model.precision``)."""
    if precision is not None and precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference_precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    path = Path(model_dir) / METADATA_FILENAME
    meta = read_export_metadata(model_dir)
    if meta is None:
        raise ValueError(f"{model_dir} is not an exported model folder (no {METADATA_FILENAME})")
    meta.pop("inference_precision", None)
    if precision is not None:
        meta["inference_precision"] = precision
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def inference_precision(model_dir: str | os.PathLike[str]) -> str | None:
    """The folder's own precision for ``auto`` (``set_inference_precision``), or None."""
    value = (read_export_metadata(model_dir) or {}).get("inference_precision")
    if value is not None and value not in INFERENCE_PRECISIONS:
        raise ValueError(f"{Path(model_dir) / METADATA_FILENAME}: inference_precision {value!r}: expected one of "
                         f"{', '.join(INFERENCE_PRECISIONS)}")
    return value


def serving_precision(model_dir: str | os.PathLike[str]) -> str:
    """The precision the served pyfunc model runs in: ``LABSE_PRECISION`` in the serving process's
    environment, else the folder's ``inference_precision``, else fp32. Not the hardware rule of ``auto``:
    a served model answers every request with the same vector for the same sentence whatever the batch
    (bf16 differs by ~1e-3 between batch shapes) and keeps its memory flat (oneDNN keeps a bf16 kernel
    per matrix shape: +120 MiB over a few seconds of mixed batches, docs/inference.md)."""
    return os.environ.get("LABSE_PRECISION") or inference_precision(model_dir) or "fp32"


def load_encoder(model_dir: str | os.PathLike[str]) -> tuple[LabseEncoder, Any]:
    """(LabseEncoder in eval mode, HF tokenizer) from an exported folder; never touches the network.

    Any BERT folder with a pooler loads (e.g. a LaBSE checkpoint converted from TF Hub); a folder
    without pooler weights is an error here, where ``LabseEncoder.from_pretrained_bert`` would
    initialise a random pooler for training, unless its ``labse_export.json`` says the pooling is
    "mean" (no pooler). Pooling and input prefix come from ``labse_export.json``; without one the
    folder is taken as LaBSE-style ([CLS] pooling, no prefix).
    """
    from transformers import BertModel

    from labse_core.vocab import load_tokenizer

    model_dir = Path(model_dir)
    meta = read_export_metadata(model_dir)
    saved_cfg = (meta or {}).get("encoder_config", {})
    pooling = saved_cfg.get("pooling", "cls")  # exports before pooling was recorded are all [CLS]
    bert, info = BertModel.from_pretrained(
        str(model_dir), local_files_only=True, add_pooling_layer=pooling == "cls", output_loading_info=True
    )
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(f"{model_dir} is not a complete sentence encoder: weights missing for {missing}")
    encoder = LabseEncoder.from_bert(
        bert, pooling=pooling, input_prefix=saved_cfg.get("input_prefix", "")
    ).eval()
    tokenizer = load_tokenizer(model_dir)
    if meta is not None and meta["embedding_dim"] != encoder.cfg.hidden_size:
        raise ValueError(
            f"{model_dir}: labse_export.json says dim {meta['embedding_dim']}, weights have "
            f"{encoder.cfg.hidden_size}"
        )
    return encoder, tokenizer
