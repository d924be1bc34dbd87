"""labse_core.model.tokenizers: which tokenizer a training run makes its ids with, decided once for both
trainers. Two small sentencepiece vocabularies stand for the lake's and a model's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labse_core.model.tokenizers import check_fits, lake_tokenizer_dir, own_tokenizer_dir, text_tokenizer
from labse_core.vocab import VocabConfig, export_hf_tokenizer, load_tokenizer, train_sentencepiece
from storage.layout import Layout


def _vocab(tmp: Path, words: str) -> Path:
    text = [f"{words} {i} {i * 7 % 13} {words[::-1]} {i % 5}" for i in range(300)]
    return export_hf_tokenizer(train_sentencepiece(text, tmp / "spm", VocabConfig(vocab_size=320)), tmp / "hf")


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory) -> dict[str, Path]:
    lake = _vocab(tmp_path_factory.mktemp("lake"), "open the file and save it")
    same = tmp_path_factory.mktemp("same") / "hf"
    shutil.copytree(lake, same)  # another folder, the same vocabulary
    other = _vocab(tmp_path_factory.mktemp("other"), "datei öffnen und speichern")
    empty = tmp_path_factory.mktemp("empty")  # a model folder without a tokenizer
    return {"lake": lake, "same": same, "other": other, "empty": empty}


def test_which_folder(vocabs, tmp_path):
    assert own_tokenizer_dir(vocabs["other"]) == vocabs["other"]
    assert own_tokenizer_dir(vocabs["empty"]) is None and own_tokenizer_dir(None) is None
    layout = Layout.from_env(tmp_path / "home")
    assert lake_tokenizer_dir(layout) == layout.vocab / "hf"
    assert lake_tokenizer_dir(layout, vocabs["other"]) == vocabs["other"]


def test_texts_are_tokenized_exactly_when_the_vocabularies_differ(vocabs):
    lake, same, other, empty = vocabs["lake"], vocabs["same"], vocabs["other"], vocabs["empty"]
    want = load_tokenizer(other).get_vocab()
    assert text_tokenizer(other, lake, None).get_vocab() == want  # another vocabulary
    assert text_tokenizer(other, empty, None).get_vocab() == want  # shards of an unknown one
    assert text_tokenizer(same, lake, None) is None  # the same vocabulary in another folder
    assert text_tokenizer(lake, lake, None) is None
    assert text_tokenizer(other, None, None) is None  # the caller vouches for the shards' ids
    assert text_tokenizer(None, lake, None) is None  # no model tokenizer
    # retokenize forces either way
    assert text_tokenizer(other, lake, False) is None
    assert text_tokenizer(lake, lake, True).get_vocab() == load_tokenizer(lake).get_vocab()


def test_ids_must_fit_the_embedding_table(vocabs):
    tok = load_tokenizer(vocabs["lake"])
    check_fits(tok, len(tok), "tiny")
    check_fits(None, 1, "tiny")
    with pytest.raises(ValueError, match=f"{len(tok)}-id vocabulary but the model \\(tiny\\) has 100 embeddings"):
        check_fits(tok, 100, "tiny")
