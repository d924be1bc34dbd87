"""Dual-encoder fine-tuning: batches, held-out split, balancing, learning, exact resume, DDP, best/ export.

Real text: gettext catalogs of this machine (English msgid -> translated msgstr, glib20 + coreutils)
for four languages, tokenized with the project's sentencepiece vocabulary and written as SHARD_PAIRS
part files in a temporary lake.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from labse_core.data.held_out import held_out_score
from labse_core.data.shards import shard_files, write_shards
from labse_core.evaluation.retrieval import retrieval_accuracy
from labse_core.finetune.config import FinetuneConfig, tiny_cpu
from labse_core.finetune.data import PairBatcher, acceptance_probs, collate_pairs, scan_pairs
from labse_core.finetune.train import build_encoder, evaluate, run
from labse_core.gettext_catalog import catalog_pairs, read_mo
from storage.layout import Layout
from storage.schemas import SHARD_PAIRS
from tests.torchrun_helpers import torchrun_two_ranks

LOCALES = Path("/usr/share/locale")
LANGS = ("de", "fr", "es", "ru")
DOMAINS = ("glib20", "gtk30", "coreutils")
MAX_LEN = 32

torch.set_num_threads(1)  # 2 loaded cores: one intra-op thread is faster for a tiny model


@dataclass(frozen=True)
class Corpus:
    shards: Path
    tokenizer: Path
    vocab_size: int
    num_pairs: int


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    from labse_core import vocab

    catalogs = [(lang, LOCALES / lang / "LC_MESSAGES" / f"{d}.mo") for lang in LANGS for d in DOMAINS]
    catalogs = [(lang, p) for lang, p in catalogs if p.is_file()]
    if {lang for lang, _ in catalogs} != set(LANGS):
        pytest.skip(f"this machine lacks gettext catalogs for {LANGS}")
    tmp = tmp_path_factory.mktemp("finetune-corpus")
    rows = sorted(
        {
            (lang, p.src_text, p.tgt_text)
            for lang, path in catalogs
            for p in catalog_pairs(read_mo(path))
            # Untranslated messages (msgstr == msgid) would be retrieved by any encoder, even a random one.
            if len(p.src_text) < 200 and len(p.tgt_text) < 200 and p.src_text != p.tgt_text
        }
    )
    # Unbalanced on purpose (de keeps all, ru a third) so that balancing has something to do.
    keep = {"de": 1.0, "fr": 0.7, "es": 0.5, "ru": 0.33}
    rng = np.random.default_rng(0)
    rows = [r for r in rows if rng.random() < keep[r[0]]]
    texts = sorted({r[1] for r in rows} | {r[2] for r in rows})
    model = vocab.train_sentencepiece(texts, tmp / "spm", vocab.VocabConfig(vocab_size=2000))
    hf = vocab.export_hf_tokenizer(model, tmp / "hf")
    tok = vocab.load_tokenizer(hf)

    def ids(xs):
        return pa.array(tok(xs, add_special_tokens=False)["input_ids"], pa.list_(pa.int32()))

    table = pa.table(
        {
            "src_lang": ["en"] * len(rows),
            "tgt_lang": [r[0] for r in rows],
            "src_text": [r[1] for r in rows],
            "tgt_text": [r[2] for r in rows],
            "src_ids": ids([r[1] for r in rows]),
            "tgt_ids": ids([r[2] for r in rows]),
        }
    )
    table = table.take(rng.permutation(table.num_rows))  # language-mixed files, as the sharding job writes
    write_shards(SHARD_PAIRS, table, tmp / "lake/shards/pairs", rows_per_file=3000)
    return Corpus(tmp / "lake/shards/pairs", hf, len(tok), table.num_rows)


def _cfg(corpus: Corpus, **overrides) -> FinetuneConfig:
    values = dict(
        vocab_size=corpus.vocab_size,
        pair_shards=str(corpus.shards),
        tokenizer_dir=str(corpus.tokenizer),
        max_len=MAX_LEN,
        batch_size=32,
        eval_fraction=0.04,
        eval_max_pairs=300,
        mlflow=False,
        progress=False,
        export_final=False,
    )
    return tiny_cpu(**(values | overrides))


# ---------------------------------------------------------------------------------------------------
# Pieces


def test_collate_puts_sources_then_targets_in_one_padded_batch():
    rows = [
        {"src_ids": np.array([10, 11, 12]), "tgt_ids": np.array([20])},
        {"src_ids": [13], "tgt_ids": [21, 22]},
    ]
    b = collate_pairs(rows, max_len=4)
    assert b["input_ids"].tolist() == [[2, 10, 11, 3], [2, 13, 3, 0], [2, 20, 3, 0], [2, 21, 22, 3]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_retrieval_accuracy_counts_identical_twins_as_correct():
    x = torch.eye(3)
    y = torch.eye(3)[[0, 2, 1]]  # pairs 1 and 2 swapped
    m = retrieval_accuracy(x, y, ["a", "b", "c"], ["A", "B", "C"])
    assert m["eval/acc_xy"] == pytest.approx(1 / 3) and m["eval/acc"] == pytest.approx(1 / 3)
    m = retrieval_accuracy(x, y, ["a", "b", "b"], ["A", "B", "B"])  # the swapped pair is a duplicate
    assert m["eval/acc"] == 1.0


def test_acceptance_balances_language_shares():
    counts = {"en-de": 8000, "en-ru": 1000}
    q = acceptance_probs(counts, alpha=0.0)  # uniform over language pairs
    assert q["en-ru"] == 1.0 and q["en-de"] == pytest.approx(1 / 8)
    assert acceptance_probs(counts, alpha=1.0) == pytest.approx({"en-de": 1.0, "en-ru": 1.0})


def test_held_out_split_is_disjoint_from_training_batches(corpus):
    cfg = _cfg(corpus, balance_alpha=0.0)
    from labse_core.data.shards import shard_files

    scan = scan_pairs(shard_files(corpus.shards), cfg.eval_fraction, cfg.eval_max_pairs)
    assert 0.02 * corpus.num_pairs < scan.held_out < 0.06 * corpus.num_pairs
    assert len(scan.eval_rows) == min(scan.held_out, cfg.eval_max_pairs)
    held = {(r["src_text"], r["tgt_text"]) for r in scan.eval_rows}
    assert all(held_out_score(s, t) < cfg.eval_fraction for s, t in held)
    batcher = PairBatcher(cfg, corpus.shards, 0, 1, acceptance_probs(scan.train_counts, 0.0))
    seen = [r for _ in range(60) for r in batcher.next()]
    assert all(len(b) == 32 for b in [seen[i : i + 32] for i in range(0, len(seen), 32)])
    assert not held & {(r["src_text"], r["tgt_text"]) for r in seen}
    # alpha = 0: language pairs equally likely although de has ~3x as many pairs as ru.
    shares = Counter(r["tgt_lang"] for r in seen)
    assert scan.train_counts["en-de"] > 2.5 * scan.train_counts["en-ru"]
    assert all(0.18 < shares[lang] / len(seen) < 0.32 for lang in LANGS), shares


# ---------------------------------------------------------------------------------------------------
# Training


def test_tiny_model_learns_to_retrieve_held_out_translations(corpus, layout):
    import mlflow

    cfg = _cfg(
        corpus,
        max_steps=120,
        eval_every=60,
        checkpoint_every=1000,
        mlflow=True,
        log_every=10,
    )
    result = run(cfg, layout)
    assert result.step == 120 and result.stopped_by == "max_steps"
    start, end = np.mean(result.losses[:5]), np.mean(result.losses[-10:])
    assert end < 0.85 * start, (start, end)
    assert [e["step"] for e in result.evals] == [0, 60, 120]
    n = result.evals[-1]["eval/n"]
    acc0, acc = result.evals[0]["eval/acc"], result.evals[-1]["eval/acc"]
    # chance is 1/n = 1/300; a random encoder already matches ~20% (shared numbers, names, format strings)
    assert acc > 0.29 and acc > 80 / n and acc > acc0 + 0.05, result.evals
    assert result.best_accuracy == max(e["eval/acc"] for e in result.evals)
    assert result.pairs_per_s > 0
    client = mlflow.tracking.MlflowClient(layout.mlflow_tracking_uri)
    run_ = client.get_run(result.mlflow_run_id)
    assert {"loss", "pairs_per_s", "lr", "eval/acc"} <= set(run_.data.metrics)
    assert run_.data.params["stage"] == "finetune"
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "eval/acc")] == [0, 60, 120]

    # best/ is an exported model folder: AutoModel, SentenceTransformer and load_encoder agree.
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from labse_core.embed import encode
    from labse_core.export import load_encoder, read_export_metadata

    best = result.best_dir
    assert read_export_metadata(best)["model_card"]["metrics"]["eval/acc"] == result.best_accuracy
    sentences = [
        "Could not open file",
        "Impossible d’ouvrir le fichier",
        "Datei konnte nicht geöffnet werden",
    ]
    ours = encode(sentences, load_encoder(best), progress=False)
    st = SentenceTransformer(str(best), device="cpu", local_files_only=True).encode(sentences)
    tok = AutoTokenizer.from_pretrained(str(best))
    with torch.no_grad():
        hf = AutoModel.from_pretrained(str(best)).eval()(**tok(sentences, padding=True, return_tensors="pt"))
    hf = F.normalize(hf.pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(st, ours, atol=1e-5)
    np.testing.assert_allclose(hf, ours, atol=1e-5)
    # And the export is the best step's weights: its held-out accuracy is the recorded one.
    from labse_core.data.shards import shard_files

    scan = scan_pairs(shard_files(corpus.shards), cfg.eval_fraction, cfg.eval_max_pairs)
    assert evaluate(load_encoder(best)[0], scan.eval_rows, cfg)["eval/acc"] == pytest.approx(
        result.best_accuracy, abs=1e-9
    )


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path):
    cfg = _cfg(
        corpus,
        max_steps=8,
        checkpoint_every=3,
        eval_every=4,
        warmup_steps=2,
        balance_alpha=0.3,
        eval_max_pairs=64,
    )
    straight = run(cfg, Layout(tmp_path / "a"))
    home = Layout(tmp_path / "b")
    first = run(cfg.model_copy(update={"stop_at_step": 4}), home)
    assert first.stopped_by == "stop_at_step" and first.checkpoint.name == "step-4"
    second = run(cfg, home)
    assert second.start_step == 4
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
    assert [e["step"] for e in second.evals] == [e["step"] for e in straight.evals] == [0, 4, 8]
    a = torch.load(straight.checkpoint / "model.pt")
    b = torch.load(second.checkpoint / "model.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_time_budget_stops_cleanly_with_a_checkpoint(corpus, tmp_path):
    cfg = _cfg(
        corpus,
        max_steps=100_000,
        time_budget_s=2.0,
        batch_size=8,
        eval_max_pairs=32,
        checkpoint_every=10**6,
        eval_every=10**6,
        export_final=True,
    )
    result = run(cfg, Layout(tmp_path))
    assert result.stopped_by == "time_budget" and 0 < result.step < 100_000
    assert result.checkpoint.name == f"step-{result.step}"
    assert (result.final_dir / "model.safetensors").is_file()


def test_warm_start_from_a_pretraining_final_folder_and_an_exported_folder(corpus, tmp_path):
    from labse_core.export import export_model
    from labse_core.model.encoder import LabseEncoder, tiny
    from labse_core.pretrain.model import LabseForPretraining
    from labse_core.pretrain.train import save_final

    torch.manual_seed(3)
    pre = LabseForPretraining(LabseEncoder(tiny(corpus.vocab_size)))
    final = save_final(tmp_path / "final", pre)
    enc = build_encoder(_cfg(corpus, init_from=str(final)))
    assert torch.equal(enc.pooler_dense.weight, pre.encoder.pooler_dense.weight)
    exported = export_model(pre.encoder, corpus.tokenizer, tmp_path / "exported")
    enc2 = build_encoder(_cfg(corpus, init_from=str(exported), tokenizer_dir=None))
    sd, ref = enc2.state_dict(), pre.encoder.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert enc2.training and all(m.p == 0.0 for m in enc2.modules() if isinstance(m, torch.nn.Dropout))


# ---------------------------------------------------------------------------------------------------
# Distributed



@pytest.mark.parametrize("grad_cache_chunk", [None, 5])
def test_two_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path, grad_cache_chunk):
    """torchrun, 2 gloo ranks x 1 data stream == 1 process x 2 streams: the same global batch of pairs
    (cross-replica negatives), so the same losses and parameters. Also with GradCache on the 2 ranks
    (chunks of 5 of each rank's 16 sentences, negatives gathered from both ranks, one gradient
    all-reduce after the last chunk) against the plain single process."""
    cfg = _cfg(
        corpus,
        max_steps=3,
        batch_size=8,
        warmup_steps=1,
        eval_max_pairs=32,
        eval_every=10**6,
        eval_at_start=False,
        lr=3e-3,
        # Adam divides by sqrt(v) + eps: with the default 1e-6 a gradient entry that is ~0 in both runs
        # but differs by float32 roundoff (other reduction order, other padding length) gets a full
        # +-lr update in one run and not the other. A larger eps keeps roundoff at roundoff scale.
        eps=1e-3,
    )
    ddp_cfg = cfg.model_copy(update={"grad_cache_chunk": grad_cache_chunk})
    ddp = torchrun_two_ranks("labse_core.finetune.train", ddp_cfg, tmp_path)

    single = run(cfg.model_copy(update={"streams_per_rank": 2}), Layout(tmp_path / "single"))
    np.testing.assert_allclose(ddp["losses"], single.losses, rtol=0, atol=1e-5)
    a = torch.load(Path(ddp["checkpoint"]) / "model.pt")
    b = torch.load(single.checkpoint / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    init = build_encoder(cfg).state_dict()
    assert not torch.allclose(init["pooler_dense.weight"], a["pooler_dense.weight"])


# ---------------------------------------------------------------------------------------------------
# Warm start from a sentence-transformers folder laid out like the released LaBSE


def _labse_like_folder(corpus: Corpus, out: Path, pooling: str = "cls") -> Path:
    """A local stand-in for sentence-transformers/LaBSE: its own WordPiece vocabulary (vocab.txt, not
    the shards' sentencepiece), BERT with a pooler of its own, then Pooling(CLS) -> Dense(tanh) ->
    Normalize, saved by sentence-transformers itself. The Dense differs from the BERT pooler, so
    loading the wrong one shows."""
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    texts = [t for f in shard_files(corpus.shards)
             for col in pq.read_table(f, columns=["src_text", "tgt_text"]).to_pydict().values() for t in col]
    assert len(texts) > 1000
    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(texts, vocab_size=1500, min_frequency=2)
    raw = out.parent / f"{out.name}-wordpiece"
    raw.mkdir(parents=True)
    wp.save_model(str(raw))
    # (transformers 5 ignores a vocab_file= argument: read the folder, as for the released LaBSE's vocab.txt)
    tok = BertTokenizerFast.from_pretrained(str(raw), do_lower_case=False, model_max_length=128)
    assert len(tok) > 1000
    torch.manual_seed(3)
    bert_dir = out.parent / f"{out.name}-bert"
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=512, max_position_embeddings=128), add_pooling_layer=True)
    bert.save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=64)
    modules = [transformer, models.Pooling(128, pooling_mode=pooling),
               models.Dense(128, 128, activation_function=torch.nn.Tanh()), models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def test_sentence_transformers_labse_folder_loads_with_its_dense_as_pooler(corpus, tmp_path):
    from sentence_transformers import SentenceTransformer

    from labse_core.embed import encode
    from labse_core.model.encoder import LabseEncoder
    from labse_core.vocab import load_tokenizer

    folder = _labse_like_folder(corpus, tmp_path / "labse-st")
    encoder = LabseEncoder.from_sentence_transformers(folder).eval()
    texts = ["Could not open file", "Datei konnte nicht geöffnet werden", "Не удалось открыть файл", "Quitter"]
    ours = encode(texts, (encoder, load_tokenizer(folder)), max_length=64, progress=False)
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(texts)
    np.testing.assert_allclose(ours, st, atol=1e-5)

    with pytest.raises(ValueError, match="CLS"):
        LabseEncoder.from_sentence_transformers(_labse_like_folder(corpus, tmp_path / "mean-st", pooling="mean"))


def test_finetune_from_a_labse_folder_retokenizes_with_its_vocabulary(corpus, tmp_path):
    from sentence_transformers import SentenceTransformer

    from labse_core.embed import encode
    from labse_core.export import load_encoder
    from labse_core.vocab import load_tokenizer

    folder = _labse_like_folder(corpus, tmp_path / "labse-st")
    cfg = _cfg(corpus, init_from=str(folder), max_steps=160, eval_every=80, export_final=True)
    layout = Layout.from_env(tmp_path / "home")
    result = run(cfg, layout)
    accs = [e["eval/acc"] for e in result.evals]
    assert [e["step"] for e in result.evals] == [0, 80, 160]
    # It learns on the re-tokenized pairs (a random BERT already retrieves ~20% through shared subwords).
    assert np.mean(result.losses[-10:]) < 0.85 * np.mean(result.losses[:5]) and accs[-1] > accs[0] + 0.03, accs
    # The exported model carries LaBSE's vocabulary, not the shards' sentencepiece one.
    encoder, tok = load_encoder(result.final_dir)
    assert tok.get_vocab() == load_tokenizer(folder).get_vocab() and encoder.cfg.vocab_size == len(tok)
    texts = ["Permission denied", "Keine Berechtigung", "Отказано в доступе"]
    st = SentenceTransformer(str(result.final_dir), device="cpu", local_files_only=True).encode(texts)
    np.testing.assert_allclose(encode(texts, (encoder, tok), progress=False), st, atol=1e-5)

    # Training on the shards' ids with a model of another vocabulary is refused up front.
    with pytest.raises(ValueError, match="embeddings"):
        run(_cfg(corpus, init_from=str(folder), retokenize=False, max_steps=1), Layout.from_env(tmp_path / "h2"))


def test_cli_names_a_missing_init_folder_without_a_traceback(capsys):
    from labse_core.finetune.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "tiny_cpu", "--set", "init_from=/no/such/LaBSE"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "init_from '/no/such/LaBSE' is not a folder" in err and "Traceback" not in err


def test_pipeline_launch_under_torchrun_matches_one_process(corpus, tmp_path, monkeypatch):
    """The pipeline's training launch (flows.torchrun.train) with two processes per node, as on a 2-GPU
    node (here 2 CPU gloo ranks via LABSE_TORCHRUN_NPROC): it runs `torchrun --standalone` as a
    subprocess and hands back rank 0's result, equal to one process reading the same 2 data streams."""
    from flows import torchrun

    cfg = _cfg(corpus, max_steps=2, batch_size=8, warmup_steps=1, eval_max_pairs=32, eval_every=10**6,
               eval_at_start=False, lr=3e-3, eps=1e-3)
    monkeypatch.setenv(torchrun.NPROC_ENV, "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ddp = torchrun.train("finetune", cfg, Layout(tmp_path / "ddp"))
    assert (tmp_path / "ddp" / "runs").is_dir() and any((tmp_path / "ddp" / "runs").glob("torchrun-finetune-*/torchrun.log"))
    single = run(cfg.model_copy(update={"streams_per_rank": 2}), Layout(tmp_path / "single"))
    np.testing.assert_allclose(ddp.losses, single.losses, rtol=0, atol=1e-5)
    assert len(ddp.losses) == 2
