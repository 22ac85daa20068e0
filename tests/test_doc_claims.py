"""The documented codec figures (docs/concepts/compression.md), held as tightly as stated.

docs/concepts/compression.md: "On a cnn_mnist-sized update at 99.9% sparsity the payload is 14,765 B
against an entropy bound (log2 C(n,k) + 32 bits per value) of 14,699 B, 1.0045x; 1/451 of
dense fp32 (`make benchmark`, section c)". Section c encodes each cnn_mnist tensor of a
random update on its own: tensors under 1,024 entries (the biases) dense, the others as the
top 0.1% of their entries. This builds the same payload through the codec.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from afd_cli.compression import codec
from afd_cli.models import build


def _update(seed: int) -> dict[str, torch.Tensor]:
    model = build("cnn_mnist", (1, 28, 28), 10)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}


def _sparse_payload(tensors: dict[str, torch.Tensor], sparsity: float) -> tuple[bytes, float]:
    """The payload and its entropy bound in bits, as `make benchmark` section c builds them."""
    records, bound = [], 0.0
    for t in tensors.values():
        n = t.numel()
        if n < 1024:
            records.append(codec.Dense(t))
            bound += 32 * n
            continue
        k = max(1, math.ceil((1 - sparsity) * n))
        idx = t.flatten().abs().topk(k).indices.sort().values
        records.append(codec.Sparse(tuple(t.shape), idx, t.flatten()[idx]))
        bound += codec.entropy_bound_bits(n, k) + 32 * k
    return codec.encode(records), bound


# measured (seeds 0-3): 1.00444-1.00464x the bound, 1/450.6 of dense (docs: 1.0045x, 1/451)
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_payload_at_99_9_percent_is_the_readme_ratio_to_the_entropy_bound(seed):
    tensors = _update(seed)
    assert sum(t.numel() for t in tensors.values()) == 1_663_370
    payload, bound_bits = _sparse_payload(tensors, 0.999)
    ratio = 8 * len(payload) / bound_bits
    dense = len(codec.encode_params(tensors, "fp32"))
    print(f"\n{len(payload)} B, {ratio:.5f}x the bound, 1/{dense / len(payload):.1f} of dense")
    assert 1.0 < ratio <= 1.006
    assert dense / len(payload) >= 448
    for t, r in zip(tensors.values(), codec.decode(payload), strict=True):  # sent as built
        flat = t.flatten()
        if isinstance(r, codec.Sparse):
            assert r.indices.numel() == math.ceil(0.001 * t.numel())
            assert torch.equal(r.values, flat[r.indices])
        else:
            assert torch.equal(r.values.flatten(), flat)


def test_the_docs_still_state_these_figures():
    """If the documented figures change, this file's bars must follow them."""
    page = Path(__file__).resolve().parents[1] / "docs" / "concepts" / "compression.md"
    text = " ".join(page.read_text().split())
    assert "14,765 B against an entropy bound" in text and "14,699 B (1.0045×)" in text
    assert "1/451 of dense fp32" in text
