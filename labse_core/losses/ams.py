r"""Bidirectional additive margin softmax (AMS): LaBSE's translation ranking loss.

Inputs: a batch of N translation pairs (x_i, y_i), x = source embeddings, y = target embeddings,
both (N, D). phi(x, y) is the cosine (the inputs are l2-normalized again here, so phi is a cosine
whatever the caller passes). Every y_n with n != i is a negative for x_i ("in-batch negatives").

Forward (source -> target) loss (Yang et al. 2019; Feng et al. 2022, Sec. 3):

    L_xy = -1/N sum_i log  e^{s (phi(x_i, y_i) - m)}
                           -------------------------------------------------------------
                           e^{s (phi(x_i, y_i) - m)} + sum_{n != i} e^{s phi(x_i, y_n)}

Backward (target -> source) loss, the same over the columns of the score matrix:

    L_yx = -1/N sum_i log  e^{s (phi(y_i, x_i) - m)}
                           -------------------------------------------------------------
                           e^{s (phi(y_i, x_i) - m)} + sum_{n != i} e^{s phi(y_i, x_n)}

Bidirectional loss (the paper's "L-bar = L + L'"):

    L = L_xy + L_yx

We SUM the two directions, as the paper writes it, rather than average them: the sum keeps each
direction's gradient at the scale it has on its own, so a learning rate tuned for the one-directional
loss carries over. (An average would halve every gradient; with Adam that is nearly invisible, with SGD
it is a 2x learning-rate change.) With bidirectional=False the loss is L_xy alone.

Numbers:
  * m = 0.3, the margin LaBSE uses. It is subtracted from the positive only, which makes the loss
    strictly larger than the plain softmax loss and asks translations to beat every non-translation
    by at least m in cosine.
  * s = 20 by default. The paper's equation has no scale (s = 1); it is also printed without the
    log, which we read as a typo since it is called a softmax loss. Without a scale the logits live
    in [-1.3, 1]: in a batch of 4096 the positive's probability stays below 1.3e-3 even if every
    negative sat at cosine -1, so the loss never approaches 0 and the softmax spreads the gradient
    over all negatives almost uniformly instead of focusing on the hard ones. AM-softmax (Wang et
    al. 2018, s = 30) and sentence-transformers' MultipleNegativesRankingLoss (s = 20, temperature
    0.05) scale cosines; we follow the latter. We could not check which scale, if any, LaBSE's
    training code used (only the trained model was released); s = 1 reproduces the equation literally.

Shapes with cross-replica negatives (LaBSE's "cross-accelerator negative sampling"): each of `world`
ranks holds B pairs, N = B * world. A rank scores its B local rows against all N gathered columns:

    scores_xy = s * x_local @ y_all.T  # (B, B*world)   labels = arange(B) + rank * B
    scores_yx = s * y_local @ x_all.T  # (B, B*world)   labels = arange(B) + rank * B

and returns the mean over its B rows. The mean of the per-rank losses is the full-batch loss.

Gradient correctness under DistributedDataParallel. Let L_r be rank r's loss (mean over its rows),
so the full-batch loss is L = 1/world sum_r L_r. Rank r's embeddings e_r appear in *every* rank's loss
(as negatives), so dL/de_r = 1/world sum_r' dL_r'/de_r. `gather_with_grad` all-gathers in the forward
and, in the backward, SUMS the gradient w.r.t. the gathered tensor over ranks (all_reduce) before
taking the local slice; rank r therefore back-propagates sum_r' dL_r'/de_r into its encoder, and DDP's
gradient AVERAGE over ranks supplies the 1/world. The result is exactly the one-process gradient of
L on the concatenated batch, with no extra loss scaling (tested with 2 gloo processes). The common
shortcut "all_gather without grad, then put the local tensor back in its slot" drops the
sum_{r' != r} dL_r'/de_r terms and gives a different gradient (also shown in the test).
Requirements: every rank holds the same B (drop the last partial batch), and the source and target
embeddings must come from one DDP forward per backward (pad both sides to one length and encode them
concatenated) or from GradCache below, because DDP allows one forward per backward outside no_sync().
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AmsLossConfig:
    """Hyper-parameters of the additive margin softmax loss. Defaults: LaBSE."""

    margin: float = 0.3
    """Additive margin m subtracted from the positive pair's cosine (LaBSE: 0.3)."""
    scale: float = 20.0
    """Multiplier s on cosines before the softmax (inverse temperature); the paper's equation is s = 1,
    see the module docstring for why 20."""
    bidirectional: bool = True
    """Add the target -> source loss to the source -> target loss (LaBSE: yes, L = L_xy + L_yx)."""
    gather_across_ranks: bool = True
    """Use every rank's pairs as negatives when torch.distributed is initialised (LaBSE: yes,
    cross-accelerator negatives). No effect in a single process."""


# ---------------------------------------------------------------------------------------------------
# Cross-replica gather that keeps the gradient of every rank's loss.


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward = sum the incoming gradient over ranks, keep the local slice."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        ctx.rank, ctx.local = rank, t.shape[0]
        return torch.cat(parts, dim=0)  # (B*world, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on our slice; the sum over ranks is the gradient of sum_r L_r.
        # (A reduce_scatter would move less data, but gloo has none; clone because all_reduce is in place.)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local
        return grad[start : start + ctx.local]  # (B, ...)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` (B, ...) from all ranks in rank order -> (B*world, ...), differentiable.

    The gradient that flows back into the local `t` is the SUM over ranks of each rank's gradient
    w.r.t. this rank's slice; combined with DDP's gradient average that reproduces the single-process
    full-batch gradient (module docstring). All ranks must pass the same shape. Identity when
    torch.distributed is not initialised or world size is 1.
    """
    if not _distributed():
        return t
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    if any(int(s) != t.shape[0] for s in sizes):
        raise ValueError(
            f"gather_with_grad needs the same batch size on every rank, got {[int(s) for s in sizes]}"
        )
    return _GatherWithGrad.apply(t)


# ---------------------------------------------------------------------------------------------------
# The loss.


def additive_margin_softmax_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    margin: float = 0.3,
    scale: float = 20.0,
    bidirectional: bool = True,
    gather_across_ranks: bool = True,
) -> torch.Tensor:
    """Bidirectional AMS loss of local pairs (x_i, y_i); x, y: (B, D) -> scalar (module docstring)."""
    if x.shape != y.shape:
        raise ValueError(f"source and target embeddings must have the same shape, got {x.shape} vs {y.shape}")
    x = F.normalize(x, dim=-1)  # (B, D)
    y = F.normalize(y, dim=-1)  # (B, D)
    B = x.shape[0]
    if gather_across_ranks and _distributed():
        # One collective for both sides: fewer round trips, and x and y cannot be gathered in a
        # different order on different ranks.
        xy_all = gather_with_grad(torch.stack([x, y], dim=1))  # (B*world, 2, D)
        x_all, y_all = xy_all[:, 0], xy_all[:, 1]  # (B*world, D) each
        offset = dist.get_rank() * B
    else:
        x_all, y_all, offset = x, y, 0
    labels = torch.arange(B, device=x.device) + offset  # (B,) column of each row's translation
    # The margin only touches the positive: subtract m at (i, labels[i]).
    margin_mask = F.one_hot(labels, num_classes=x_all.shape[0]).to(x.dtype)  # (B, B*world)

    scores = x @ y_all.T  # (B, B*world) cos(x_i, y_n)
    loss = F.cross_entropy(scale * (scores - margin * margin_mask), labels)
    if bidirectional:
        scores_t = y @ x_all.T  # (B, B*world) cos(y_i, x_n)
        loss = loss + F.cross_entropy(scale * (scores_t - margin * margin_mask), labels)
    return loss


class AdditiveMarginSoftmaxLoss(nn.Module):
    """LaBSE's translation ranking loss as a module: `loss = AdditiveMarginSoftmaxLoss()(x, y)`."""

    def __init__(self, cfg: AmsLossConfig | None = None):
        super().__init__()
        self.cfg = cfg or AmsLossConfig()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return additive_margin_softmax_loss(x, y, c.margin, c.scale, c.bidirectional, c.gather_across_ranks)

    def extra_repr(self) -> str:
        return f"margin={self.cfg.margin}, scale={self.cfg.scale}, bidirectional={self.cfg.bidirectional}"


# ---------------------------------------------------------------------------------------------------
# Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
# Limited Setup"): the contrastive batch is as large as you like, the activation memory is one chunk's.
#
#   1. embed every chunk without a graph;
#   2. compute the loss on the concatenated embeddings and its gradient w.r.t. them (cheap: (N, D));
#   3. re-embed each chunk with a graph and backprop the cached embedding gradient through it.
#
# Step 3 must see the same dropout masks as step 1, or the cached gradient belongs to a different
# function. We snapshot the RNG state before each chunk in step 1 and replay it in step 3 (the
# `RandContext` of the GradCache reference code). Even so the result equals the plain full-batch
# loss only WITHOUT dropout (eval mode or p = 0): with dropout, the full batch and the chunks draw
# different masks, so the two are equally valid samples of the gradient, not the same number (one
# chunk holding the whole batch draws the plain step's masks: then the two are equal with dropout too).
# Forward code whose randomness depends on something other than the torch RNG (e.g. non-deterministic
# kernels) breaks the replay silently.

Chunk = torch.Tensor | Mapping[str, torch.Tensor]


class _RngSnapshot:
    """CPU (and CUDA, for the devices the chunk lives on) RNG state, replayable later."""

    def __init__(self, chunk: Chunk):
        tensors = list(chunk.values()) if isinstance(chunk, Mapping) else [chunk]
        self.devices = sorted({t.get_device() for t in tensors if t.is_cuda})
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def replay(self):
        # fork_rng restores the current state afterwards, so the replay does not shift later draws.
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            for d, s in zip(self.devices, self.cuda_states, strict=True):
                torch.cuda.set_rng_state(s, d)
            yield


def _embed(model: nn.Module, chunk: Chunk) -> torch.Tensor:
    return model(**chunk) if isinstance(chunk, Mapping) else model(chunk)


def grad_cache_backward(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    src_chunks: Sequence[Chunk],
    tgt_chunks: Sequence[Chunk],
) -> torch.Tensor:
    """Accumulate into `.grad` the parameter gradient of loss_fn(cat(src), cat(tgt)); return the loss.

    `model(chunk)` (or `model(**chunk)` for a dict of input_ids/attention_mask/...) returns (b, D)
    embeddings; chunks may have different sizes, but the source and target sides must cover the
    same pairs in the same order. Like `loss.backward()`, gradients are added to existing `.grad`.

    Under DDP, pass the DDP-wrapped model: every chunk but the last backprops inside `no_sync()`,
    so gradients are all-reduced once, after the last chunk. `loss_fn` may gather across ranks
    (AdditiveMarginSoftmaxLoss does); its backward runs once, in step 2, on every rank.
    """
    src_chunks, tgt_chunks = list(src_chunks), list(tgt_chunks)
    sizes = [len(c) if not isinstance(c, Mapping) else len(next(iter(c.values()))) for c in src_chunks]
    n_src = sum(sizes)

    def loss_of(e: torch.Tensor) -> torch.Tensor:
        return loss_fn(e[:n_src], e[n_src:])  # (N, D) sources, (N, D) targets

    return grad_cache_chunks_backward(model, loss_of, src_chunks + tgt_chunks)


def grad_cache_chunks_backward(
    model: Callable[..., torch.Tensor],
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    chunks: Sequence[Chunk],
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """GradCache over any cut of one batch: `loss_of(cat(embeddings of every chunk, in order))` ->
    scalar; its parameter gradient is accumulated into `.grad` and the loss returned (detached).

    The fine-tuning trainer cuts its (2B, T) batch (B sources then B targets) into row chunks and
    splits the (2B, D) embeddings at B inside `loss_of`, so a chunk may hold sources and targets.
    `model` is any callable returning (b, D) embeddings; `no_sync` (default: `model.no_sync`, DDP's)
    wraps every chunk's backward but the last. Dropout: as grad_cache_backward.
    """
    chunks = list(chunks)

    # 1. Embeddings without a graph; remember the RNG state each chunk started from.
    snapshots, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            snapshots.append(_RngSnapshot(chunk))
            cached.append(_embed(model, chunk))  # (b, D)

    # 2. Loss and its gradient w.r.t. the embeddings (leaf tensors, no encoder graph).
    leaves = [e.detach().requires_grad_() for e in cached]
    loss = loss_of(torch.cat(leaves))  # cat of leaves: each leaf gets its slice of the gradient
    loss.backward()

    # 3. Re-embed each chunk with a graph and push the cached gradient through it. Backprop of
    # (e * g).sum() w.r.t. the parameters is exactly J_e^T g.
    no_sync = no_sync or getattr(model, "no_sync", None)  # DistributedDataParallel
    for k, (chunk, snap, leaf) in enumerate(zip(chunks, snapshots, leaves, strict=True)):
        last = k == len(chunks) - 1
        with snap.replay(), no_sync() if no_sync is not None and not last else nullcontext():
            e = _embed(model, chunk)  # (b, D)
            torch.autograd.backward(e, grad_tensors=leaf.grad)
    return loss.detach()
