"""GradCache in the fine-tuning trainer (FinetuneConfig.grad_cache_chunk) against the plain step.

On the tiny encoder and real gettext pairs (the fine-tuning tests' shards):
* one chunk of the whole batch, dropout ON: the same loss and, after the AdamW step, the same weights
  as the plain step (the dropout masks of the second, graph-building forward are replayed; without
  the replay they would differ);
* chunks that cut the batch unevenly (one straddles sources and targets), dropout off: the same;
* the same chunks, dropout ON: the same gradient as encoding those chunks with a graph, in order,
  from the same RNG state (what the replay promises); the plain step draws other masks there;
* bad settings are one-line errors naming the setting; the CLI answers them with exit code 2.
Two processes with GradCache and gathered negatives are checked in test_finetune's torchrun test.
"""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest
import torch

from labse_core.data.shards import shard_files
from labse_core.finetune.config import FinetuneConfig
from labse_core.finetune.data import collate_pairs
from labse_core.finetune.train import FineTuner, main
from labse_core.training.distributed import DistEnv
from tests.labse_core.test_finetune import MAX_LEN, _cfg, corpus  # noqa: F401  (pytest fixture)

B = 8  # pairs: a (16, T) batch


@pytest.fixture(scope="module")
def batch(corpus):  # noqa: F811
    rows = pq.read_table(shard_files(corpus.shards)[0]).slice(0, B).to_pylist()
    return collate_pairs(rows, MAX_LEN)


def _tuner(corpus, **overrides) -> FineTuner:  # noqa: F811
    # eps 1e-3: Adam divides by sqrt(v) + eps, so with the default 1e-6 a gradient entry that is ~0 in
    # both steps but differs by float32 roundoff would get a full +-lr update in one and not the other.
    cfg = _cfg(corpus, batch_size=B, lr=1e-3, warmup_steps=1, eps=1e-3, **overrides)
    return FineTuner(cfg, DistEnv(), torch.device("cpu"))


def _assert_same_step(plain: FineTuner, cached: FineTuner, batch, atol: float) -> float:
    init = copy.deepcopy(plain.model.state_dict())
    rng = torch.get_rng_state()  # both steps start from the same RNG state (dropout's draws)
    a = plain.train_step(batch)
    torch.set_rng_state(rng)
    b = cached.train_step(batch)
    assert a.loss == pytest.approx(b.loss, abs=atol) and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
    pa, pb = plain.model.state_dict(), cached.model.state_dict()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=atol, msg=k)
    assert not torch.allclose(init["pooler_dense.weight"], pa["pooler_dense.weight"])  # the step moved it
    return a.loss


def test_one_chunk_with_dropout_is_the_plain_step(corpus, batch):  # noqa: F811
    loss = _assert_same_step(
        _tuner(corpus, dropout=0.1), _tuner(corpus, dropout=0.1, grad_cache_chunk=2 * B), batch, atol=1e-6
    )
    # Dropout is on (other masks give another loss): the equality above needed the masks replayed.
    other = _tuner(corpus, dropout=0.1)
    torch.manual_seed(123)
    assert other.train_step(batch).loss != pytest.approx(loss, abs=1e-4)


def test_uneven_chunks_without_dropout_are_the_plain_step(corpus, batch):  # noqa: F811
    # 5 does not divide 16: chunks of 5, 5, 5, 1 rows, the second holds sources and targets.
    _assert_same_step(_tuner(corpus, dropout=0.0), _tuner(corpus, dropout=0.0, grad_cache_chunk=5), batch, atol=1e-5)


def test_chunks_with_dropout_replay_the_masks(corpus, batch):  # noqa: F811
    cached = _tuner(corpus, dropout=0.1, grad_cache_chunk=5)
    reference = copy.deepcopy(cached.model)
    state = torch.get_rng_state()
    loss = cached._grad_cache_backward(batch, B, 5)

    # The reference: the same trimmed chunks encoded WITH a graph, in order, from the same RNG state.
    torch.set_rng_state(state)
    lengths = batch["attention_mask"].sum(1)
    embs = []
    for a in range(0, 2 * B, 5):
        t = int(lengths[a : a + 5].max())
        embs.append(reference(**{k: v[a : a + 5, :t] for k, v in batch.items()}))
    emb = torch.cat(embs)
    want = cached.loss_fn(emb[:B], emb[B:])
    want.backward()
    assert float(loss) == pytest.approx(want.item(), abs=1e-6)
    grads = dict(cached.model.named_parameters())
    for name, p in reference.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=1e-6, msg=name)

    # ... which is not the plain step's draw of the masks (so the comparison above can fail).
    plain = _tuner(corpus, dropout=0.1)
    torch.set_rng_state(state)
    e = plain.model(**batch)
    assert plain.loss_fn(e[:B], e[B:]).item() != pytest.approx(want.item(), abs=1e-4)


def test_bad_chunk_sizes_are_one_line_errors(capsys):
    for bad in (0, 65):
        with pytest.raises(ValueError, match=r"grad_cache_chunk must be in \[1, 64\]"):
            FinetuneConfig(batch_size=32, grad_cache_chunk=bad)
    assert FinetuneConfig(batch_size=16, streams_per_rank=2, grad_cache_chunk=64).grad_cache_chunk == 64
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "e5_cpu", "--set", "grad_cache_chunk=1000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "grad_cache_chunk must be in [1, 64]" in err and "Traceback" not in err
