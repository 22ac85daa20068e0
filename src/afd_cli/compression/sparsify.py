"""Choosing what to send: sparsity schedule, keep counts and (sampled) top-k selection."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# Below this many sampled entries the threshold estimate is too noisy to be worth it.
MIN_SAMPLE = 256


def warmup_stages(target: float) -> int:
    """How many exponential steps ``1 - 4^-(j+1)`` lie below ``target`` (4 for 99.9%)."""
    j = 0
    while 1.0 - 4.0 ** -(j + 1) < target and j < 32:
        j += 1
    return j


def warmup_sparsity(round: int, target: float, warmup_rounds: int) -> float:
    """DGC exponential warm-up of the sparsity (the fraction of entries NOT sent).

    The steps ``1 - 4^-(j+1)`` below ``target`` (75%, 93.75%, 98.4375%, 99.6% for 99.9%)
    share the first ``warmup_rounds`` rounds evenly, step ``j = floor(J r / W)``; from round
    ``W`` on it is ``target``. With ``W`` = 4 that is one step per round; Lin et al. take one
    step per epoch, which in FL is ``num_clients / (clients_per_round * local_epochs)``
    rounds. Starting dense-ish lets the residuals settle before heavy sparsification.
    """
    if round >= warmup_rounds:
        return target
    step = warmup_stages(target) * round // warmup_rounds  # no steps (target <= 75%): 0
    return min(target, 1.0 - 4.0 ** -(step + 1))


def keep_count(n: int, sparsity: float, ceil: bool = False) -> int:
    """How many of ``n`` entries to send at ``sparsity``: at least one when there are any.

    ``n (1 - sparsity)`` rounded to the nearest integer, or (``ceil``) its ceiling, as Lin et
    al.'s code takes ``ceil(numel * compress_ratio)``; the 1e-9 absorbs the float error of
    ``1 - sparsity`` (``1 - 0.999`` is a hair above 0.001), so an exact product is not rounded
    up: the same k as the reference's for every n below 2 million at 99% and 99.9%.
    """
    if n <= 0:
        return 0
    exact = n * (1.0 - sparsity)
    return min(n, max(1, math.ceil(exact - 1e-9) if ceil else round(exact)))


DENSE_RULES = ("ndim", "size")


def sent_whole(shape: Sequence[int], rule: str, dense_below: int) -> bool:
    """Whether a tensor of ``shape`` goes dense: ``ndim``, one dimension or less (the biases;
    Lin et al.'s code compresses only ``param.dim() > 1``), or ``size``, fewer than
    ``dense_below`` entries."""
    if rule == "ndim":
        return len(shape) <= 1
    return math.prod(shape) < dense_below


def _magnitudes(flat: torch.Tensor) -> np.ndarray:
    # numpy: on a small shared CPU it beats torch's threaded kernels several-fold here
    return np.abs(flat.detach().to("cpu", torch.float32).contiguous().numpy().ravel())


def _largest(mag: np.ndarray, k: int) -> np.ndarray:
    """Positions (unordered) of the k largest entries of ``mag``."""
    return np.argpartition(mag, mag.size - k)[mag.size - k :]


def topk_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat indices of the ``k`` largest ``|flat|`` (exact)."""
    n = flat.numel()
    if k >= n:
        return torch.arange(n, dtype=torch.int64)
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(_largest(_magnitudes(flat), k)).astype(np.int64))


def sampled_topk_indices(
    flat: torch.Tensor, k: int, sample_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """DGC threshold selection: sorted indices of (exactly) the ``k`` largest ``|flat|``.

    The threshold is read off a random sample of ``sample_ratio * n`` magnitudes, set a bit
    low (aiming at about ``2k`` candidates) so that enough entries pass; the exact top-k is
    then taken among the few candidates only. Costs one pass over ``|flat|`` instead of a
    full top-k. Falls back to the exact top-k for small tensors (sample too small) and in
    the rare case fewer than ``k`` entries pass.
    """
    n = flat.numel()
    m = min(n, math.ceil(n * sample_ratio))
    if k >= n or k <= 0 or m < MIN_SAMPLE:
        return topk_indices(flat, k)
    mag = _magnitudes(flat)
    sample = mag[torch.randint(n, (m,), generator=generator).numpy()]
    rank = min(m, math.ceil(2.0 * m * k / n) + 2)  # expect ~2k + 2n/m candidates
    thr = np.partition(sample, m - rank)[m - rank]
    cand = np.flatnonzero(mag >= thr)
    if cand.size < k:
        return topk_indices(flat, k)
    if cand.size > k:
        cand = np.sort(cand[_largest(mag[cand], k)])
    return torch.from_numpy(cand.astype(np.int64))


# --------------------------------------------------------------------------- torch (device)
# The same selections for state kept as torch tensors on the model's device (a GPU): rows of a
# ``[C, n]`` stack are C clients' tensors of one shape. Each returns ``[C, k]`` sorted int64
# indices on ``flat``'s device; no Python loop over clients.


def torch_topk_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, sorted flat indices of the ``k`` largest ``|flat|`` (exact; ``torch.topk``)."""
    c, n = flat.shape
    if k >= n:
        return torch.arange(n, device=flat.device).expand(c, n).contiguous()
    if k <= 0:
        return torch.zeros(c, 0, dtype=torch.int64, device=flat.device)
    idx = flat.abs().topk(k, dim=1, sorted=False).indices
    return idx.sort(dim=1).values


def torch_sampled_topk_indices(
    flat: torch.Tensor,
    k: int,
    sample_ratio: float,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """:func:`sampled_topk_indices` per row of ``[C, n]``: the same (exact) top-k sets.

    Each row's threshold is the ``kthvalue`` of its own random sample of ``sample_ratio * n``
    magnitudes, aimed at about ``2k`` candidates; the candidates are compacted into a padded
    ``[C, max candidates]`` block (one ``nonzero``) and the exact top-k taken there. If any
    row gets fewer than ``k`` candidates (rare), all rows take the exact top-k.
    ``generator`` must live on ``flat``'s device; a sequence of them draws each row's sample
    from its own (one per client, so a row does not depend on the rows stacked with it).
    """
    c, n = flat.shape
    m = min(n, math.ceil(n * sample_ratio))
    if k >= n or k <= 0 or m < MIN_SAMPLE:
        return torch_topk_indices(flat, k)
    mag = flat.abs()
    if isinstance(generator, torch.Generator):
        pos = torch.randint(n, (c, m), generator=generator, device=flat.device)
    else:
        pos = torch.stack(
            [torch.randint(n, (m,), generator=g, device=flat.device) for g in generator]
        )
    rank = min(m, math.ceil(2.0 * m * k / n) + 2)  # expect ~2k + 2n/m candidates
    thr = mag.gather(1, pos).kthvalue(m - rank + 1, dim=1, keepdim=True).values
    passed = mag >= thr
    counts = passed.sum(1)
    width = int(counts.max())  # the one host sync
    if int(counts.min()) < k:
        return torch_topk_indices(flat, k)
    rows, cols = passed.nonzero(as_tuple=True)  # row-major: each row's candidates in order
    slot = torch.arange(rows.numel(), device=flat.device) - (counts.cumsum(0) - counts)[rows]
    cand_mag = torch.full((c, width), -1.0, dtype=mag.dtype, device=flat.device)
    cand_idx = torch.zeros((c, width), dtype=torch.int64, device=flat.device)
    cand_mag[rows, slot] = mag[rows, cols]
    cand_idx[rows, slot] = cols
    best = cand_mag.topk(k, dim=1, sorted=False).indices  # padding (-1) never wins: k <= count
    return cand_idx.gather(1, best).sort(dim=1).values
