"""The LaBSE encoder: a BERT transformer plus a sentence pooling.

    pooling "cls"  (LaBSE):  sentence embedding = normalize(tanh(W h_[CLS] + b))
    pooling "mean" (e5):     sentence embedding = normalize(sum_t m_t h_t / sum_t m_t)   m = attention mask

Feng et al. 2022 ("Language-agnostic BERT Sentence Embedding") use the [CLS] hidden state of the
last layer, passed through BERT's pooler (dense + tanh), and l2-normalize it so that the dot product
of two embeddings is their cosine. The same geometry is what sentence-transformers calls
CLS pooling -> Dense(tanh) -> Normalize, so `.bert` and `.pooler_dense` export 1:1 to it.

The transformer itself is `transformers.BertModel` built without its own pooler: we own the pooler
(`pooler_dense`) so that the pooling is visible here and not hidden behind `pooler_output`.

Mean pooling is what multilingual-e5 (and most sentence-transformers models) use; it has no pooler
weights (`pooler_dense` is None). Such models also expect an input prefix (e5: ``"query: "``), kept in
`EncoderConfig.input_prefix` so that every path that embeds text (encode, fine-tuning, export) uses it.

Sizes are named presets (`tiny`, `small`, `base`), plain functions returning an `EncoderConfig`;
`base` is the LaBSE geometry (BERT-base: 12 layers, 768 hidden, 12 heads, 3072 FFN, 501,153 vocab).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

log = logging.getLogger(__name__)

LABSE_VOCAB_SIZE = 501_153
"""LaBSE's wordpiece vocabulary (Feng et al., Sec. 3.1: 501,153 tokens over 109 languages)."""


POOLINGS = ("cls", "mean")
"""Sentence poolings: "cls" = LaBSE ([CLS] -> dense + tanh), "mean" = masked mean of the last layer (e5)."""


@dataclass(frozen=True)
class EncoderConfig:
    """Geometry of the BERT transformer, its pooling and input prefix. Defaults are LaBSE (BERT-base)."""

    vocab_size: int = LABSE_VOCAB_SIZE
    """Number of wordpiece ids; must equal the tokenizer's vocabulary size."""
    hidden_size: int = 768
    """Width d of every layer; also the sentence embedding size (LaBSE: 768)."""
    num_layers: int = 12
    """Transformer layers (LaBSE: 12)."""
    num_heads: int = 12
    """Attention heads per layer; hidden_size must be divisible by it (LaBSE: 12)."""
    intermediate_size: int = 3072
    """Width of the feed-forward block (LaBSE: 3072 = 4 d)."""
    max_position_embeddings: int = 512
    """Learned absolute positions; the longest input the model accepts (BERT/LaBSE: 512)."""
    type_vocab_size: int = 2
    """Segment ids: 2 so that TLM can mark source (0) and target (1) of a translation pair."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings, attention output and FFN output (BERT: 0.1)."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities (BERT: 0.1)."""
    hidden_act: str = "gelu"
    """FFN activation (BERT: exact gelu)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT: 1e-12)."""
    initializer_range: float = 0.02
    """Std of the truncated-normal-like init of all weights (BERT: 0.02)."""
    pad_token_id: int = 0
    """Id of [PAD]; its embedding row is zero-initialised (BERT wordpiece: 0; XLM-R / e5: 1)."""
    pooling: str = "cls"
    """Sentence pooling, one of POOLINGS: "cls" (LaBSE: [CLS] -> dense + tanh) or "mean" (masked mean
    over all tokens, specials included, as multilingual-e5). Both are followed by L2 normalization."""
    input_prefix: str = ""
    """Text prepended to every sentence before tokenization (e5: "query: "); "" for LaBSE. The model
    was trained with it, so encode, fine-tuning and every export loader must add it too."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# ---------------------------------------------------------------------------------------------------
# Presets: named functions, so a recipe is a line of Python and not a copy of a config file.


def tiny(vocab_size: int = LABSE_VOCAB_SIZE) -> EncoderConfig:
    """CPU demos and tests: 2 layers, 128 hidden, 2 heads, 512 FFN, 128 positions.

    Pass your tokenizer's vocab_size: with LaBSE's 501k vocabulary the embedding table alone would
    be 64M parameters, ~150x the rest of this model.
    """
    return EncoderConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        intermediate_size=512,
        max_position_embeddings=128,
    )


def small(vocab_size: int = LABSE_VOCAB_SIZE) -> EncoderConfig:
    """Single-GPU experiments: 4 layers, 256 hidden, 4 heads, 1024 FFN."""
    return EncoderConfig(
        vocab_size=vocab_size, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024
    )


def base(vocab_size: int = LABSE_VOCAB_SIZE) -> EncoderConfig:
    """LaBSE: BERT-base geometry, 12 layers, 768 hidden, 12 heads, 3072 FFN."""
    return EncoderConfig(
        vocab_size=vocab_size, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
    )


PRESETS: dict[str, Callable[..., EncoderConfig]] = {"tiny": tiny, "small": small, "base": base}


def preset(name: str, vocab_size: int = LABSE_VOCAB_SIZE, **overrides) -> EncoderConfig:
    """The config of a named preset, e.g. `preset("tiny", vocab_size=8000, hidden_dropout_prob=0.0)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name](vocab_size=vocab_size), **overrides)


# ---------------------------------------------------------------------------------------------------
# Conversion to and from Hugging Face's BertConfig.


def to_bert_config(cfg: EncoderConfig) -> BertConfig:
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=cfg.pad_token_id,
    )


def from_bert_config(bc: BertConfig, pooling: str = "cls", input_prefix: str = "") -> EncoderConfig:
    """The geometry of a BertConfig; pooling and prefix are not in it, the caller knows them."""
    return EncoderConfig(
        vocab_size=bc.vocab_size,
        hidden_size=bc.hidden_size,
        num_layers=bc.num_hidden_layers,
        num_heads=bc.num_attention_heads,
        intermediate_size=bc.intermediate_size,
        max_position_embeddings=bc.max_position_embeddings,
        type_vocab_size=bc.type_vocab_size,
        hidden_dropout_prob=bc.hidden_dropout_prob,
        attention_probs_dropout_prob=bc.attention_probs_dropout_prob,
        hidden_act=bc.hidden_act,
        layer_norm_eps=bc.layer_norm_eps,
        initializer_range=bc.initializer_range,
        pad_token_id=bc.pad_token_id if bc.pad_token_id is not None else 0,
        pooling=pooling,
        input_prefix=input_prefix,
    )


# ---------------------------------------------------------------------------------------------------
# The model.


def _fresh_pooler(d: int, std: float) -> nn.Linear:
    # The init BertModel.post_init gives its own pooler.
    dense = nn.Linear(d, d)
    nn.init.normal_(dense.weight, std=std)
    nn.init.zeros_(dense.bias)
    return dense


class LabseEncoder(nn.Module):
    """BERT + pooling (LaBSE: [CLS] -> dense + tanh; e5: masked mean) -> l2-normalize.

    Build a fresh model with `LabseEncoder(cfg)`, wrap an existing `BertModel` with
    `LabseEncoder.from_bert(bert)`, or warm start from a checkpoint directory with
    `LabseEncoder.from_pretrained_bert(path)`. With ``cfg.pooling == "mean"`` there is no pooler
    (`pooler_dense` is None).
    """

    def __init__(
        self,
        cfg: EncoderConfig | None = None,
        *,
        bert: BertModel | None = None,
        pooler_dense: nn.Linear | None = None,
        pooling: str = "cls",
        input_prefix: str = "",
    ):
        """``pooling`` / ``input_prefix``: for a wrapped ``bert`` only (a fresh model takes them from cfg)."""
        super().__init__()
        if (cfg is None) == (bert is None):
            raise ValueError("pass exactly one of cfg (fresh model) or bert (wrap an existing BertModel)")
        if bert is None:
            bert = BertModel(to_bert_config(cfg), add_pooling_layer=False)
        else:
            cfg = from_bert_config(bert.config, pooling=pooling, input_prefix=input_prefix)
            if bert.pooler is not None:
                # Our pooler is pooler_dense; a second one inside BertModel would be dead weight that
                # DDP complains about (parameters that receive no gradient).
                if pooler_dense is None and cfg.pooling == "cls":
                    pooler_dense = bert.pooler.dense
                bert.pooler = None
        self.cfg = cfg
        self.bert = bert
        d = self.cfg.hidden_size
        if self.cfg.pooling == "mean":
            if pooler_dense is not None:
                raise ValueError("mean pooling has no pooler; do not pass pooler_dense")
        else:
            if pooler_dense is None:
                pooler_dense = _fresh_pooler(d, self.cfg.initializer_range)
            if tuple(pooler_dense.weight.shape) != (d, d):
                raise ValueError(f"pooler_dense must be ({d}, {d}), got {tuple(pooler_dense.weight.shape)}")
        self.pooler_dense = pooler_dense

    @classmethod
    def from_bert(
        cls,
        bert: BertModel,
        pooler_dense: nn.Linear | None = None,
        *,
        pooling: str = "cls",
        input_prefix: str = "",
    ) -> LabseEncoder:
        """Wrap an existing BertModel. With "cls" pooling its own pooler (if any) becomes `pooler_dense`;
        with "mean" pooling a pooler it may carry is dropped."""
        return cls(bert=bert, pooler_dense=pooler_dense, pooling=pooling, input_prefix=input_prefix)

    @classmethod
    def from_pretrained_bert(cls, path: str | Path) -> LabseEncoder:
        """Warm start from a Hugging Face BERT checkpoint directory (no network: local_files_only).

        The checkpoint's pooler (`pooler.dense`), if it has one, becomes `pooler_dense`: LaBSE's pooling
        is exactly BERT's pooler followed by normalization. Checkpoints saved without a pooler (e.g. an
        MLM-only pretraining run, or `BertModel(add_pooling_layer=False)`) are fine: the pooler is then
        freshly initialised (std `initializer_range`) and logged, not an error, because the dual-encoder
        stage trains it from scratch anyway. A folder whose ``labse_export.json`` records mean
        pooling (an imported e5) keeps it, and its input prefix: there is no pooler to initialise.
        """
        saved = _saved_pooling(Path(path))
        if saved is not None and saved[0] == "mean":
            bert = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
            return cls(bert=bert, pooling="mean", input_prefix=saved[1])
        bert, info = BertModel.from_pretrained(
            str(path), local_files_only=True, add_pooling_layer=True, output_loading_info=True
        )
        missing = [k for k in info.get("missing_keys", []) if "pooler" in k]
        if missing:
            log.info(
                "checkpoint %s has no pooler weights (%s); pooler_dense is freshly initialised", path, missing
            )
            # Do not rely on what from_pretrained filled the missing tensors with.
            fresh = _fresh_pooler(bert.config.hidden_size, bert.config.initializer_range)
            return cls(bert=bert, pooler_dense=fresh)
        return cls(bert=bert)

    @classmethod
    def from_sentence_transformers(cls, path: str | Path) -> LabseEncoder:
        """Warm start from a sentence-transformers folder with LaBSE's pipeline, e.g. a local copy of
        the released ``sentence-transformers/LaBSE``: Transformer (BERT) -> Pooling (CLS) ->
        Dense (D -> D, tanh) -> Normalize. The Dense module's weights become `pooler_dense` (that is
        what sentence-transformers computes, whatever pooler the BERT folder may also hold), so the
        embeddings equal `SentenceTransformer(path).encode`. Any other pipeline (mean pooling, no
        tanh Dense, a non-BERT transformer) is a clear error: it is not this architecture.
        """
        import json

        path = Path(path)
        modules = json.loads((path / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds[:3] != ["Transformer", "Pooling", "Dense"] or kinds[3:] not in ([], ["Normalize"]):
            raise ValueError(
                f"{path}: sentence-transformers pipeline {kinds} is not LaBSE's "
                "(Transformer, Pooling, Dense, Normalize)"
            )
        transformer, pooling, dense = (path / modules[i].get("path", "") for i in range(3))
        pcfg = json.loads((pooling / "config.json").read_text())
        if "pooling_mode" in pcfg:  # sentence-transformers >= 6: one name
            cls_only = pcfg["pooling_mode"] in ("cls", ["cls"])
        else:  # older saves, the released LaBSE among them: one flag per mode
            flags = {k: v for k, v in pcfg.items() if k.startswith("pooling_mode_")}
            cls_only = bool(flags.pop("pooling_mode_cls_token", False)) and not any(flags.values())
        if not cls_only:
            raise ValueError(f"{pooling}: pooling is not [CLS]-only ({pcfg}); LaBSE pools the [CLS] state")
        dcfg = json.loads((dense / "config.json").read_text())
        act = str(dcfg.get("activation_function", ""))
        if not act.endswith("Tanh") or not dcfg.get("bias", True):
            raise ValueError(f"{dense}: Dense is {act} (bias={dcfg.get('bias', True)}), LaBSE's is tanh with bias")
        bert = BertModel.from_pretrained(str(transformer), local_files_only=True, add_pooling_layer=False)
        d = bert.config.hidden_size
        if (dcfg.get("in_features"), dcfg.get("out_features")) != (d, d):
            raise ValueError(f"{dense}: Dense is {dcfg.get('in_features')} -> {dcfg.get('out_features')}, need {d} -> {d}")
        state = _read_state(dense)
        pooler = nn.Linear(d, d)
        pooler.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
        return cls(bert=bert, pooler_dense=pooler)

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states, for token-level heads (MLM/TLM)."""
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        )
        return out.last_hidden_state  # (B, T, D)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit-norm sentence embeddings. input_ids, attention_mask: (B, T) -> (B, D).

        In training mode the transformer runs over the real tokens only, and with "cls" pooling its last
        layer only for the [CLS] rows the pooling reads (labse_core.model.unpadded): the same function,
        without the padding's and the unread rows' share of the work. Batches are right-padded, so
        [CLS] is each row's first real token."""
        if self.training:
            return self._train_forward(input_ids, attention_mask, token_type_ids, position_ids)
        h = self.token_states(input_ids, attention_mask, token_type_ids, position_ids)  # (B, T, D)
        return self.pool(h, attention_mask)  # (B, D)

    def _train_forward(self, input_ids, attention_mask, token_type_ids, position_ids) -> torch.Tensor:
        from labse_core.model.unpadded import unpadded_token_states

        B, T = input_ids.shape
        lengths = attention_mask.sum(dim=1)  # (B,)
        if self.cfg.pooling == "cls":
            first = lengths.cumsum(0) - lengths  # (B,) each row's [CLS] among the real tokens (row-major)
            cls, _ = unpadded_token_states(
                self.bert, input_ids, attention_mask, token_type_ids, position_ids, select=lambda keep: first
            )  # (B, D)
            return F.normalize(torch.tanh(self.pooler_dense(cls)), p=2, dim=-1)  # (B, D)
        h, keep = unpadded_token_states(self.bert, input_ids, attention_mask, token_type_ids, position_ids)  # (N, D)
        sums = h.new_zeros(B, h.shape[1]).index_add(0, keep // T, h)  # (B, D) sum over each row's tokens
        return F.normalize(sums / lengths.clamp_min(1).to(h.dtype)[:, None], p=2, dim=-1)  # (B, D)

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states (B, T, D) -> unit-norm sentence embeddings (B, D), per cfg.pooling."""
        if self.cfg.pooling == "mean":
            return F.normalize(mean_pool(h, attention_mask), p=2, dim=-1)  # (B, D)
        cls = h[:, 0]  # (B, D) [CLS] is always position 0, so right padding never touches it
        pooled = torch.tanh(self.pooler_dense(cls))  # (B, D)
        return F.normalize(pooled, p=2, dim=-1)  # (B, D)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence: (B, T, D), (B, T) -> (B, D). Padding contributes nothing; the
    specials (<s>, </s>) count as tokens, as in e5 and sentence-transformers' mean pooling."""
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # (B, D)


def _saved_pooling(folder: Path) -> tuple[str, str] | None:
    """(pooling, input_prefix) recorded in an exported folder's labse_export.json ("encoder_config")
    or a pretraining final/'s labse_encoder.json (the EncoderConfig), or None.

    Read here rather than through labse_core.export (which imports this module)."""
    import json

    for name, key in (("labse_export.json", "encoder_config"), ("labse_encoder.json", None)):
        path = folder / name
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            saved = saved.get(key, {}) if key else saved
            return saved.get("pooling", "cls"), saved.get("input_prefix", "")
    return None


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    """A module folder's weights: model.safetensors, else pytorch_model.bin (older saves)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def is_sentence_transformers_folder(path: str | Path) -> bool:
    return (Path(path) / "modules.json").is_file()


# ---------------------------------------------------------------------------------------------------
# Size and cost, for logging and MFU.


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in a module (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_params(cfg: EncoderConfig) -> int:
    """Parameters of one transformer layer (weights, biases and the two LayerNorms)."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    attention = 4 * (d * d + d)  # Q, K, V, output projection
    ffn = d * ff + ff + ff * d + d
    layer_norms = 2 * 2 * d
    return attention + ffn + layer_norms


def embedding_params(cfg: EncoderConfig) -> int:
    """Word, position and segment embedding tables plus the embedding LayerNorm."""
    d = cfg.hidden_size
    return (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d


def non_embedding_params(cfg: EncoderConfig) -> int:
    """Transformer layers plus the pooler: the parameters that do matrix multiplies."""
    d = cfg.hidden_size
    return cfg.num_layers * layer_params(cfg) + d * d + d


def flops_per_token(cfg: EncoderConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per input token, for MFU.

        flops/token = 6 N + 12 L d T

    the estimate of Kaplan et al. 2020 / PaLM (Chowdhery et al. 2022, App. B) that nanoGPT uses:
      * 6 N: every weight of the L transformer layers does one multiply-add (2 FLOPs) per token in the
        forward pass and two in the backward pass (grad w.r.t. input and w.r.t. weight), N = L *
        layer_params. Embedding lookups are not matmuls and the pooler runs once per sentence, not per
        token, so neither is in N.
      * 12 L d T: attention scores Q K^T and the weighted sum A V are 2 T d FLOPs each per token per
        layer in the forward pass (4 T d), times 3 for forward + backward. The encoder attends
        bidirectionally, so the full T x T is counted (no causal halving).
    A dual-encoder step encodes source and target, so count tokens of both.
    """
    n = cfg.num_layers * layer_params(cfg)
    return 6 * n + 12 * cfg.num_layers * cfg.hidden_size * seq_len
