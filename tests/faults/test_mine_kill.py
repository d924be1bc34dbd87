"""`labse mine` SIGKILLed while embedding, after scoring, inside the publish of its pairs and right after
it: each rerun of the same command resumes (only missing embedding chunks embedded, the same MLflow
run) and the published ``mined`` dataset ends up equal to an uninterrupted run's, every pair once, with
nothing half-written visible after any kill.

The miner is the real command in a subprocess (storage.faults picks the point) with a real exported
model folder: a tiny encoder, randomly initialised with a fixed seed, over a sentencepiece vocabulary
trained on the inputs (German and English gettext messages of this machine, shuffled, some without their
translation). The reference is the same settings mined in this process into another home.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from labse_core.gettext_catalog import catalog_pairs, read_mo
from storage.datasets import current_manifest
from storage.layout import Layout
from storage.schemas import MINED
from tests.faults.conftest import SIGKILLED, labse_env, run_labse

MO = Path("/usr/share/locale/de/LC_MESSAGES/glib20.mo")
CHUNK = 64
THRESHOLD = 1.0
VOLATILE = ("run_id", "created_at")
"""Columns that name the run, not the pairs: the only ones allowed to differ from the reference."""


@dataclass(frozen=True)
class Inputs:
    src: Path
    tgt: Path
    model: Path
    src_chunks: int
    tgt_chunks: int


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    from labse_core import vocab
    from labse_core.export import export_model
    from labse_core.model.encoder import LabseEncoder, tiny

    if not MO.is_file():
        pytest.skip(f"this machine lacks {MO}")
    tmp = tmp_path_factory.mktemp("mine-inputs")
    pairs = sorted({(p.tgt_text, p.src_text) for p in catalog_pairs(read_mo(MO))
                    if p.src_text != p.tgt_text and "\n" not in p.src_text + p.tgt_text and len(p.src_text) < 120})
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))[:360]]
    de = [d for d, _ in pairs[:300]] + [d for d, _ in pairs[330:]]  # 30 without their English, 30 the other way
    en = [e for _, e in pairs[:330]]
    de, en = [de[i] for i in rng.permutation(len(de))], [en[i] for i in rng.permutation(len(en))]
    (tmp / "de.txt").write_text("\n".join(de) + "\n", encoding="utf-8")
    (tmp / "en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    spm = vocab.train_sentencepiece(de + en, tmp / "spm", vocab.VocabConfig(vocab_size=800))
    hf = vocab.export_hf_tokenizer(spm, tmp / "hf")
    torch.manual_seed(0)
    encoder = LabseEncoder(tiny(vocab_size=len(vocab.load_tokenizer(hf))))
    model = export_model(encoder, hf, tmp / "model", model_card={"name": "tiny random encoder (mining kill test)"})
    return Inputs(tmp / "de.txt", tmp / "en.txt", model, -(-len(set(de)) // CHUNK), -(-len(set(en)) // CHUNK))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> set[tuple]:
    """The pairs an uninterrupted run publishes (settings as the command line's below)."""
    from flows.evaluate import MineRunConfig, run_mine
    from labse_core.mining.miner import MineConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same floats
    try:
        home = tmp_path_factory.mktemp("mine-reference")
        cfg = MineRunConfig(src=str(inputs.src), tgt=str(inputs.tgt), src_lang="de", tgt_lang="en",
                            model=str(inputs.model), mine=MineConfig(threshold=THRESHOLD, chunk_size=CHUNK))
        run_mine(cfg, Layout(home))
    finally:
        torch.set_num_threads(threads)
    rows = published(Layout(home))
    assert len(rows) >= 20, "the reference mined too few pairs for the comparison to mean anything"
    return rows


def published(layout: Layout) -> set[tuple]:
    """The rows of the published ``mined`` (without the run's name), checked to be exactly the manifest's
    files: nothing half-written or left over from a killed run is visible to a reader. Asserts each row once."""
    root = layout.dataset_dir(MINED.relpath)
    manifest = current_manifest(layout, MINED)
    visible = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet")
                     if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
    if manifest is None:
        assert visible == []
        return set()
    assert visible == sorted(f.path for f in manifest.files)
    table = pads.dataset(str(root), format="parquet", partitioning="hive", ignore_prefixes=[".", "_"]).to_table()
    assert table.num_rows == manifest.rows
    names = [c for c in table.column_names if c not in VOLATILE]
    rows = [tuple(r[c] for c in names) for r in table.select(names).to_pylist()]
    assert len(set(rows)) == len(rows), "a pair was published twice"
    return set(rows)


def own_mlflow_env(home: Path, fault: str | None) -> dict[str, str]:
    """The command's environment without MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() in this process
    (the reference run) exports it, and the command would log into the reference home's store."""
    env = labse_env(home, fault)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def mine(home: Path, inputs: Inputs, fault: str | None = None, *extra: str):
    return run_labse(home, "mine", "--src", str(inputs.src), "--tgt", str(inputs.tgt), "--src-lang", "de",
                     "--tgt-lang", "en", "--model", str(inputs.model), "--threshold", str(THRESHOLD),
                     "--chunk-size", str(CHUNK), *extra, env=own_mlflow_env(home, fault), timeout=240)


def killed(result, point: str) -> None:
    assert result.rc == SIGKILLED and f"fault injected: {point}" in result.stderr, result.stderr[-3000:]


def work_folder(home: Path) -> Path:
    (folder,) = (home / "runs" / "mine-work").iterdir()
    return folder


def summary_of(home: Path, result) -> dict:
    assert result.rc == 0, result.stderr[-3000:]
    (path,) = Layout(home).runs.glob("*/mine.json")
    return json.loads(path.read_text())


def one_finished_run(home: Path, run_id: str) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient(Layout(home).mlflow_tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("labse").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")]


def shards(work: Path) -> dict[str, tuple[int, int]]:
    """{side/name: (inode, mtime)} of the embedding shards in a work folder."""
    return {p.relative_to(work).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.glob("*/shard-*.npy")}


def test_mine_killed_at_every_stage_resumes_and_publishes_every_pair_once(inputs, reference, tmp_path):
    """One command, killed four times in a row at later and later points, then left to finish."""
    home = tmp_path / "home"
    assert inputs.src_chunks > 3

    # 1. While embedding: after the 3rd chunk's shard. Nothing published.
    killed(mine(home, inputs, "mine.chunk_embedded:3"), "mine.chunk_embedded:3")
    assert published(Layout(home)) == set()
    work = work_folder(home)
    run_id = json.loads((work / "run.json").read_text())["mlflow_run_id"]
    first = shards(work)
    assert len(first) == 3 and all(k.startswith("src/") for k in first)

    # 2. After kNN and scoring. The rerun embedded only the missing chunks: the first three are the
    # same files (inode and mtime), every other chunk of both sides is new.
    killed(mine(home, inputs, "mine.scored"), "mine.scored")
    assert published(Layout(home)) == set()
    second = shards(work)
    assert {k: second[k] for k in first} == first
    assert len(second) - len(first) == inputs.src_chunks - 3 + inputs.tgt_chunks

    # 3. Inside the publish of the pairs: all staged, nothing committed. Nothing visible.
    killed(mine(home, inputs, "dataset.staged"), "dataset.staged")
    assert published(Layout(home)) == set()

    # 4. Right after the publish, before the run is over: every pair is in, once.
    killed(mine(home, inputs, "mine.published"), "mine.published")
    assert published(Layout(home)) == reference
    assert shards(work) == second  # nothing embedded twice

    # 5. Finishes: the same MLflow run, no chunk embedded, the pairs not appended a second time.
    final = mine(home, inputs)
    summary = summary_of(home, final)
    assert f"resumed: {inputs.src_chunks + inputs.tgt_chunks} embedding chunks reused" in final.stdout
    assert summary["run_id"] == run_id
    assert summary["embedding_chunks"] == {"src": {"embedded": 0, "reused": inputs.src_chunks},
                                           "tgt": {"embedded": 0, "reused": inputs.tgt_chunks}}
    assert published(Layout(home)) == reference
    assert not any((home / "runs" / "mine-work").iterdir())  # a finished run leaves no work folder
    one_finished_run(home, run_id)


def test_shards_on_disk_are_reused_and_only_missing_or_changed_chunks_embedded(tmp_path):
    """The resume rule itself, in process: a chunk is embedded again exactly when no complete shard of
    the same sentences is on disk."""
    from labse_core.mining.shards import embed_to_shards

    rng = np.random.default_rng(0)
    vectors = {f"s{i}": rng.normal(size=4).astype(np.float32) for i in range(23)} | {"changed": np.ones(4, np.float32)}
    calls: list[list[str]] = []

    def embed(batch: list[str]) -> np.ndarray:
        calls.append(list(batch))
        return np.stack([vectors[t] for t in batch])

    texts = [f"s{i}" for i in range(23)]
    counts: dict[str, int] = {}
    full = embed_to_shards(iter(texts), embed, tmp_path, chunk_size=5, counts=counts).to_array()
    assert counts == {"embedded": 5, "reused": 0}

    sorted(tmp_path.glob("shard-00001-*.npy"))[0].unlink()  # as if killed before chunk 1 was written
    calls.clear()
    counts = {}
    again = embed_to_shards(iter(texts), embed, tmp_path, chunk_size=5, counts=counts).to_array()
    assert counts == {"embedded": 1, "reused": 4} and calls == [texts[5:10]]
    np.testing.assert_array_equal(again, full)

    edited = texts[:7] + ["changed"] + texts[8:]  # other sentences in chunk 1: its old shard does not fit
    calls.clear()
    counts = {}
    out = embed_to_shards(iter(edited), embed, tmp_path, chunk_size=5, counts=counts).to_array()
    assert counts == {"embedded": 1, "reused": 4} and calls == [edited[5:10]]
    np.testing.assert_array_equal(out[7], vectors["changed"])
