"""Whole-tensor compressors: ``none`` (fp32), ``fp16`` and ``q8``, in both directions.

Downloads are quantised too, and ``decode_down`` returns the dequantised weights: that is
what a client really trains from, so the accuracy cost of the format shows up in the run.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from .. import registry
from . import codec
from .base import CompressionOptions, Compressor, Params, RoundContext, View

if TYPE_CHECKING:
    from ..registry import Setup

FORMATS = {"none": "fp32", "fp16": "fp16", "q8": "q8"}  # option name -> wire format


@registry.compressor(*FORMATS)
class DenseCompressor(Compressor):
    """Every tensor dense in one format (fp32 | fp16 | q8, from the option's name)."""

    options = CompressionOptions

    def __init__(self, opts: CompressionOptions, setup: Setup) -> None:
        super().__init__(opts, setup)
        self.fmt = FORMATS[opts.name]

    def encode_down(self, client: int, weights: Params, view: View) -> bytes:
        """Whole sub-model in ``fmt``."""
        self.remember(weights)
        return codec.encode_params(weights, self.fmt)

    def decode_down(self, client: int, payload: bytes, view: View) -> Params:
        """The (dequantised) weights the client trains from."""
        return codec.decode_params(payload, self.order())

    def encode_up(self, client: int, update: Params, view: View, ctx: RoundContext) -> bytes:
        """Whole update in ``fmt``."""
        self.round = ctx.round
        self.remember(update)
        n = sum(t.numel() for t in update.values())
        self.count(n, n)
        return codec.encode_params(update, self.fmt)

    def decode_up(self, client: int, payload: bytes, view: View) -> Params:
        """The (dequantised) update to aggregate."""
        return codec.decode_params(payload, self.order())

    def decode_up_part(
        self, client: int, payload: bytes, view: View, names: Collection[str]
    ) -> Params:
        return codec.decode_params(payload, self.order(), keep=names)
