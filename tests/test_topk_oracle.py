"""Every top-k selection of ``afd_cli.compression.sparsify`` against ``torch.topk(|x|, k)``.

With distinct magnitudes the top-k set is unique, so the selected indices must be exactly the
ones torch.topk selects. With ties it is not: then the selection must be k distinct sorted
indices whose magnitudes are torch.topk's values (as a multiset), none smaller than any entry
left out.
"""

from __future__ import annotations

import pytest
import torch

from afd_cli.compression import sparsify
from afd_cli.compression.sparsify import (
    sampled_topk_indices,
    topk_indices,
    torch_sampled_topk_indices,
    torch_topk_indices,
)


def _distinct(n: int, seed: int) -> torch.Tensor:
    """n values with distinct magnitudes (a shuffled 1..n, scaled, random signs)."""
    g = torch.Generator().manual_seed(seed)
    mag = (torch.randperm(n, generator=g) + 1).float() * 0.001
    sign = torch.randint(2, (n,), generator=g).float() * 2 - 1
    return mag * sign


def _tied(n: int, seed: int) -> torch.Tensor:
    """n values from {-3..3}: many equal magnitudes, and x and -x tie."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n,), generator=g).float()


def _want(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(x.abs(), k).indices.sort().values


def _check_tied(x: torch.Tensor, k: int, got: torch.Tensor) -> None:
    assert got.dtype == torch.int64 and got.numel() == k
    assert torch.equal(got, got.sort().values) and got.unique().numel() == k
    mag = x.abs()
    want = torch.topk(mag, k).values.sort().values
    assert torch.equal(mag[got].sort().values, want)
    left = torch.ones_like(mag, dtype=torch.bool)
    left[got] = False
    if k and left.any():
        assert mag[got].min() >= mag[left].max()


def _ks(n: int) -> list[int]:
    return sorted({k for k in (1, 2, n // 10, n // 2, n - 1) if 1 <= k < n})


CASES = [(n, k) for n in (2, 3, 17, 300, 1000, 5000, 40_000) for k in _ks(n)]


@pytest.mark.parametrize("n,k", CASES)
def test_exact_topk_selects_torch_topk_indices(n, k):
    x = _distinct(n, n + k)
    assert torch.equal(topk_indices(x, k), _want(x, k))
    assert torch.equal(torch_topk_indices(x[None], k)[0], _want(x, k))


@pytest.mark.parametrize("n,k", CASES)
@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_sampled_topk_selects_torch_topk_indices(n, k, ratio):
    """The sampled threshold is a shortcut, the selection is still the exact top-k."""
    x = _distinct(n, 7 * n + k)
    got = sampled_topk_indices(x, k, ratio, torch.Generator().manual_seed(k))
    assert torch.equal(got, _want(x, k))


@pytest.mark.parametrize("n,k", CASES)
@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_torch_rows_select_each_rows_torch_topk(n, k, ratio):
    rows = torch.stack([_distinct(n, 11 * n + k + r) for r in range(3)])
    exact = torch_topk_indices(rows, k)
    one = torch_sampled_topk_indices(rows, k, ratio, torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    per_row = torch_sampled_topk_indices(rows, k, ratio, gens)
    for r in range(3):
        want = _want(rows[r], k)
        assert torch.equal(exact[r], want)
        assert torch.equal(one[r], want) and torch.equal(per_row[r], want)


@pytest.mark.parametrize("n,k,ratio", [(40_000, 4000, 0.01), (40_000, 1, 0.1), (5000, 500, 0.1)])
def test_the_sampled_threshold_path_is_what_was_checked(monkeypatch, n, k, ratio):
    """These cases select through the sampled threshold, not the exact fallback."""

    def no_fallback(*a, **kw):
        raise AssertionError("fell back to the exact top-k")

    x = _distinct(n, 7 * n + k)
    want = _want(x, k)
    monkeypatch.setattr(sparsify, "topk_indices", no_fallback)
    monkeypatch.setattr(sparsify, "torch_topk_indices", no_fallback)
    assert torch.equal(
        sparsify.sampled_topk_indices(x, k, ratio, torch.Generator().manual_seed(k)), want
    )
    got = sparsify.torch_sampled_topk_indices(x[None], k, ratio, torch.Generator().manual_seed(1))
    assert torch.equal(got[0], want)


@pytest.mark.parametrize("n,k", [(n, k) for n in (5, 300, 5000, 40_000) for k in _ks(n)])
def test_ties_give_a_valid_topk(n, k):
    x = _tied(n, n + k)
    _check_tied(x, k, topk_indices(x, k))
    _check_tied(x, k, torch_topk_indices(x[None], k)[0])
    for ratio in (0.01, 1.0):
        _check_tied(x, k, sampled_topk_indices(x, k, ratio, torch.Generator().manual_seed(3)))
        rows = torch_sampled_topk_indices(x[None], k, ratio, torch.Generator().manual_seed(3))
        _check_tied(x, k, rows[0])


@pytest.mark.parametrize("n", [1, 4, 1000])
def test_k_of_zero_and_k_of_n_and_more(n):
    x = _distinct(n, n)
    g = torch.Generator().manual_seed(0)
    for k in (n, n + 5):
        assert torch.equal(topk_indices(x, k), torch.arange(n))
        assert torch.equal(sampled_topk_indices(x, k, 0.5, g), torch.arange(n))
        assert torch.equal(torch_topk_indices(x[None], k)[0], torch.arange(n))
    assert topk_indices(x, 0).numel() == 0 and sampled_topk_indices(x, 0, 0.5, g).numel() == 0
    assert torch_topk_indices(x[None], 0).shape == (1, 0)


def test_zero_entries_are_never_preferred_to_tiny_nonzeros():
    x = torch.zeros(1000)
    x[[3, 500, 999]] = torch.tensor([-1e-30, 2.0, -0.5])
    for k, want in ((3, [3, 500, 999]), (2, [500, 999])):
        assert topk_indices(x, k).tolist() == want
        assert torch_topk_indices(x[None], k)[0].tolist() == want
        assert sampled_topk_indices(x, k, 0.5, torch.Generator().manual_seed(0)).tolist() == want
