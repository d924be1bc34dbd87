"""A small exported model for evaluation and mining tests: a sentencepiece vocabulary trained on a few
gettext catalogs of this machine (never on Tatoeba: that is evaluation data) and a ``tiny`` random
encoder. Retrieval quality is beside the point: the tests compare our numbers with independent
computations on the same embeddings, and a random encoder with spread-out embeddings (std 0.2, see
tests/labse_core/test_export.py) gives non-trivial accuracies through shared subwords."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from labse_core.export import export_model
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.vocab import VocabConfig, export_hf_tokenizer, load_tokenizer, train_sentencepiece

LOCALES = ("de", "fr", "es", "ru", "ja")
DOMAINS = ("gtk20", "glib20", "coreutils")


def catalog_sentences(root: Path = Path("/usr/share/locale"), locales=LOCALES, domains=DOMAINS) -> list[str]:
    out: list[str] = []
    for loc in locales:
        for d in domains:
            p = root / loc / "LC_MESSAGES" / f"{d}.mo"
            if p.is_file():
                for row in catalog_pairs(read_mo(p)):
                    out += [row.src_text, row.tgt_text]
    return out


@torch.no_grad()
def bag_of_subwords(encoder: LabseEncoder, scale: float = 4.0) -> None:
    """Turn a random encoder into a bag of subword embeddings: uniform attention (zero queries and keys),
    values and outputs the identity in the first layer, every other sublayer adding zero; no positions.
    [CLS] then ends up as (LayerNorm of) [CLS] + scale x the mean of the sentence's pieces, so sentences
    that share pieces (names, numbers, cognates) are close: retrieval well above chance with no training."""
    bert = encoder.bert
    bert.embeddings.position_embeddings.weight.zero_()
    bert.embeddings.token_type_embeddings.weight.zero_()
    eye = torch.eye(encoder.cfg.hidden_size)
    for i, layer in enumerate(bert.encoder.layer):
        att = layer.attention
        for lin in (att.self.query, att.self.key, att.self.value, att.output.dense, layer.output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
        if i == 0:
            att.self.value.weight.copy_(eye * scale)
            att.output.dense.weight.copy_(eye)
    encoder.pooler_dense.weight.copy_(eye * 0.5)
    encoder.pooler_dense.bias.zero_()


def make_tiny_model(out: Path, languages: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "ja"), seed: int = 0) -> Path:
    sentences = catalog_sentences()
    sample = random.Random(0).sample(sentences, min(8000, len(sentences)))
    spm = train_sentencepiece(sample, out / "vocab", VocabConfig(vocab_size=2000, sample_size=len(sample)))
    tok_dir = export_hf_tokenizer(spm, out / "vocab" / "hf")
    torch.manual_seed(seed)
    encoder = LabseEncoder(preset("tiny", vocab_size=len(load_tokenizer(tok_dir)), initializer_range=0.2)).eval()
    bag_of_subwords(encoder)
    return export_model(encoder, tok_dir, out / "model", model_card={"name": "eval-test-tiny", "languages": list(languages)})


def sentence_messages(lang: str = "de", max_words: int = 10_000) -> list[tuple[str, str]]:
    """(English, translation) catalog messages of the base domains that read as one groff-safe sentence:
    5 to ``max_words`` English words, both ending in a full stop, no line break, backslash or leading dot."""
    from tests.conftest import named_catalogs

    pairs = []
    for mo in named_catalogs(lang):
        for p in catalog_pairs(read_mo(mo)):
            en, xx = p.src_text.strip(), p.tgt_text.strip()
            if "\n" in en + xx or en.startswith((".", "'")) or xx.startswith((".", "'")) or "\\" in en + xx:
                continue
            if 5 <= len(en.split()) <= max_words and en.endswith(".") and xx.endswith("."):
                pairs.append((en, xx))
    return list(dict.fromkeys(pairs))
