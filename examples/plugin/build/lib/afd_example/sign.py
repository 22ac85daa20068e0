"""A compressor: each uploaded tensor as its signs (1 bit per entry) times its mean magnitude.

Downloads stay dense fp32. No error feedback: what the sign loses is lost (EF-signSGD keeps it).
The upload is this module's own format: per tensor its shape, then a float32 scale and the
packed sign bits (or, under ``dense_below`` entries, the fp32 values).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from afd_cli import registry
from afd_cli.compression import codec
from afd_cli.compression.base import CompressionOptions, Compressor, Params, RoundContext, View
from afd_cli.options import option


@dataclass
class SignOptions(CompressionOptions):
    dense_below: int = option(1024, "tensors with fewer entries go dense fp32 (biases)", ge=0)


@registry.compressor("sign")
class ScaledSign(Compressor):
    options = SignOptions

    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        self.remember(weights)
        return codec.encode_params(weights)

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        return codec.decode_params(payload, self.order())

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        self.remember(update)
        out = bytearray()
        for t in update.values():
            x = t.detach().float().cpu().numpy()
            out += struct.pack(f"<B{x.ndim}I", x.ndim, *x.shape)
            flat = x.ravel()
            if flat.size < self.opts.dense_below:
                out += b"\0" + flat.astype("<f4").tobytes()
            else:
                scale = float(np.abs(flat).mean())
                out += b"\1" + struct.pack("<f", scale) + np.packbits(flat >= 0).tobytes()
            self.count(flat.size, flat.size)  # every entry is sent (at one bit)
        return bytes(out)

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        out, pos = {}, 0
        for name in self.order():
            ndim = payload[pos]
            shape = struct.unpack_from(f"<{ndim}I", payload, pos + 1)
            n, kind, pos = math.prod(shape), payload[pos + 1 + 4 * ndim], pos + 2 + 4 * ndim
            if kind == 0:
                values = np.frombuffer(payload, "<f4", n, pos).copy()
                pos += 4 * n
            else:
                (scale,) = struct.unpack_from("<f", payload, pos)
                packed = np.frombuffer(payload, np.uint8, (n + 7) // 8, pos + 4)
                values = np.where(np.unpackbits(packed)[:n], scale, -scale).astype(np.float32)
                pos += 4 + (n + 7) // 8
            out[name] = torch.from_numpy(values).reshape(shape)
        return out
