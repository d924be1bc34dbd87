"""The int8 inference path (labse_core.model.int8, CTranslate2) and how a precision is chosen and refused.

int8 embeddings are compared with the exact fp32 path on real Tatoeba sentences, for both poolings
([CLS] + pooler as LaBSE, masked mean with an input prefix as e5); a folder without (or with stale) int8
files, an unknown precision, int8 off the CPU: one line saying what is missing and how to get it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from labse_core.embed import encode, load_for_inference
from labse_core.model import int8
from labse_core.model import precision as prec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def texts():
    from labse_core.evaluation.tatoeba import load_tatoeba
    from tests.conftest import TATOEBA

    return [t for lang in load_tatoeba(TATOEBA, ["deu", "rus", "cmn", "jpn"]) for t in lang.sentences[:50]]


def _random_tiny(tiny_eval_model, out, **kw):
    """A random tiny encoder on the shared tiny model's gettext vocabulary."""
    from labse_core.export import export_model, load_encoder
    from labse_core.model.encoder import LabseEncoder, preset

    _, tok = load_encoder(tiny_eval_model)
    torch.manual_seed(3)
    return export_model(LabseEncoder(preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **kw)).eval(),
                        tok, out)


@pytest.fixture(scope="module")
def cls_model(tiny_eval_model, tmp_path_factory):
    """LaBSE's pooling: BERT's pooler (dense + tanh) over [CLS]."""
    return _random_tiny(tiny_eval_model, tmp_path_factory.mktemp("int8") / "cls")


@pytest.fixture(scope="module")
def mean_model(tiny_eval_model, tmp_path_factory):
    """e5's pooling (masked mean) and input prefix."""
    return _random_tiny(tiny_eval_model, tmp_path_factory.mktemp("int8") / "mean", pooling="mean",
                        input_prefix="query: ")


@pytest.mark.parametrize("which", ["cls_model", "mean_model"])
def test_int8_embeddings_are_within_cosine_0_99_of_fp32(request, which, texts):
    folder = request.getfixturevalue(which)
    int8.write_int8(folder)
    assert int8.has_int8(folder) and (folder / "int8" / "model.bin").stat().st_size > 0
    fp32 = encode(texts, str(folder), progress=False, precision="fp32")
    model = load_for_inference(folder, "int8")
    got = encode(texts, model, progress=False)
    assert model.precision == "int8" and got.shape == fp32.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (fp32 * got).sum(axis=1)
    assert cos.min() >= 0.99, cos.min()
    assert not np.allclose(fp32, got, atol=1e-4)  # close, and really the int8 engine
    # the same rows whatever the batching (the int8 engine pads inside a batch: padding must not leak)
    one_by_one = np.concatenate([encode(texts[i:i + 1], model, progress=False) for i in range(0, 40, 7)])
    np.testing.assert_allclose(one_by_one, got[0:40:7], atol=2e-3)


def test_a_model_with_all_zero_matrices_is_refused_before_conversion(tiny_eval_model, tmp_path):
    folder = tmp_path / "bag"  # the shared tiny model zeroes its attention weights (tests/eval_helpers.py)
    shutil.copytree(tiny_eval_model, folder)
    with pytest.raises(ValueError, match=r"weight matrices are all zero \(.*\); CTranslate2's int8 cannot run them"):
        int8.write_int8(folder)
    assert not (folder / "int8").exists()


def test_a_folder_without_int8_files_is_one_clear_error(mean_model, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(mean_model, folder, ignore=shutil.ignore_patterns("int8"))
    with pytest.raises(prec.PrecisionError, match=rf"{folder}/int8 is missing; write it with: labse quantize {folder}"):
        load_for_inference(folder, "int8")
    loaded = load_for_inference(folder, "fp32")
    with pytest.raises(prec.PrecisionError, match="needs a model folder with its int8 files"):
        encode(["a"], (loaded.encoder, loaded.tokenizer), precision="int8")  # an encoder in memory


def test_int8_files_of_other_weights_are_stale(mean_model, tmp_path):
    from labse_core.export import export_model, load_encoder

    folder = tmp_path / "copy"
    shutil.copytree(mean_model, folder)
    int8.write_int8(folder)
    shutil.copytree(folder, tmp_path / "moved")  # a copied folder (a registry pull) keeps its int8 files
    assert int8.has_int8(tmp_path / "moved")
    encoder, tok = load_encoder(folder)
    with torch.no_grad():
        encoder.bert.encoder.layer[0].output.dense.weight.mul_(1.5)  # fine-tuned further
    staging = tmp_path / "new"
    export_model(encoder, tok, staging)
    shutil.copy2(staging / "model.safetensors", folder / "model.safetensors")
    assert not int8.has_int8(folder)
    with pytest.raises(prec.PrecisionError, match=r"int8 is stale \(the weights changed\); write it with: labse quantize"):
        load_for_inference(folder, "int8")
    int8.write_int8(folder)
    assert int8.has_int8(folder)


def test_auto_picks_what_the_machine_and_the_folder_have(cls_model, monkeypatch):
    from labse_core.export import set_inference_precision

    int8.write_int8(cls_model)
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no bf16 hardware
    assert prec.resolve_precision("auto", CPU, int8_ready=True) == "int8"
    assert prec.resolve_precision("auto", CPU, int8_ready=False) == "fp32"
    assert load_for_inference(cls_model, "auto", "cpu").precision == "int8"
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert prec.resolve_precision("auto", CPU, int8_ready=True) == "bf16"
    try:
        set_inference_precision(cls_model, "int8")  # the folder's own choice wins over the hardware rule
        assert load_for_inference(cls_model, "auto", "cpu").precision == "int8"
        set_inference_precision(cls_model, "fp32")
        assert load_for_inference(cls_model, "auto", "cpu").precision == "fp32"
    finally:
        set_inference_precision(cls_model, None)
    with pytest.raises(prec.PrecisionError, match="int8 runs on the CPU only"):
        prec.resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(prec.PrecisionError, match="precision 'int4': expected one of auto, fp32, bf16, int8"):
        load_for_inference(cls_model, "int4")
    with pytest.raises(ValueError, match="inference_precision 'int4'"):
        set_inference_precision(cls_model, "int4")


def test_a_loaded_model_refuses_another_precision(cls_model):
    model = load_for_inference(cls_model, "fp32")
    with pytest.raises(prec.PrecisionError, match="this model was loaded for fp32"):
        encode(["a"], model, precision="int8")


def test_labse_quantize_and_embed_int8(cls_model, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    src = tmp_path / "s.txt"
    src.write_text("Hallo Welt\nGuten Morgen\n")
    runner = CliRunner()
    res = runner.invoke(app, ["quantize", str(cls_model), "--force"])
    assert res.exit_code == 0 and f"wrote {cls_model}/int8" in res.output, res.output
    res = runner.invoke(app, ["embed", "--model", str(cls_model), "--input", str(src), "--output",
                              str(tmp_path / "e.npy"), "--precision", "int8"])
    assert res.exit_code == 0 and "(precision int8)" in res.output, res.output
    want = encode(["Hallo Welt", "Guten Morgen"], load_for_inference(cls_model, "int8"), progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), want, atol=1e-6)
    res = runner.invoke(app, ["embed", "--model", str(cls_model), "--input", str(src), "--output",
                              str(tmp_path / "e.npy"), "--precision", "fp16"])
    assert res.exit_code == 2 and "precision 'fp16': expected one of" in res.output
    res = runner.invoke(app, ["quantize", str(tmp_path)])
    assert res.exit_code == 2 and "not an exported model folder" in res.output
