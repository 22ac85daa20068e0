"""``compression=hadamard``: Federated Dropout's lossy compression (Caldas et al. 2018).

Caldas et al. (arXiv 1812.07210, section 3) send the sub-model *and* the update through a
lossy code: a random rotation, subsampling (the update only), then probabilistic quantisation
(:mod:`.hadamard` has the maths, :mod:`.codec` the record layout). Here:

* **upload** (always): each tensor of the update is rotated, subsampled to
  ``compression.subsample`` of its rotated coordinates (rescaled, unbiased) and quantised to
  ``compression.bits`` bits per kept coordinate;
* **download** (``compression.downlink=true``; otherwise dense fp32 like ``topk``): the
  sub-model's *weights* are rotated and quantised to ``compression.bits_down`` bits (default
  ``bits``), never subsampled, as in the paper. Each download is a fresh, unbiased code of
  the current model: no per-client copies, no state. The client trains from what it decoded
  and uploads ``trained - decoded``, so the download's noise never enters the global model
  except through training.

Tensors under ``compression.dense_below`` entries (biases) go dense fp32 both ways. There is
no error feedback: the code is unbiased, as in Caldas et al. and Konečný et al.

Each record carries its own 32-bit seed, drawn from ``(run seed, round, client, direction,
tensor)``, so a run (and a resumed run) repeats exactly. Encoding and decoding run where the
tensors are (the model's device); only packed codes and per-chunk scales cross to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import registry
from ..options import option
from . import codec, hadamard
from .base import CompressionOptions, Compressor, Params, RoundContext, View

if TYPE_CHECKING:
    from ..registry import Setup

UP, DOWN = 0x55, 0xD0  # directions, mixed into the per-message seeds
_BITS = {"ge": 1, "le": hadamard.MAX_BITS}


@dataclass
class HadamardOptions(CompressionOptions):
    """Caldas et al.'s lossy code (:mod:`.hadamard` has the maths)."""

    bits: int = option(8, "bits per rotated upload coordinate", **_BITS)
    bits_down: int | None = option(
        None, "bits of the downlink (downlink=true); null = bits", **_BITS
    )
    subsample: float = option(1.0, "fraction of rotated upload coordinates sent", gt=0, le=1)
    block: int = option(
        4096,
        "rotation and quantisation block",
        test=lambda b: 2 <= b <= 2**16 and b & (b - 1) == 0,
        expected="a power of two in [2, 65536]",
    )
    dense_below: int = option(1024, "tensors with fewer entries go dense fp32 (biases)", ge=0)
    downlink: bool = option(
        False, "also send the sub-model rotated and quantised (never subsampled)", strict=True
    )


@registry.compressor("hadamard")
class HadamardCompressor(Compressor):
    """Rotated, subsampled, stochastically quantised uploads; optionally the same downloads."""

    options = HadamardOptions

    def __init__(self, opts: HadamardOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.bits = opts.bits
        self.bits_down = opts.bits_down if opts.bits_down is not None else opts.bits
        self.subsample = opts.subsample
        self.block = opts.block
        self.dense_below = opts.dense_below
        self.downlink = opts.downlink

    def _seeds(self, client: int, direction: int, count: int) -> list[int]:
        """One 32-bit seed per tensor of a message, a pure function of the run's position."""
        rng = np.random.default_rng([self.seed, self.round, client, direction])
        return rng.integers(0, 2**32, size=count, dtype=np.uint64).tolist()

    def _encode(
        self, client: int, params: Params, direction: int, bits: int, subsample: float
    ) -> bytes:
        seeds = self._seeds(client, direction, len(params))
        records: list[codec.Record] = []
        for seed, t in zip(seeds, params.values(), strict=True):
            t = t.detach().to(self.device, torch.float32)
            n = t.numel()
            if n < self.dense_below:
                records.append(codec.Dense(t, "fp32"))
                if direction == UP:
                    self.count(n, n)
                continue
            rec = hadamard.encode_tensor(
                t, bits=bits, block=self.block, seed=seed, subsample=subsample
            )
            records.append(rec)
            if direction == UP:
                self.count(rec.m, hadamard.rotated_size(n, self.block))
        return codec.encode(records)

    def _decode(self, payload: bytes) -> Params:
        names = self.order()
        records = codec.decode(payload)
        if len(records) != len(names):
            raise ValueError(f"payload has {len(records)} tensors, expected {len(names)}")
        out: Params = {}
        for name, rec in zip(names, records, strict=True):
            if isinstance(rec, codec.Rotated):
                out[name] = hadamard.decode_record(rec, self.device)
            elif isinstance(rec, codec.Dense):
                out[name] = rec.values.to(self.device)
            else:
                raise ValueError(f"{name}: unexpected {type(rec).__name__} record")
        return out

    # -- Compressor protocol --------------------------------------------------------------
    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """The sub-model rotated and quantised to ``bits_down`` (dense fp32 without downlink)."""
        self.remember(weights)
        if not self.downlink:
            return codec.encode_params(weights, "fp32")
        return self._encode(client, weights, DOWN, self.bits_down, 1.0)

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The weights the client trains from (decoded on the model's device)."""
        return self._decode(payload)

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """The update rotated, subsampled and quantised to ``bits``."""
        self.round = ctx.round
        self.remember(update)
        return self._encode(client, update, UP, self.bits, self.subsample)

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """The unbiased estimate of the client's update (sub-model shape)."""
        return self._decode(payload)
