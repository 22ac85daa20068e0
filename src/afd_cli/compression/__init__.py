"""What goes on the wire: the codec and the compressors behind ``compression.name``.

``build(cfg)`` returns the :class:`~.base.Compressor` for a :class:`CompressionConfig`.
Pass ``shapes`` (full-model ``{name: shape}``, in parameter order) whenever clients get
sub-models: per-client state lives in full-model coordinates and the view alone does not
tell the full shapes (a view may instead expose a ``full_shapes`` mapping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import registry
from .base import Compressor, Params, RoundContext, View
from .codec import decode, decode_params, encode, encode_params, entropy_bound_bits
from .dense import DenseCompressor
from .dgc import DGCCompressor
from .lossy import HadamardCompressor
from .server import ServerMomentum
from .state import Shapes, StateStore
from .topk import TopKCompressor

if TYPE_CHECKING:
    from afd_cli.config import CompressionConfig

NAMES = registry.names("compression")

__all__ = [
    "NAMES",
    "Compressor",
    "DGCCompressor",
    "DenseCompressor",
    "HadamardCompressor",
    "Params",
    "RoundContext",
    "ServerMomentum",
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
    """The compressor named by ``cfg.name``; ``seed`` drives DGC's threshold sampling and the
    hadamard codec's per-message seeds. ``compression.server_momentum > 0`` wraps it in
    :class:`ServerMomentum` (momentum on the aggregate).

    ``device``: the model's device. On a GPU the sparse compressors keep their upload state
    there and encode a round's clients batched (torch backend); on CPU they use numpy. The
    hadamard codec encodes and decodes on ``device``.
    ``store``: where per-client state lives (the run's, with its memory budget); a private,
    unbounded one when None.
    """
    comp = registry.load("compression", cfg.name).from_config(
        cfg, shapes=shapes, seed=seed, device=device, store=store
    )
    if cfg.server_momentum > 0:
        return ServerMomentum(comp, cfg.server_momentum, cfg.server_lr)  # type: ignore[return-value]
    return comp
