"""What every training run shares in its configuration, and the one way to build a config.

`RunConfig` holds the fields of both trainers that mean the same thing (optimizer, schedule shape,
stopping, systems, checkpoints, logging); `PretrainConfig` and `FinetuneConfig` add their model, data
and the values that differ (lr, warm-up, horizon). A config is built by `load_config`: a named preset
(a Python function returning a config), then a JSON file of fields, then `--set key=value`
overrides, where a dotted key reaches into a nested config (`--set loss.margin=0.2`).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from labse_core.data.batches import SpecialIds

if TYPE_CHECKING:
    from labse_core.model.encoder import LabseEncoder


# Settings of either stage's config that only make sense positive (checked once, in RunConfig).
_POSITIVE = ("lr", "batch_size", "max_steps", "max_len", "grad_accum", "streams_per_rank", "eval_batch_size",
             "eval_max_pairs", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "eps")


class RunConfig(BaseModel):
    """What every training run shares (pretraining and fine-tuning): optimizer, schedule shape,
    stopping, systems, checkpoints and logging. The stages' configs add their model, data and the
    values that differ (lr, warm-up, horizon)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    run_name: str = "run"
    """Checkpoints go to LABSE_HOME/checkpoints/<stage>/<run_name>/; the MLflow run's name."""

    # -- optimization ------------------------------------------------------------------------------
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (BERT: 0.9, 0.999)."""
    eps: float = 1e-6
    """AdamW epsilon (BERT: 1e-6)."""
    weight_decay: float = 0.01
    """Decoupled weight decay (BERT: 0.01); never on biases or LayerNorm weights."""
    decay: Literal["linear", "cosine"] = "linear"
    """Decay from lr to min_lr_ratio * lr between warmup_steps and max_steps (BERT: linear)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (BERT: 1.0); 0 disables."""

    # -- duration ----------------------------------------------------------------------------------
    time_budget_s: float | None = None
    """Stop cleanly (checkpoint, final output) when this many seconds of this invocation are spent."""
    stop_at_step: int | None = None
    """Stop cleanly after this step without changing the schedule (max_steps): cut a run into
    sessions, e.g. to fit a scheduler's wall-time limit; the next invocation resumes."""

    # -- systems -----------------------------------------------------------------------------------
    device: str | None = None
    """None: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    bf16: bool = True
    """bf16 autocast on CUDA and on CPUs that multiply bf16 in hardware (AMX / AVX512-BF16; ignored on
    other CPUs, where it is slow); fine-tuning's loss stays float32."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs; off by default, it costs minutes of compile on CPU)."""

    # -- checkpoints and logging -------------------------------------------------------------------
    checkpoint_every: int = 1000
    """Write step-N/ every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """Keep the newest this many step-N/ folders."""
    resume: bool = True
    """Continue from the newest step-N/ of this run_name if there is one. False: start over; the earlier
    run's step-N/ folders stay until this run writes its first checkpoint, which removes them."""
    log_every: int = 10
    """Steps between MLflow metric logs (rank 0)."""
    mlflow: bool = True
    """Log params and metrics to MLflow (rank 0 only)."""
    mlflow_parent_run_id: str | None = None
    """Log as a child of this MLflow run (the pipeline's parent run)."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    # -- data streams ------------------------------------------------------------------------------
    buffer_rows: int = 10_000
    """Shuffle/bucketing window of each data stream, in rows (bounded memory per stream)."""
    num_workers: int = 0
    """DataLoader worker processes per data stream (0: read in the training process)."""

    @model_validator(mode="after")
    def _positive(self) -> RunConfig:
        """Sizes and rates every stage reads must be > 0: `--set lr=-1` fails before any work starts,
        naming the setting (rather than deep inside the optimizer or the loop)."""
        for name in _POSITIVE:
            value = getattr(self, name, None)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (got {value})")
        for name in ("warmup_steps", "grad_clip", "min_lr_ratio", "weight_decay"):
            value = getattr(self, name, None)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 (got {value})")
        return self

    @field_validator("device")
    @classmethod
    def _torch_device(cls, v: str | None) -> str | None:
        """A misspelt device is a configuration error, not a traceback from inside the run."""
        if v is not None:
            import torch

            try:
                torch.device(v)
            except RuntimeError:
                raise ValueError(f"{v!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        return v


class EncoderSettings(BaseModel):
    """The encoder a run builds when it starts from scratch (both stages mix this in)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    encoder_preset: Literal["tiny", "small", "base"] = "base"
    """Encoder geometry of a random init (labse_core.model.encoder presets; `base` is LaBSE's
    BERT-base); a warm start's folder brings its own."""
    vocab_size: int = 501_153
    """Vocabulary of a random init; must equal the tokenizer's (LaBSE: 501,153)."""
    dropout: float = 0.1
    """Hidden and attention dropout (BERT: 0.1)."""
    special_ids: SpecialIds = SpecialIds()
    """[PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids of the vocabulary."""

    def random_encoder(self) -> LabseEncoder:
        """A freshly initialised encoder (from torch's global RNG: seed it first)."""
        from labse_core.model.encoder import LabseEncoder, preset

        return LabseEncoder(
            preset(
                self.encoder_preset,
                vocab_size=self.vocab_size,
                hidden_dropout_prob=self.dropout,
                attention_probs_dropout_prob=self.dropout,
                pad_token_id=self.special_ids.pad,
            )
        )


# Systems settings the presets of both stages share: a small CPU run, and GPU nodes.
CPU_RUN: dict[str, Any] = dict(run_name="tiny-cpu", bf16=False, buffer_rows=4096, checkpoint_every=100, log_every=10)
"""A run that learns something in a minute on 2 CPU cores (bf16 autocast is slow on CPU)."""
GPU_RUN: dict[str, Any] = dict(
    run_name="base-gpu", bf16=True, compile=True, num_workers=4, buffer_rows=50_000, log_every=50
)
"""GPU nodes: bf16 autocast, torch.compile, 4 loader workers per stream, a large shuffle window."""


# ---------------------------------------------------------------------------------------------------
# Loading: preset -> JSON file -> --set overrides

C = TypeVar("C", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be built; the message is one line naming the setting."""


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """`key=value` items -> a nested dict (`a.b=1` -> {"a": {"b": 1}}); values are parsed as JSON when
    they can be (numbers, booleans, null, lists), else kept as strings."""
    values: dict[str, Any] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a nested setting")
        node[leaf] = value
    return values


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested dicts are merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    cls: type[C],
    presets: Mapping[str, Callable[..., C]],
    preset_name: str | None = None,
    config: str | None = None,
    sets: list[str] = (),  # type: ignore[assignment]
) -> C:
    """Preset (or the class defaults), then a JSON file of fields, then `key=value` overrides. A bad
    setting raises ConfigError with a one-line message naming it."""
    values: dict[str, Any] = {}
    if config:
        try:
            values = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--config {config}: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--config {config}: expected a JSON object of settings")
    values = deep_merge(values, parse_sets(list(sets)))
    if preset_name is not None and preset_name not in presets:
        raise ConfigError(f"unknown preset {preset_name!r} (one of {', '.join(sorted(presets))})")
    try:
        base = presets[preset_name]() if preset_name else cls()
        return cls(**deep_merge(base.model_dump(), values))
    except ValidationError as e:
        raise ConfigError(one_line(e)) from None


def one_line(e: ValidationError) -> str:
    """A pydantic error as one line: `key: problem; key: problem`."""
    parts = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown setting (see --help for the valid keys)"
        elif err["type"] == "value_error":  # our validators' own words, without pydantic's prefix
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = err["msg"]
        parts.append(f"{key}: {msg}" if key else msg)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------
# --help: every valid key with its docstring


def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under a field) of a dataclass, from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:], strict=False):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def setting_docs(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(key, first sentence of its docstring) for every --set key of a config class, nested ones dotted."""
    out: list[tuple[str, str]] = []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        # pydantic's own docstring extraction finds nothing when the module runs as __main__
        # (`python -m`): fall back to reading the class sources along the MRO.
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, BaseModel) and klass is not BaseModel:
                docs |= attribute_docs(klass)
        items = [(name, f.annotation, f.description or docs.get(name, "")) for name, f in cls.model_fields.items()]
    elif is_dataclass(cls):
        docs = attribute_docs(cls)
        items = [(f.name, f.type, docs.get(f.name, "")) for f in fields(cls)]
    else:
        return out
    for name, ann, doc in items:
        nested = _nested_config(ann)
        if nested is not None and nested is not cls:
            out += setting_docs(nested, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", _first_sentence(doc)))
    return out


def _first_sentence(doc: str) -> str:
    text = " ".join(doc.split())
    m = re.search(r"[.;:] (?=[A-Z(])", text)
    return text[: m.start() + 1] if m else text


def _nested_config(ann: Any) -> type | None:
    if isinstance(ann, str):
        return None
    if isinstance(ann, type) and (issubclass(ann, BaseModel) or is_dataclass(ann)):
        return ann
    if get_origin(ann) is not None:
        found = [a for a in get_args(ann) if isinstance(a, type) and (issubclass(a, BaseModel) or is_dataclass(a))]
        return found[0] if len(found) == 1 else None
    return None


def settings_help(cls: type, aliases: Mapping[str, str] | None = None) -> str:
    """The --help epilog: every valid --set key with its docstring's first lines."""
    rows = setting_docs(cls)
    width = max(len(k) for k, _ in rows)
    lines = ["settings (--set KEY=VALUE; the same keys in a --config JSON file, nested ones as objects):"]
    for key, doc in rows:
        lines.append(f"  {key:<{width}}  {doc}")
    if aliases:
        lines.append("old keys still accepted: " + ", ".join(f"{a} -> {k}" for a, k in aliases.items()))
    return "\n".join(lines)
