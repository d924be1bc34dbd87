"""Which tokenizer a model and its training batches use: the one place both trainers ask.

Two vocabularies can meet in a training run. The lake's shards hold ids of the lake's sentencepiece
vocabulary (`labse vocab` writes its HF tokenizer to LABSE_HOME/lake/vocab/hf); a model folder given
as init_from may bring a tokenizer of its own (an exported model, the imported multilingual-e5, a local
copy of the released LaBSE). When the two differ, the shards' ids mean nothing to the model, and the
rows' text is tokenized with the model's tokenizer instead (PretrainConfig.retokenize,
FinetuneConfig.retokenize); each trainer's data module says what it refuses on top of that.

    own_tokenizer_dir(init_from)         init_from when it holds a tokenizer, else None
    lake_tokenizer_dir(layout, folder)   the tokenizer the shards were made with
    text_tokenizer(model, shards, flag)  the tokenizer to make ids from text with, or None: the shards' ids
    check_fits(tokenizer, vocab_size)    the ids fit the model's embedding table
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.layout import Layout

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
"""A folder with any of these holds a HF tokenizer."""


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def own_tokenizer_dir(init_from: str | Path | None) -> Path | None:
    """init_from, when it holds a tokenizer of its own (an imported or exported model), else None."""
    if init_from and has_tokenizer(init_from):
        return Path(init_from)
    return None


def lake_tokenizer_dir(layout: Layout, tokenizer_dir: str | Path | None = None) -> Path:
    """The tokenizer the shards' ids were made with: `tokenizer_dir`, else the lake's (LABSE_HOME/lake/vocab/hf)."""
    return Path(tokenizer_dir) if tokenizer_dir else layout.vocab / "hf"


def text_tokenizer(model_dir: Path | None, shards_dir: Path | None, retokenize: bool | None) -> Any | None:
    """The tokenizer to make ids from the rows' text with, or None to read the shards' ids.

    model_dir: the model's tokenizer (None: it has none); shards_dir: the tokenizer the shards' ids
    were made with (None: the caller vouches they are the model's ids). retokenize: True always (with
    the model's tokenizer), False never, None exactly when the two vocabularies differ (a shards folder
    without a tokenizer differs from any)."""
    from labse_core.vocab import load_tokenizer

    if retokenize is False or model_dir is None:
        return None
    if retokenize:
        log.info("retokenize: the texts are tokenized with %s", model_dir)
        return load_tokenizer(model_dir)
    if shards_dir is None or Path(model_dir) == Path(shards_dir):
        return None
    model_tok = load_tokenizer(model_dir)
    if has_tokenizer(shards_dir) and load_tokenizer(shards_dir).get_vocab() == model_tok.get_vocab():
        return None
    log.info("%s has its own vocabulary: the texts are tokenized with it", model_dir)
    return model_tok


def check_fits(tokenizer: Any | None, vocab_size: int, model: str) -> None:
    """The ids fed to the model must fit its embedding table: a clear error instead of an index error
    deep inside the embedding lookup. `tokenizer`: the one the ids come from (None: nothing to check)."""
    if tokenizer is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"the token ids come from a {len(tokenizer):,}-id vocabulary but the model ({model}) has "
            f"{vocab_size:,} embeddings: set vocab_size, or init_from a model built for this vocabulary"
        )
