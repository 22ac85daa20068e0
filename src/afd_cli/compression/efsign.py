"""``compression=efsign``: EF-signSGD, the scaled sign with error feedback (Karimireddy et al.
2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", Algorithm 1).

Per client and tensor, with the client's residual ``e`` (zero at first):

    p = update + e                  # the update is the client's lr-scaled step, trained - received
    sent = (||p||_1 / d) * sign(p)  # d = entries of the tensor
    e = p - sent

as epfml/error-feedback-SGD's ``scaled_sign`` and ``ErrorFeedbackSGD.step`` do per parameter
(optimizers/ErrorFeedbackSGD.py, lines 6-11 and 152-167, commit 0f92041). ``e`` lives in
full-model coordinates in the run's store (:mod:`.coded`).

Wire format (``SIGN`` record, after the tag and dims of :mod:`.codec`): ``scale:f32`` then
``ceil(d / 8)`` bytes of sign bits, most significant bit first, 1 for ``p >= 0``. One
departure: ``torch.sign(0) = 0`` in the reference, but one bit cannot say zero, so a zero
entry is sent as ``+scale`` (its error ``-scale`` stays in ``e``). With ``downlink=true`` the
download is the scaled sign of ``current - copy`` per client (:mod:`.delta`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import registry
from . import codec
from .base import Params, View
from .coded import CodedCompressor, CodedOptions

_SCALE = struct.Struct("<f")


@dataclass(frozen=True)
class SignRecord:
    """``scale * (+1 where the bit is set, else -1)`` for a tensor of ``shape``."""

    shape: tuple[int, ...]
    scale: float
    bits: np.ndarray  # packed, uint8, ceil(n / 8)

    def to_dense(self) -> torch.Tensor:
        n = math.prod(self.shape)
        signs = np.unpackbits(self.bits, count=n).astype(np.float32) * 2.0 - 1.0
        return torch.from_numpy(signs * np.float32(self.scale)).reshape(self.shape)


def scaled_sign(x: torch.Tensor) -> SignRecord:
    """The record of ``(||x||_1 / d) * sign(x)`` (fp32 scale, zero counted as positive)."""
    flat = x.detach().reshape(-1).to(torch.float32)
    scale = float(flat.abs().sum() / max(1, flat.numel()))
    bits = np.packbits((flat >= 0).cpu().numpy())
    return SignRecord(tuple(int(d) for d in x.shape), _SCALE.unpack(_SCALE.pack(scale))[0], bits)


def _put(out: bytearray, rec: SignRecord) -> None:
    out += _SCALE.pack(rec.scale)
    out += rec.bits.tobytes()


def _get(buf: memoryview, pos: int, shape: tuple[int, ...]) -> tuple[SignRecord, int]:
    (scale,) = _SCALE.unpack_from(buf, pos)
    nbytes = -(-math.prod(shape) // 8)
    if len(buf) < pos + 4 + nbytes:
        raise ValueError("truncated sign record")
    bits = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=pos + 4).copy()
    return SignRecord(shape, scale, bits), pos + 4 + nbytes


codec.register_kind(codec.Kind.SIGN, SignRecord, _put, _get)


@dataclass
class EFSignOptions(CodedOptions):
    """EF-signSGD: no options of its own (the scale is the mean magnitude per tensor)."""


@registry.compressor("efsign")
class EFSignCompressor(CodedCompressor):
    """Scaled signs with the client's residual (error feedback); optionally on the downlink."""

    options = EFSignOptions
    feedback = True

    def code(self, client: int, view: View, tensors: Params, direction: int) -> dict[str, Any]:
        """One scaled-sign record per tensor."""
        return {name: scaled_sign(t) for name, t in tensors.items()}
