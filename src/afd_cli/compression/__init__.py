"""What goes on the wire: the codec and the compressors behind ``compression.name``.

``build(cfg)`` returns the :class:`~.base.Compressor` for a :class:`CompressionConfig`.
Pass ``shapes`` (full-model ``{name: shape}``, in parameter order) whenever clients get
sub-models: per-client state lives in full-model coordinates and the view alone does not
tell the full shapes (a view may instead expose a ``full_shapes`` mapping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Compressor, Params, RoundContext, View
from .codec import decode, decode_params, encode, encode_params, entropy_bound_bits
from .dense import DenseCompressor
from .dgc import DGCCompressor
from .state import Shapes, StateStore
from .topk import TopKCompressor

if TYPE_CHECKING:
    from afd_cli.config import CompressionConfig

NAMES = ("none", "fp16", "q8", "topk", "dgc")

__all__ = [
    "NAMES",
    "Compressor",
    "DGCCompressor",
    "DenseCompressor",
    "Params",
    "RoundContext",
    "TopKCompressor",
    "View",
    "build",
    "decode",
    "decode_params",
    "encode",
    "encode_params",
    "entropy_bound_bits",
]


def build(
    cfg: CompressionConfig,
    shapes: Shapes | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    store: StateStore | None = None,
) -> Compressor:
    """The compressor named by ``cfg.name``; ``seed`` drives DGC's threshold sampling.

    ``device``: the model's device. On a GPU the sparse compressors keep their upload state
    there and encode a round's clients batched (torch backend); on CPU they use numpy.
    ``store``: where per-client state lives (the run's, with its memory budget); a private,
    unbounded one when None.
    """
    if cfg.name == "none":
        return DenseCompressor("none", "fp32", shapes)
    if cfg.name in ("fp16", "q8"):
        return DenseCompressor(cfg.name, cfg.name, shapes)
    if cfg.name == "topk":
        return TopKCompressor(cfg, shapes, device, store=store)
    if cfg.name == "dgc":
        return DGCCompressor(cfg, shapes, seed, device, store=store)
    raise ValueError(f"compression.name={cfg.name!r}; choose one of: {', '.join(NAMES)}")
