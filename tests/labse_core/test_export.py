"""Model export: one folder, four loaders, the same embeddings; encode() batching; MLflow pyfunc.

A tiny random encoder (no training: parity does not need a good model) with a sentencepiece
vocabulary trained on this machine's gettext catalogs is exported once per module; ~200 held-out
catalog strings in 20+ scripts, some longer than max_seq_length, are embedded by

    our encode() one sentence at a time           (the reference)
    transformers AutoModel -> pooler_output -> l2 normalize
    sentence_transformers.SentenceTransformer(dir).encode
    load_encoder(dir) + encode() with length-sorted batches
    mlflow.pyfunc.load_model(uri).predict

and every one must match the reference to 1e-5.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import unicodedata
import zlib
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from labse_core import export as export_mod
from labse_core.embed import embed_file, encode, main, read_lines
from labse_core.export import ModelCard, export_model, load_encoder
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.model.encoder import LabseEncoder, preset
from labse_core.vocab import VocabConfig, export_hf_tokenizer, load_tokenizer, train_sentencepiece
from storage.schemas import EMBEDDINGS_SCHEMA

LOCALES = (
    "de fr es pl tr vi ru uk el he ar fa hi bn ta th ja zh_CN zh_TW ko ka hy am km my si".split()
)  # Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Bengali, Tamil, Thai, CJK, Hangul,
#    Georgian, Armenian, Ethiopic, Khmer, Myanmar, Sinhala
DOMAINS = ("gtk20", "glib20", "gtk20-properties", "gdk-pixbuf", "at-spi2-core", "Linux-PAM", "coreutils")
VOCAB_SIZE = 3000
TRAIN_SENTENCES = 12_000  # sentencepiece on all ~200k catalog strings takes a minute on 2 cores
MAX_LEN = 128  # = tiny()'s positions, so also the exported max_seq_length
ATOL = 1e-5
METRICS = {"tatoeba/acc@1": 0.8731, "bucc/f1": 0.6042}

EXPECTED_FILES = {
    "README.md",
    "labse_export.json",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "2_Dense/config.json",
    "2_Dense/model.safetensors",
    "3_Normalize/config.json",
}


def _script(text: str) -> str | None:
    """First word of the Unicode name of the first letter ("CYRILLIC", "CJK", "HANGUL"...)."""
    letter = next((c for c in text if c.isalpha()), None)
    return unicodedata.name(letter, "?").split()[0] if letter else None


def _held_out(text: str) -> bool:
    return zlib.crc32(text.encode()) % 10 == 0


@pytest.fixture(scope="module")
def corpus(real_catalogs: Path) -> tuple[list[str], list[str]]:
    """(training sentences, ~200 held-out test sentences) from the gettext catalogs."""
    train: list[str] = []
    test_by_locale: dict[str, list[str]] = {}
    english: set[str] = set()
    for loc in LOCALES:
        for domain in DOMAINS:
            path = real_catalogs / loc / "LC_MESSAGES" / f"{domain}.mo"
            if not path.exists():
                continue
            for row in catalog_pairs(read_mo(path)):
                for text in (row.tgt_text, row.src_text):
                    if _held_out(text):
                        if text is row.tgt_text:
                            test_by_locale.setdefault(loc, []).append(text)
                        else:
                            english.add(text)
                    else:
                        train.append(text)
    test: list[str] = []
    for loc in LOCALES:  # a few per locale, short and long
        texts = sorted(set(test_by_locale.get(loc, [])), key=lambda t: (len(t), t))
        if texts:
            step = max(1, len(texts) // 7)
            test += texts[::step][:7]
    eng = sorted(english, key=lambda t: (len(t), t))
    test += eng[:: max(1, len(eng) // 15)][:15]
    # The longest held-out strings (coreutils --help paragraphs): past max_seq_length, so truncation
    # has to agree between the loaders too.
    longest = sorted({t for texts in test_by_locale.values() for t in texts}, key=lambda t: (-len(t), t))
    test += [t for t in longest if t not in test][:6]
    assert len(test) >= 150, len(test)
    return train, test


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    train, _ = corpus
    sample = random.Random(0).sample(train, min(TRAIN_SENTENCES, len(train)))
    out = tmp_path_factory.mktemp("vocab")
    spm_model = train_sentencepiece(sample, out, VocabConfig(vocab_size=VOCAB_SIZE, sample_size=len(sample)))
    return export_hf_tokenizer(spm_model, out / "hf")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two shared cores: with 2 intra-op threads a tiny forward pass waits for a busy core (~200 ms
    # instead of ~4 ms when other processes run), which alone would cost this module a minute.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> LabseEncoder:
    torch.manual_seed(0)
    # BERT's init (std 0.02) gives a random model whose [CLS] states are all alike (mean cosine
    # 0.9998 between unrelated sentences) and whose pooler stays in tanh's linear range: a loader
    # that mixed up rows or dropped the tanh would still agree to ~1e-4. std 0.2 spreads the
    # embeddings (mean cosine ~0.6) and drives the pooler into the nonlinearity.
    return LabseEncoder(preset("tiny", vocab_size=len(tokenizer), initializer_range=0.2)).eval()


@pytest.fixture(scope="module")
def model_dir(encoder, tokenizer_dir, tmp_path_factory) -> Path:
    card = {
        "name": "labse-test-tiny",
        "data": {"gettext catalogs": f"{len(LOCALES)} locales, {len(DOMAINS)} domains"},
        "settings": {"preset": "tiny", "vocab_size": VOCAB_SIZE, "margin": 0.3},
        "metrics": METRICS,
        "languages": ["de", "ru", "ja"],
        "git_commit": "abc123",  # not a ModelCard field: kept under "Other"
    }
    return export_model(
        encoder, tokenizer_dir, tmp_path_factory.mktemp("export") / "labse-tiny", model_card=card
    )


@pytest.fixture(scope="module")
def reference(corpus, encoder, tokenizer) -> np.ndarray:
    """One sentence at a time, arrival order, in-memory encoder: no batching, no sorting, no export."""
    _, test = corpus
    return encode(test, (encoder, tokenizer), batch_size=1, max_length=MAX_LEN, progress=False)


# ---------------------------------------------------------------------------------------------------
# The folder


def test_folder_layout_metadata_and_model_card(model_dir, tokenizer):
    files = {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES

    meta = json.loads((model_dir / "labse_export.json").read_text())
    assert meta["format_version"] == export_mod.EXPORT_FORMAT_VERSION
    assert (meta["embedding_dim"], meta["max_seq_length"], meta["vocab_size"]) == (
        128,
        MAX_LEN,
        len(tokenizer),
    )
    assert meta["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert meta["model_card"]["metrics"] == METRICS
    assert meta["model_card"]["extra"] == {"git_commit": "abc123"}
    assert meta["versions"]["transformers"] and meta["versions"]["sentence-transformers"]

    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["hidden_size"] == 128
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == MAX_LEN  # the tokenizer said 512; tiny has 128 positions
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "local_files_only" not in tok_cfg and "is_local" not in tok_cfg

    modules = json.loads((model_dir / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Dense", "Dense"),
        ("3_Normalize", "Normalize"),
    ]
    assert json.loads((model_dir / "1_Pooling/config.json").read_text())["pooling_mode"] == "cls"
    assert json.loads((model_dir / "2_Dense/config.json").read_text())["activation_function"].endswith("Tanh")

    readme = (model_dir / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: sentence-transformers\n")
    assert "# labse-test-tiny" in readme
    assert "| tatoeba/acc@1 | 0.8731 |" in readme and "| bucc/f1 | 0.6042 |" in readme
    assert (
        "| gettext catalogs |" in readme
        and "| margin | 0.3 |" in readme
        and "| git_commit | abc123 |" in readme
    )
    for how in (
        "SentenceTransformer(",
        "AutoModel.from_pretrained(",
        "pooler_output",
        "labse_core.embed",
        "load_registered(",
        "## License",
    ):
        assert how in readme


def test_model_card_from_dict_keeps_unknown_keys():
    card = ModelCard.from_dict({"metrics": {"a": 1.0}, "languages": "de", "steps": 10})
    assert card.metrics == {"a": 1.0} and card.languages == ("de",) and card.extra == {"steps": 10}


# ---------------------------------------------------------------------------------------------------
# Parity: four loaders, one embedding


def test_reference_is_not_degenerate(reference, corpus, tokenizer):
    _, test = corpus
    lengths = [len(ids) for ids in tokenizer(test)["input_ids"]]
    assert max(lengths) > MAX_LEN, "no test sentence exercises truncation"
    assert len({_script(s) for s in test} - {None}) >= 15  # Latin, Cyrillic, ..., Han, Hangul, Ethiopic
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    cos = reference @ reference.T
    assert cos[~np.eye(len(test), dtype=bool)].mean() < 0.8  # sentences are told apart


def test_transformers_automodel_pooler_output_matches(model_dir, corpus, reference):
    from transformers import AutoModel, AutoTokenizer

    _, test = corpus
    model, info = AutoModel.from_pretrained(str(model_dir), output_loading_info=True)
    # The pooler was saved, so transformers loads it instead of initialising a random one.
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model.eval()
    got, cls_only = [], []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            # truncation=True: to the tokenizer's model_max_length, which the export set to 128
            batch = tok(test[i : i + 32], padding=True, truncation=True, return_tensors="pt")
            out = model(**batch)
            got.append(F.normalize(out.pooler_output, dim=-1).numpy())
            cls_only.append(F.normalize(out.last_hidden_state[:, 0], dim=-1).numpy())
    np.testing.assert_allclose(np.concatenate(got), reference, atol=ATOL)
    # The comparison can fail: skipping the pooler is far off.
    assert np.abs(np.concatenate(cls_only) - reference).max() > 0.1


def test_sentence_transformers_matches(model_dir, corpus, reference):
    from sentence_transformers import SentenceTransformer

    _, test = corpus
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    assert st.max_seq_length == MAX_LEN
    assert st.get_embedding_dimension() == 128
    got = st.encode(test, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(got, reference, atol=ATOL)


def test_load_encoder_and_batched_encode_match(model_dir, corpus, reference, encoder):
    _, test = corpus
    loaded, tok = load_encoder(model_dir)
    assert not loaded.training
    for (name, p), (name0, p0) in zip(loaded.state_dict().items(), encoder.state_dict().items(), strict=True):
        assert name == name0 and torch.equal(p, p0), name
    got = encode(test, (loaded, tok), batch_size=16, max_length=MAX_LEN, progress=False)
    np.testing.assert_allclose(got, reference, atol=ATOL)
    from_dir = encode(test, model_dir, batch_size=64, progress=False)  # max_length: the folder's 128
    np.testing.assert_allclose(from_dir, reference, atol=ATOL)


def test_load_encoder_refuses_folder_without_pooler(encoder, tokenizer, tmp_path):
    encoder.bert.save_pretrained(tmp_path)  # LabseEncoder.bert has no pooler of its own
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pooler"):
        load_encoder(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Atomic export


def test_failed_export_leaves_no_folder(encoder, tokenizer_dir, tmp_path, monkeypatch):
    out = tmp_path / "models" / "m"

    def boom(*args, **kwargs):  # runs after weights, tokenizer and ST modules are on disk
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "render_model_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(encoder, tokenizer_dir, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary folder left behind either
    monkeypatch.undo()

    export_model(encoder, tokenizer_dir, out, model_card={"metrics": {"acc": 0.5}})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError):
        export_model(encoder, tokenizer_dir, out)

    monkeypatch.setattr(export_mod, "render_model_card", boom)
    with pytest.raises(RuntimeError):
        export_model(encoder, tokenizer_dir, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # old model intact
    assert [p.name for p in out.parent.iterdir()] == ["m"]
    monkeypatch.undo()

    export_model(encoder, tokenizer_dir, out, overwrite=True, model_card={"metrics": {"acc": 0.75}})
    assert "| acc | 0.7500 |" in (out / "README.md").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["m"]


# ---------------------------------------------------------------------------------------------------
# encode(): length-sorted batches, caller's order


def test_encode_preserves_order_and_equals_one_by_one(encoder, tokenizer, corpus):
    _, test = corpus
    rng = np.random.default_rng(0)
    sentences = [test[i] for i in rng.permutation(len(test))[:60]] + ["", " ", "x"]
    lengths = [len(ids) for ids in tokenizer(sentences)["input_ids"]]
    assert lengths != sorted(lengths, reverse=True)  # sorting really reorders these

    encoder.train()  # encode must switch to eval (no dropout) and restore the mode afterwards
    batched = encode(sentences, (encoder, tokenizer), batch_size=7, max_length=MAX_LEN, progress=False)
    assert encoder.training
    encoder.eval()
    assert batched.shape == (len(sentences), 128) and batched.dtype == np.float32
    one_by_one = np.stack(
        [
            encode([s], (encoder, tokenizer), batch_size=1, max_length=MAX_LEN, progress=False)[0]
            for s in sentences
        ]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=ATOL)
    perm = rng.permutation(len(sentences))
    permuted = encode([sentences[i] for i in perm], (encoder, tokenizer), batch_size=5, progress=False)
    np.testing.assert_allclose(permuted, batched[perm], atol=ATOL)

    assert encode([], (encoder, tokenizer)).shape == (0, 128)
    with pytest.raises(TypeError, match="not one string"):
        encode("a sentence", (encoder, tokenizer))
    with pytest.raises(ValueError, match="max_length"):
        encode(["a"], (encoder, tokenizer), max_length=MAX_LEN + 1)


# ---------------------------------------------------------------------------------------------------
# Files and CLI


LINES = ["Hallo Welt", "", "Привет, мир!", "こんにちは世界", "line\u2028separator stays one line", "last"]


def test_read_lines_keeps_alignment(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\r\n".join(LINES[:3]).encode() + b"\n" + "\n".join(LINES[3:]).encode() + b"\n")
    assert read_lines(path) == LINES


def test_embed_file_npy_and_parquet(model_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    expected = encode(LINES, model_dir, progress=False)

    npy = embed_file(src, tmp_path / "out.npy", model_dir, batch_size=4, progress=False)
    arr = np.load(npy)
    assert arr.shape == (len(LINES), 128) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, expected, atol=ATOL)

    pqt = embed_file(src, tmp_path / "out.parquet", model_dir, progress=False)
    table = pq.read_table(pqt)
    assert table.schema.field("text").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.equals(EMBEDDINGS_SCHEMA, check_metadata=False)
    assert table.column("text").to_pylist() == LINES
    np.testing.assert_allclose(
        np.array(table.column("embedding").to_pylist(), dtype=np.float32), expected, atol=ATOL
    )

    with pytest.raises(ValueError, match=r"\.npy or \.parquet"):
        embed_file(src, tmp_path / "out.csv", model_dir, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy", "out.parquet"]


def test_cli_reads_stdin(model_dir, tmp_path, monkeypatch):
    data = ("\n".join(LINES) + "\n").encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    out = tmp_path / "cli.npy"
    assert main(["--model", str(model_dir), "--output", str(out), "--batch-size", "2", "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out), encode(LINES, model_dir, progress=False), atol=ATOL)


# ---------------------------------------------------------------------------------------------------
# MLflow


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch):
    """A private sqlite tracking store and artifact folder; the global tracking URI is restored."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a model with code_paths prepends to it
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("export-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    yield mlflow
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def test_mlflow_pyfunc_matches_encode(mlflow_tmp, model_dir, corpus, reference, monkeypatch):
    import pandas as pd
    from mlflow import MlflowClient

    from labse_core.mlflow_model import load_registered, log_encoder

    monkeypatch.setenv("LABSE_PRECISION", "fp32")  # the exact path (auto may pick bf16: test_precision.py)
    mlflow = mlflow_tmp
    _, test = corpus
    uri = log_encoder(model_dir, registered_model_name="labse-test")
    assert mlflow.active_run() is None  # the run it opened is closed again

    model = load_registered("labse-test")  # no alias yet: latest version
    got = model.predict(test)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=ATOL)
    from_df = model.predict(pd.DataFrame({"text": test}), params={"batch_size": 8})
    np.testing.assert_allclose(from_df, reference, atol=ATOL)

    MlflowClient().set_registered_model_alias("labse-test", "champion", "1")
    by_alias = load_registered("labse-test")
    np.testing.assert_allclose(by_alias.predict(test[:10]), reference[:10], atol=ATOL)
    by_uri = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(by_uri.predict(test[:10]), reference[:10], atol=ATOL)

    local = Path(mlflow.artifacts.download_artifacts(uri))
    reqs = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("transformers==") for r in reqs)
    assert (local / "code" / "labse_core" / "embed.py").exists()  # the model carries its code
    assert by_uri.metadata.metadata["embedding_dim"] == 128
