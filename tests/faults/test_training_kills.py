"""Pretraining and fine-tuning SIGKILLed mid-epoch, then again in the middle of writing a checkpoint
folder, resume on the next invocation from the last complete checkpoint to the same weights as an
uninterrupted run, in the same MLflow run (fine-tuning is first also killed before its first checkpoint).

Each killed run is the real `labse pretrain` / `labse finetune` command in a subprocess, killed by
storage.faults (LABSE_FAULT_AT): first after a step drawn by a seeded random after the first
checkpoint (``train.step:K``), then, on the rerun, inside the write of its first checkpoint
(``checkpoint.writing``: model.pt written, optimizer.pt and trainer.pt not). A third invocation
completes. The uninterrupted reference is the same configuration run in this process.

Weights are compared bit for bit: a resumed run restores the model, AdamW's moments, every data
stream's position and every RNG (dropout is on), and on one CPU thread the same operations on the same
inputs give the same floats, in this process or another.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from labse_core.data.batches import SpecialIds
from labse_core.data.masking import make_tlm_example
from labse_core.data.shards import write_shards
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.training.checkpoint import Checkpoint, latest_checkpoint
from labse_core.training.result import read_result
from storage.layout import Layout
from storage.schemas import SHARD_MLM, SHARD_PAIRS, SHARD_TLM
from tests.faults.conftest import SIGKILLED, labse_env, run_labse

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es")
DOMAIN = "glib20"
MAX_LEN = 32
MAX_STEPS, EVERY = 12, 3
KILL_SEED = 15
"""Seeds the step the first kill happens after (printed by the test)."""


@dataclass(frozen=True)
class Corpus:
    mlm: Path
    tlm: Path
    pairs: Path
    tokenizer: Path
    vocab_size: int


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """MLM, TLM and pair shards of real gettext translations, in a sentencepiece vocabulary trained on them."""
    from labse_core import vocab

    mos = [LOCALES / lang / "LC_MESSAGES" / f"{DOMAIN}.mo" for lang in LANGS]
    if not all(p.is_file() for p in mos):
        pytest.skip(f"this machine lacks {DOMAIN}.mo catalogs for {LANGS}")
    tmp = tmp_path_factory.mktemp("kill-corpus")
    rows = sorted({(lang, p.src_text, p.tgt_text) for lang, mo in zip(LANGS, mos, strict=True)
                   for p in catalog_pairs(read_mo(mo)) if p.src_text != p.tgt_text and len(p.src_text) < 150})
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    texts = sorted({r[1] for r in rows} | {r[2] for r in rows})
    model = vocab.train_sentencepiece(texts, tmp / "spm", vocab.VocabConfig(vocab_size=1000))
    hf = vocab.export_hf_tokenizer(model, tmp / "hf")
    tok = vocab.load_tokenizer(hf)
    src_ids = tok([r[1] for r in rows], add_special_tokens=False)["input_ids"]
    tgt_ids = tok([r[2] for r in rows], add_special_tokens=False)["input_ids"]
    ids32 = pa.list_(pa.int32())

    mono = [("en", r[1], s) for r, s in zip(rows, src_ids, strict=True)] + \
           [(r[0], r[2], t) for r, t in zip(rows, tgt_ids, strict=True)]
    mono = [mono[i] for i in rng.permutation(len(mono))]
    write_shards(SHARD_MLM, pa.table({"lang": [m[0] for m in mono], "text": [m[1] for m in mono],
                                      "input_ids": pa.array([m[2] for m in mono], ids32)}),
                 tmp / "mlm", rows_per_file=2000)
    sp = SpecialIds()
    packed = [make_tlm_example(s, t, sp.cls, sp.sep, MAX_LEN) for s, t in zip(src_ids, tgt_ids, strict=True)]
    write_shards(SHARD_TLM, pa.table({
        "src_lang": ["en"] * len(rows), "tgt_lang": [r[0] for r in rows],
        "input_ids": pa.array([e.input_ids.tolist() for e in packed], ids32),
        "token_type_ids": pa.array([e.token_type_ids.tolist() for e in packed], pa.list_(pa.int8())),
        "position_ids": pa.array([e.position_ids.tolist() for e in packed], pa.list_(pa.int16())),
    }), tmp / "tlm", rows_per_file=2000)
    write_shards(SHARD_PAIRS, pa.table({
        "src_lang": ["en"] * len(rows), "tgt_lang": [r[0] for r in rows],
        "src_text": [r[1] for r in rows], "tgt_text": [r[2] for r in rows],
        "src_ids": pa.array(src_ids, ids32), "tgt_ids": pa.array(tgt_ids, ids32),
    }), tmp / "pairs", rows_per_file=2000)
    return Corpus(tmp / "mlm", tmp / "tlm", tmp / "pairs", hf, len(tok))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The reference runs in this process on one intra-op thread, as the subprocesses do
    (OMP_NUM_THREADS=1): the same reduction order, so the same floats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(stage: str, corpus: Corpus) -> dict:
    common = dict(vocab_size=corpus.vocab_size, max_len=MAX_LEN, batch_size=8, max_steps=MAX_STEPS,
                  checkpoint_every=EVERY, warmup_steps=2, dropout=0.1, progress=False, log_every=1,
                  device="cpu")  # CUDA's embedding backward adds in any order: not bit-exact across runs
    if stage == "pretrain":
        return common | dict(mlm_shards=str(corpus.mlm), tlm_shards=str(corpus.tlm))
    return common | dict(pair_shards=str(corpus.pairs), tokenizer_dir=str(corpus.tokenizer), eval_every=4,
                         eval_fraction=0.05, eval_max_pairs=32, export_final=False)


def own_mlflow_env(home: Path, fault: str | None) -> dict[str, str]:
    """The command's environment without MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() in this process
    (any earlier in-process run) exports it, and the command would log into that other home's store."""
    env = labse_env(home, fault)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(stage: str, home: Path, settings: dict, result: Path, fault: str | None):
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    return run_labse(home, stage, "--preset", "tiny_cpu", *sets, "--result", str(result),
                     env=own_mlflow_env(home, fault), timeout=240)


def _reference(stage: str, settings: dict, home: Path):
    if stage == "pretrain":
        from labse_core.pretrain.config import tiny_cpu
        from labse_core.pretrain.train import run
    else:
        from labse_core.finetune.config import tiny_cpu
        from labse_core.finetune.train import run
    return run(tiny_cpu(**(settings | {"mlflow": False})), Layout(home))


def _runs(home: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the home's "labse" experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(Layout(home).mlflow_tracking_uri)
    exp = client.get_experiment_by_name("labse")
    return [(r.info.run_id, r.info.status) for r in client.search_runs([exp.experiment_id])] if exp else []


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k] - b[k]).abs().max()}"


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_killed_mid_epoch_and_mid_checkpoint_resumes_to_the_same_weights(stage, corpus, tmp_path):
    import mlflow

    from labse_core.finetune.train import FinetuneResult
    from labse_core.pretrain.train import PretrainResult

    settings = _settings(stage, corpus)
    home = tmp_path / "home"
    root = Layout(home).checkpoints(stage, "tiny-cpu")
    kill_after = random.Random(KILL_SEED).randint(EVERY + 1, MAX_STEPS - 1)  # after the first checkpoint
    print(f"{stage}: first kill after step {kill_after} (seed {KILL_SEED})")

    # 0. (fine-tuning) Killed after step 1, before any checkpoint: the rerun starts over, in the same
    # MLflow run (tracking.RUN_RECORD), not in a new one beside a run left RUNNING forever.
    early_run_id = None
    if stage == "finetune":
        early = _cli(stage, home, settings, tmp_path / "r0.json", "train.step:1")
        assert early.rc == SIGKILLED and "fault injected: train.step:1" in early.stderr, early.stderr[-3000:]
        assert latest_checkpoint(root) is None
        early_run_id = json.loads((root / "mlflow_run.json").read_text())["mlflow_run_id"]

    # 1. Killed after step kill_after: the last checkpoint is the newest multiple of EVERY before it.
    first = _cli(stage, home, settings, tmp_path / "r1.json", f"train.step:{kill_after}")
    assert first.rc == SIGKILLED and f"fault injected: train.step:{kill_after}" in first.stderr, first.stderr[-3000:]
    assert not (tmp_path / "r1.json").exists()
    resumable = kill_after // EVERY * EVERY
    assert latest_checkpoint(root) == root / f"step-{resumable}"
    run_id = Checkpoint.latest(root, resume=True).meta["mlflow_run_id"]
    # The checkpoint, the run record (what a kill before the first checkpoint resumes from) and the store
    # agree: one MLflow run, left RUNNING by the kill; for fine-tuning the one step 0's invocation opened.
    assert run_id == json.loads((root / "mlflow_run.json").read_text())["mlflow_run_id"]
    assert _runs(home) == [(run_id, "RUNNING")]
    if early_run_id is not None:
        assert run_id == early_run_id

    # 2. Resumed, then killed inside the write of its first checkpoint: the half-written folder is
    # hidden under its temporary name and the newest complete one stays "latest".
    second = _cli(stage, home, settings, tmp_path / "r2.json", "checkpoint.writing")
    assert second.rc == SIGKILLED and "fault injected: checkpoint.writing:1" in second.stderr, second.stderr[-3000:]
    partial = list(root.glob(f".step-{resumable + EVERY}.*.partial"))
    assert len(partial) == 1 and (partial[0] / "model.pt").is_file() and not (partial[0] / "trainer.pt").exists()
    assert latest_checkpoint(root) == root / f"step-{resumable}"

    # 3. Completes from the last complete checkpoint.
    third = _cli(stage, home, settings, tmp_path / "r3.json", None)
    assert third.rc == 0, third.stderr[-3000:]
    result = read_result(tmp_path / "r3.json", PretrainResult if stage == "pretrain" else FinetuneResult)
    assert (result.start_step, result.step, result.stopped_by) == (resumable, MAX_STEPS, "max_steps")
    assert not list(root.glob(".step-*")), "a killed write's leftovers outlived the next checkpoint"
    assert not (root / "mlflow_run.json").exists()  # finished: the next run of this name is a new one

    reference = _reference(stage, settings, tmp_path / "reference")
    np.testing.assert_array_equal(result.losses, reference.losses[resumable:])
    final = lambda r: torch.load(r.checkpoint / "model.pt", weights_only=True)  # noqa: E731
    assert result.checkpoint.name == reference.checkpoint.name == f"step-{MAX_STEPS}"
    _assert_same_weights(final(result), final(reference))
    if stage == "pretrain":
        from safetensors.torch import load_file

        _assert_same_weights(load_file(result.final_dir / "model.safetensors"),
                             load_file(reference.final_dir / "model.safetensors"))
    else:  # best/ was (re-)exported from the same evaluations: the same step, the same weights
        from safetensors.torch import load_file

        assert [e["step"] for e in result.evals] == [e["step"] for e in reference.evals]
        assert (result.best_step, result.best_accuracy) == (reference.best_step, reference.best_accuracy)
        _assert_same_weights(load_file(result.best_dir / "model.safetensors"),
                             load_file(reference.best_dir / "model.safetensors"))

    # One MLflow run across the three invocations, reopened by each resume, finished by the last,
    # its loss history one value per step.
    client = mlflow.tracking.MlflowClient(Layout(home).mlflow_tracking_uri)
    assert result.mlflow_run_id == run_id
    runs = client.search_runs([client.get_experiment_by_name("labse").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert [s for s, _ in history] == list(range(1, MAX_STEPS + 1))
    np.testing.assert_allclose([v for _, v in history], reference.losses, rtol=1e-6)
    print(json.dumps({"stage": stage, "kill_after": kill_after, "resumed_from": resumable}))


def test_the_result_file_round_trips_with_its_types(tmp_path):
    """--result (TrainResult.to_json) read back by read_result: what flows.torchrun hands to the pipeline
    from rank 0 of a torchrun job; every field equal, no pickle on the way; a bad file names itself."""
    import inspect

    from flows import torchrun
    from labse_core.finetune.train import FinetuneResult

    result = FinetuneResult(
        start_step=3, step=9, stopped_by="time_budget", losses=[1.5, 0.25], step_times=[0.1, 0.2],
        checkpoint=tmp_path / "step-9", final_dir=None, mlflow_run_id="abc", pairs=[8, 8],
        evals=[{"step": 4, "eval/acc": 0.5}], best_accuracy=0.5, best_step=4, best_dir=tmp_path / "best",
        train_counts={"de": 10}, acceptance={"de": 1.0}, eval_pairs=[("a", "b"), ("c", "d")],
    )
    (tmp_path / "r.json").write_text(json.dumps(result.to_json()))
    assert read_result(tmp_path / "r.json", FinetuneResult) == result
    assert result.to_json()["pairs_per_s"] == result.pairs_per_s  # the summary's numbers are there too
    assert "import pickle" not in inspect.getsource(torchrun) and "pickle.load" not in inspect.getsource(torchrun)

    (tmp_path / "bad.json").write_text(json.dumps(result.to_json() | {"step": "nine"}))
    with pytest.raises(ValueError, match=r"bad\.json: not a FinetuneResult result: step: "):
        read_result(tmp_path / "bad.json", FinetuneResult)
    (tmp_path / "cut.json").write_text(json.dumps(result.to_json())[:40])
    with pytest.raises(ValueError, match=r"cut\.json: not a FinetuneResult result"):
        read_result(tmp_path / "cut.json", FinetuneResult)
