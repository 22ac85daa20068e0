"""(c): payload sizes against the entropy bound."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.table import Table

from . import console


def codec_sizes() -> list[dict[str, Any]]:
    """(c): cnn_mnist-sized random tensors, sparse top-k and dense, against the bound."""
    from .. import models
    from ..compression.codec import (
        Dense,
        Sparse,
        decode,
        encode,
        encode_params,
        entropy_bound_bits,
    )

    model = models.build("cnn_mnist", (1, 28, 28), 10)
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}
    n_total = sum(t.numel() for t in tensors.values())
    rows = []
    for fmt in ("fp32", "fp16", "q8"):
        size = len(encode_params(tensors, fmt))
        rows.append(
            {
                "payload": f"dense {fmt}",
                "bytes": size,
                "bound_bytes": n_total * {"fp32": 4, "fp16": 2, "q8": 1}[fmt],
                "bits_per_sent_entry": 8 * size / n_total,
            }
        )
    for sparsity in (0.99, 0.999):
        records, bound_bits, index_bytes, k_total, n_sparse = [], 0.0, 0, 0, 0
        for t in tensors.values():
            n = t.numel()
            if n < 1024:  # biases go dense, as in topk / dgc
                records.append(Dense(t))
                bound_bits += 32 * n
                continue
            k = max(1, math.ceil((1 - sparsity) * n))
            idx = torch.sort(t.flatten().abs().topk(k).indices).values
            rec = Sparse(tuple(t.shape), idx, t.flatten()[idx])
            records.append(rec)
            index_bytes += len(encode([rec])) - 8 - 4 * k  # minus header and values
            bound_bits += entropy_bound_bits(n, k) + 32 * k
            k_total, n_sparse = k_total + k, n_sparse + n
        enc_s, dec_s = math.inf, math.inf
        for _ in range(3):  # best of 3: the codec sits on every client's upload
            t0 = time.perf_counter()
            payload = encode(records)
            t1 = time.perf_counter()
            decode(payload)
            enc_s, dec_s = min(enc_s, t1 - t0), min(dec_s, time.perf_counter() - t1)
        size = len(payload)
        rows.append(
            {
                "payload": f"sparse fp32 {sparsity:.1%}",
                "bytes": size,
                "encode_ms": 1e3 * enc_s,
                "decode_ms": 1e3 * dec_s,
                "bound_bytes": bound_bits / 8,
                "sent_entries": k_total,
                "index_bits_per_entry": 8 * index_bytes / k_total,
                "bound_index_bits_per_entry": sum(
                    entropy_bound_bits(t.numel(), max(1, math.ceil((1 - sparsity) * t.numel())))
                    for t in tensors.values()
                    if t.numel() >= 1024
                )
                / k_total,
            }
        )
    for r in rows:
        r["over_bound_pct"] = 100 * (r["bytes"] / r["bound_bytes"] - 1)
        r["vs_dense_fp32"] = rows[0]["bytes"] / r["bytes"]
    return rows


def _print_codec(rows: list[dict[str, Any]]) -> None:
    t = Table(title="(c) codec: one cnn_mnist-sized update (1.66 M fp32 entries)")
    for c in ("payload", "bytes", "bound bytes", "over bound", "x smaller than fp32"):
        t.add_column(c, justify="left" if c == "payload" else "right")
    t.add_column("index bits/entry (bound)", justify="right")
    t.add_column("encode / decode ms", justify="right")
    for r in rows:
        idx = (
            f"{r['index_bits_per_entry']:.2f} ({r['bound_index_bits_per_entry']:.2f})"
            if "index_bits_per_entry" in r
            else "-"
        )
        t.add_row(
            r["payload"],
            f"{r['bytes']:,}",
            f"{r['bound_bytes']:,.0f}",
            f"{r['over_bound_pct']:+.2f}%",
            f"{r['vs_dense_fp32']:.1f}",
            idx,
            f"{r['encode_ms']:.1f} / {r['decode_ms']:.1f}" if "encode_ms" in r else "-",
        )
    console.print(t)
