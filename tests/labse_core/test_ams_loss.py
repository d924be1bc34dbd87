"""AMS loss against the formula, across 2 processes, and with gradient caching.

The reference below is the docstring's formula written with loops over rows and explicit exp/log,
sharing no code with the module.
"""

from __future__ import annotations

import os
from datetime import timedelta

os.environ["HF_HUB_OFFLINE"] = "1"  # the tiny LabseEncoder below must never reach a model hub

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from labse_core.losses import ams
from labse_core.losses.ams import (
    AdditiveMarginSoftmaxLoss,
    AmsLossConfig,
    additive_margin_softmax_loss,
    gather_with_grad,
    grad_cache_backward,
)


def reference_ams(x, y, margin, scale, bidirectional):
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    n = x.shape[0]

    def one_direction(a, b):
        total = 0.0
        for i in range(n):
            positive = torch.exp(scale * (torch.dot(a[i], b[i]) - margin))
            negatives = sum(torch.exp(scale * torch.dot(a[i], b[j])) for j in range(n) if j != i)
            total = total - torch.log(positive / (positive + negatives))
        return total / n

    loss = one_direction(x, y)
    if bidirectional:
        loss = loss + one_direction(y, x)
    return loss


def _pairs(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)  # translations: near, not equal
    return x, y


@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_matches_reference_values_and_gradients(margin, scale, bidirectional):
    x, y = _pairs()
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    xm, ym = x.clone().requires_grad_(), y.clone().requires_grad_()

    expected = reference_ams(xr, yr, margin, scale, bidirectional)
    expected.backward()
    cfg = AmsLossConfig(margin=margin, scale=scale, bidirectional=bidirectional)
    got = AdditiveMarginSoftmaxLoss(cfg)(xm, ym)
    got.backward()

    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xm.grad, xr.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ym.grad, yr.grad, rtol=1e-9, atol=1e-10)


def test_backward_direction_is_not_a_copy_of_forward():
    # Guards against "L_yx" silently computed on the same rows as L_xy: for asymmetric inputs the
    # bidirectional loss is not twice the forward one.
    x, y = _pairs(seed=3)
    fwd = additive_margin_softmax_loss(x, y, bidirectional=False)
    both = additive_margin_softmax_loss(x, y, bidirectional=True)
    assert not torch.isclose(both, 2 * fwd)


def test_margin_strictly_increases_loss():
    for seed in range(5):
        x, y = _pairs(seed=seed)
        plain = additive_margin_softmax_loss(x, y, margin=0.0)
        margined = additive_margin_softmax_loss(x, y, margin=0.3)
        assert margined > plain


def test_defaults_are_the_papers():
    cfg = AmsLossConfig()
    assert cfg.margin == 0.3
    assert cfg.bidirectional and cfg.gather_across_ranks


def test_gather_is_identity_without_process_group():
    t = torch.randn(3, 4)
    assert gather_with_grad(t) is t


# ---------------------------------------------------------------------------------------------------
# Two processes == one process on the concatenated batch.

WORLD = 2
LOCAL_B = 4


class ToyEncoder(nn.Module):
    """Inputs (b, 8) -> embeddings (b, 6); float64 so that the comparison can be tight."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 6)).double()

    def forward(self, inputs):
        return self.net(inputs)


def _naive_gathered_loss(x, y, cfg):
    """The common shortcut: all_gather without grad and put the local tensor back in its slot."""
    rank, world, b = dist.get_rank(), dist.get_world_size(), x.shape[0]

    def gather(t):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.detach().contiguous())
        parts[rank] = t
        return torch.cat(parts)

    x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    x_all, y_all = gather(x), gather(y)
    labels = torch.arange(b) + rank * b
    margin = cfg.margin * torch.nn.functional.one_hot(labels, world * b).to(x.dtype)
    ce = torch.nn.functional.cross_entropy
    return ce(cfg.scale * (x @ y_all.T - margin), labels) + ce(cfg.scale * (y @ x_all.T - margin), labels)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _ddp_worker(rank, init_file, out_dir, state, src, tgt):
    torch.set_num_threads(1)
    # A bounded collective timeout: a rank stuck in a collective fails the test instead of hanging it.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        model = ToyEncoder()
        model.load_state_dict(state)
        ddp = DDP(model)
        loss_fn = AdditiveMarginSoftmaxLoss()
        s = src[rank * LOCAL_B : (rank + 1) * LOCAL_B]  # (B, 8) this rank's half of the batch
        t = tgt[rank * LOCAL_B : (rank + 1) * LOCAL_B]  # (B, 8)

        # One DDP forward for both sides (DDP allows one forward per backward).
        emb = ddp(torch.cat([s, t]))  # (2B, 6)
        loss = loss_fn(emb[:LOCAL_B], emb[LOCAL_B:])
        loss.backward()
        result = {"loss": loss.detach(), "grads": _grads(model)}

        model.zero_grad()
        emb = ddp(torch.cat([s, t]))
        naive = _naive_gathered_loss(emb[:LOCAL_B], emb[LOCAL_B:], loss_fn.cfg)
        naive.backward()
        result["naive_loss"], result["naive_grads"] = naive.detach(), _grads(model)

        # Gradient caching under DDP, with uneven chunks.
        model.zero_grad()
        result["gc_loss"] = grad_cache_backward(ddp, loss_fn, [s[:1], s[1:]], [t[:3], t[3:]])
        result["gc_grads"] = _grads(model)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)  # spawn re-imports torch in each child: seconds, but slow on a busy machine
def test_two_process_gathered_loss_equals_one_process_full_batch(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    src = torch.randn(WORLD * LOCAL_B, 8, dtype=torch.float64)
    tgt = src + 0.5 * torch.randn(WORLD * LOCAL_B, 8, dtype=torch.float64)

    # One process, full batch of N = WORLD * LOCAL_B pairs.
    loss_fn = AdditiveMarginSoftmaxLoss()
    n = WORLD * LOCAL_B
    emb = model(torch.cat([src, tgt]))  # (2N, 6)
    full_loss = loss_fn(emb[:n], emb[n:])
    full_loss.backward()
    full_grads = _grads(model)

    mp.spawn(_ddp_worker, args=(str(tmp_path / "pg_init"), str(tmp_path), state, src, tgt), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # The per-rank loss is the mean over its rows; their mean is the full-batch loss.
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, full_loss.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(
        sum(r["gc_loss"] for r in ranks) / WORLD, full_loss.detach(), rtol=0, atol=1e-10
    )
    for r in ranks:
        for name, g in full_grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=0, atol=1e-9, msg=f"gathered grad {name}")
            torch.testing.assert_close(
                r["gc_grads"][name], g, rtol=0, atol=1e-9, msg=f"grad-cache grad {name}"
            )

    # The test can fail: the same loss value with gather-without-grad gives a different gradient.
    torch.testing.assert_close(
        sum(r["naive_loss"] for r in ranks) / WORLD, full_loss.detach(), rtol=0, atol=1e-10
    )
    worst = max((ranks[0]["naive_grads"][k] - g).abs().max().item() for k, g in full_grads.items())
    assert worst > 1e-4


# ---------------------------------------------------------------------------------------------------
# Gradient caching, one process.


def _plain_grads(model, src, tgt, loss_fn, embed):
    model.zero_grad()
    loss = loss_fn(embed(model, src), embed(model, tgt))
    loss.backward()
    return loss.detach(), _grads(model)


def test_grad_cache_equals_plain_loss_toy_encoder():
    torch.manual_seed(1)
    model = ToyEncoder()
    src = torch.randn(10, 8, dtype=torch.float64)
    tgt = src + 0.3 * torch.randn(10, 8, dtype=torch.float64)
    loss_fn = AdditiveMarginSoftmaxLoss()
    loss, grads = _plain_grads(model, src, tgt, loss_fn, lambda m, b: m(b))

    model.zero_grad()
    gc_loss = grad_cache_backward(model, loss_fn, src.split(3), tgt.split(4))  # uneven, unaligned chunks
    torch.testing.assert_close(gc_loss, loss, rtol=0, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=0, atol=1e-12)


def _tiny_labse(dropout):
    from labse_core.model.encoder import LabseEncoder, preset

    cfg = preset("tiny", vocab_size=97, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return LabseEncoder(cfg)


def _token_batch(n, t, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 97, (n, t), generator=g)
    ids[:, 0] = 2  # [CLS]
    lengths = torch.randint(3, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # (n, t) right padding
    return {"input_ids": ids * mask, "attention_mask": mask}


def _split(batch, sizes):
    return [
        dict(zip(batch, parts, strict=True))
        for parts in zip(*(v.split(sizes) for v in batch.values()), strict=True)
    ]


def test_grad_cache_equals_plain_loss_labse_encoder():
    torch.manual_seed(0)
    model = _tiny_labse(dropout=0.1).eval()  # eval: no dropout, so chunking cannot change the masks
    src, tgt = _token_batch(8, 12, seed=1), _token_batch(8, 9, seed=2)
    loss_fn = AdditiveMarginSoftmaxLoss()
    loss, grads = _plain_grads(model, src, tgt, loss_fn, lambda m, b: m(**b))

    model.zero_grad()
    gc_loss = grad_cache_backward(model, loss_fn, _split(src, [3, 5]), _split(tgt, [4, 4]))
    torch.testing.assert_close(gc_loss, loss, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=1e-4, atol=1e-6, msg=name)


def test_grad_cache_replays_dropout_masks(monkeypatch):
    """With dropout on and one chunk per side, GradCache sees the masks the plain loss saw from the
    same seed, but only because the re-forward replays the RNG state of the first pass."""
    model = _tiny_labse(dropout=0.1).train()
    src, tgt = _token_batch(4, 10, seed=3), _token_batch(4, 8, seed=4)
    loss_fn = AdditiveMarginSoftmaxLoss()

    torch.manual_seed(123)
    _, grads = _plain_grads(model, src, tgt, loss_fn, lambda m, b: m(**b))

    def gc_grads():
        model.zero_grad()
        torch.manual_seed(123)
        grad_cache_backward(model, loss_fn, [src], [tgt])
        return _grads(model)

    replayed = gc_grads()
    for name, g in grads.items():
        torch.testing.assert_close(replayed[name], g, rtol=1e-4, atol=1e-6, msg=name)

    # Without the replay the re-forward draws fresh masks and the gradient is inconsistent.
    from contextlib import nullcontext

    monkeypatch.setattr(ams._RngSnapshot, "replay", lambda self: nullcontext())
    broken = gc_grads()
    assert max((broken[k] - g).abs().max().item() for k, g in grads.items()) > 1e-4
