"""Inference precision: `auto` picks bf16 only where the hardware multiplies bf16, an explicit bf16 the machine
cannot run is one clear error, and bf16 embeddings stay within cosine 0.999 of fp32 (on this project's CPUs,
which have AMX; elsewhere the bf16 comparison is skipped, the selection rules are still checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labse_core.embed import encode
from labse_core.model import precision as prec

CPU = torch.device("cpu")


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset(names))
    return set_flags


def test_auto_is_bf16_only_with_bf16_instructions(flags):
    flags("avx2", "avx512f")
    assert prec.resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(prec.PrecisionError, match="no amx_bf16 or avx512_bf16.*use --precision fp32"):
        prec.resolve_precision("bf16", CPU)
    flags("avx512f", "amx_bf16")
    assert prec.resolve_precision("auto", CPU) == prec.resolve_precision("bf16", CPU) == "bf16"
    assert prec.resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(prec.PrecisionError, match="precision 'int4': expected one of auto, fp32, bf16"):
        prec.resolve_precision("int4", CPU)


def test_the_real_cpu_flags_are_read():
    assert "fpu" in prec.cpu_flags() or not prec.cpu_flags()  # Linux lists fpu on every x86 CPU


@pytest.mark.skipif(not prec.bf16_fast(CPU), reason="no bf16 matrix multiply on this CPU")
def test_bf16_embeddings_are_within_cosine_0_999_of_fp32(tiny_eval_model):
    from labse_core.evaluation.tatoeba import load_tatoeba
    from tests.conftest import TATOEBA

    texts = [t for lang in load_tatoeba(TATOEBA, ["deu", "rus", "cmn"]) for t in lang.sentences[:60]]
    fp32 = encode(texts, str(tiny_eval_model), progress=False, precision="fp32")
    bf16 = encode(texts, str(tiny_eval_model), progress=False, precision="bf16")
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() >= 0.999 and not np.allclose(fp32, bf16, atol=1e-7)  # close, and really another path


def test_training_autocasts_bf16_only_when_asked_and_the_hardware_has_it(flags):
    from labse_core.training import distributed

    flags("avx512f")
    assert not distributed.autocast(CPU, True)._enabled  # emulated bf16 is slower than fp32: stay fp32
    flags("amx_bf16")
    assert distributed.autocast(CPU, True)._enabled and distributed.autocast(CPU, True).fast_dtype == torch.bfloat16
    assert not distributed.autocast(CPU, False)._enabled
