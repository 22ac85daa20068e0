"""Deep Gradient Compression (Lin et al., ICLR 2018) applied to client uploads (SPEC 5).

Per client, per tensor of the update ``G`` (treated as the gradient):

1. local clipping: the whole update is scaled to global L2 norm at most
   ``clip_norm * N^-1/2`` (``N`` = clients in the round; off when ``clip_norm`` is None),
   so that the sum of N clipped updates respects the global threshold;
2. momentum correction: ``u = m*u + G; v = v + u`` (``momentum_correction=false``:
   ``v = v + G``, plain residual accumulation);
3. sparsification: the ``k = n(1-s)`` largest ``|v|``, threshold estimated from a random
   sample of ``sample_ratio`` of the entries (see :func:`.sparsify.sampled_topk_indices`);
4. momentum factor masking: where sent, ``v`` and ``u`` are zeroed (``momentum_masking=false``:
   only ``v``), so stale momentum does not keep pushing sent coordinates. A tensor sent whole
   keeps its ``u``: ordinary momentum, ``u = m*u + G`` sent every round (``dense_momentum``);
5. warm-up: the steps ``1 - 4^-(j+1)`` below the target share the first ``warmup_rounds``
   rounds evenly (one step per round for 4 rounds at 99.9%), then the target.

The threshold sample of a client is drawn from a generator seeded by ``(seed, round, client)``,
like every other random draw of a run: a client's payload does not depend on which clients
the same process encoded before it (a distributed run encodes each process's share only), and
there is no stream to checkpoint. It only picks which candidates are examined; the selected
sets are exact top-k either way, but where magnitudes tie at the k-th place the candidates
decide which of the tied entries go.

Defaults follow the authors' code (synxlin/deep-gradient-compression @ 24673d4,
``dgc/compression.py``, ``dgc/memory.py``, ``train.py``; ported in tests/test_dgc_reference.py):
only tensors of more than one dimension are sparsified (``dense_rule=ndim``; ``size`` sends
tensors under ``dense_below`` entries whole instead), ``k = ceil(n (1 - s))`` (``k_rounding``),
with ``values=fp16`` the rounding error of the sent values is discarded (``fp16_residual``;
``true`` keeps it in ``v``, so nothing accumulated is ever lost). Before issue 26 afd-cli sent
tensors under 1,024 entries whole, rounded k, kept the fp16 error and reset a whole tensor's
``u`` every round: ``dense_rule=size k_rounding=nearest fp16_residual=true
dense_momentum=false`` reproduces it. docs/concepts/compression.md lists what else differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import registry
from ..options import option
from .base import Params, RoundContext
from .sparsify import DENSE_RULES, sampled_topk_indices, torch_sampled_topk_indices, warmup_sparsity
from .state import np_view
from .topk import SparseOptions, TopKCompressor

if TYPE_CHECKING:
    from ..registry import Setup


@dataclass
class DGCOptions(SparseOptions):
    """Lin et al.'s techniques, each with its own switch (the paper's ablation is one sweep)."""

    warmup_rounds: int = option(
        4,
        "rounds of exponential warm-up (75%, 93.75%, 98.4375%, 99.6%), then the target; Lin "
        "et al. warm up over 4 epochs = 4 * num_clients / (clients_per_round * E) rounds",
        ge=0,
    )
    momentum: float = option(0.9, "momentum m of the correction buffer u", ge=0, lt=1)
    momentum_correction: bool = option(True, "u = m*u + G; v = v + u (false: v = v + G)")
    momentum_masking: bool = option(True, "zero u and v where sent (false: zero v only)")
    clip_norm: float | None = option(
        None, "global clip c; each client clips to c * N^-1/2; null = off", gt=0
    )
    sample_ratio: float = option(
        0.01, "fraction of entries sampled to estimate the threshold", gt=0, le=1
    )
    dense_momentum: bool = option(
        True,
        "a tensor sent whole keeps ordinary momentum u = m*u + G under momentum masking (Lin "
        "et al.'s code); false: its u is zeroed with it every round",
    )
    # Lin et al.'s code where SparseOptions' defaults are plain top-k's
    dense_rule: str = option(
        "ndim",
        "which tensors go dense: ndim = one dimension or less, the biases (Lin et al.'s "
        "code); size = under dense_below entries",
        choices=DENSE_RULES,
    )
    k_rounding: str = option(
        "ceil",
        "entries sent of n: ceil(n * (1 - sparsity)) (Lin et al.'s code), or nearest",
        choices=("nearest", "ceil"),
    )
    fp16_residual: bool = option(
        False,
        "values=fp16: discard each sent value's fp16 rounding error (Lin et al.'s code); true: "
        "keep it in the residual v",
    )


@registry.compressor("dgc")
class DGCCompressor(TopKCompressor):
    """Top-k plus DGC's clipping, momentum correction/masking, sampling and warm-up."""

    options = DGCOptions

    def __init__(self, opts: DGCOptions, setup: Setup, backend: str | None = None) -> None:
        self.buffers = ("u", "v") if opts.momentum_correction else ("v",)
        super().__init__(opts, setup, backend)
        self._generators: list[torch.Generator] = []  # the clients being encoded, in order

    def _seed_clients(self, round: int, clients: list[int]) -> None:
        """One threshold-sampling generator per client, seeded by ``(seed, round, client)``,
        where the state lives."""
        self._generators = [
            torch.Generator(device=self.device).manual_seed(
                int(np.random.default_rng([self.seed, round, c, 0xD6C]).integers(2**62))
            )
            for c in clients
        ]

    def encode_up(self, client: int, update: Params, view, ctx: RoundContext) -> bytes:
        self._seed_clients(ctx.round, [client])
        return super().encode_up(client, update, view, ctx)

    def _encode_group(self, clients, updates, views, ctx: RoundContext) -> list[bytes]:
        self._seed_clients(ctx.round, clients)
        return super()._encode_group(clients, updates, views, ctx)

    def sparsity_at(self, round: int) -> float:
        """Exponential warm-up, then the target sparsity."""
        return warmup_sparsity(round, self.cfg.sparsity, self.cfg.warmup_rounds)

    def _prepare(self, update: Params, ctx: RoundContext, stacked: bool = False) -> Params:
        """Local clipping of the whole update to ``clip_norm / sqrt(N)`` (per client)."""
        update = super()._prepare(update, ctx, stacked)
        if self.cfg.clip_norm is None:
            return update
        limit = self.cfg.clip_norm / math.sqrt(max(1, ctx.clients_in_round))
        if stacked:  # per row: the same double-precision norm and fp32 scale as below
            sq = sum(t.double().pow(2).flatten(1).sum(1) for t in update.values())
            norm = sq.sqrt()
            scale = torch.where(norm > limit, limit / norm, 1.0).float()
            return {n: t * scale.view(-1, *[1] * (t.dim() - 1)) for n, t in update.items()}
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))
        if norm <= limit:
            return update
        scale = limit / norm
        return {n: t * scale for n, t in update.items()}

    def _accumulate(self, bufs: dict[str, Params], name: str, g: torch.Tensor) -> torch.Tensor:
        """Momentum correction ``u = m*u + G; v += u`` (or ``v += G`` without it)."""
        if not self.cfg.momentum_correction:
            return super()._accumulate(bufs, name, g)
        u = bufs["u"][name].contiguous()
        v = bufs["v"][name].contiguous()
        if self.backend == "torch":
            u.mul_(self.cfg.momentum).add_(g.reshape(u.shape))
            v.add_(u)
            bufs["u"][name], bufs["v"][name] = u, v
            return v
        u_np = np_view(u)
        u_np *= np.float32(self.cfg.momentum)
        u_np += np_view(g.reshape(u.shape))
        v_np = np_view(v)
        v_np += u_np
        bufs["u"][name], bufs["v"][name] = u, v
        return v

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sampled-threshold top-k (per row for a ``[C, n]`` stack)."""
        if self.backend == "torch":
            rows = flat.view(-1, flat.shape[-1])
            idx = torch_sampled_topk_indices(rows, k, self.cfg.sample_ratio, self._generators)
            return idx.view(*flat.shape[:-1], k)
        return sampled_topk_indices(flat, k, self.cfg.sample_ratio, self._generators[0])

    def _after_send(
        self, bufs: dict[str, Params], name: str, idx: torch.Tensor, dense: bool
    ) -> None:
        """Momentum factor masking: zero ``u`` where sent (``v`` is already emptied); a tensor
        sent whole keeps its ``u`` with ``dense_momentum`` (the reference's ordinary momentum
        for the tensors it does not compress, ``dgc/compression.py:198``)."""
        if dense and self.cfg.dense_momentum:
            return
        if self.cfg.momentum_correction and self.cfg.momentum_masking:
            u = bufs["u"][name]
            if idx.dim() == 1:
                u.view(-1)[idx] = 0.0
            else:
                u.view(len(idx), -1).scatter_(1, idx, 0.0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; the sampling generator state of older checkpoints is
        ignored (samples are seeded per client and round now)."""
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("generator")})
