"""What goes on the wire: the codec and the compressors behind ``compression=``.

The contract is :class:`~.base.Compressor`; each compressor registers itself with
``@registry.compressor(name)`` in its own module here (or in another package, by entry point).
Per-client state lives in full-model coordinates in the run's
:class:`~afd_cli.state.StateStore`, so pass the full ``shapes`` whenever clients get
sub-models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .. import registry
from ..options import Options
from .base import Compressor, Params, RoundContext, View
from .codec import decode, decode_params, encode, encode_params, entropy_bound_bits

if TYPE_CHECKING:
    from .state import Shapes, StateStore


def build(opts: Options, setup: registry.Setup, **kwargs: Any) -> Compressor:
    """The compressor ``opts.name`` names, built from its options and the run's setup."""
    return registry.load("compression", opts.name)(opts, setup, **kwargs)


def make(
    name: str,
    shapes: Shapes | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    store: StateStore | None = None,
    backend: str | None = None,
    **values: Any,
) -> Compressor:
    """A compressor built by hand (tests, benchmarks): ``make("dgc", shapes, sparsity=0.99)``.

    ``values`` may name any ``compression.*`` key; those ``name`` does not read are ignored,
    as in a config (a key no compressor declares is an error). ``backend`` (numpy | torch):
    the sparse compressors' upload-state backend."""
    from ..config import options_of
    from ..state import StateStore

    values = registry.read_values("compression", name, values)

    setup = registry.Setup(
        None,  # type: ignore[arg-type]  # compressors do not read the model
        {k: tuple(s) for k, s in (shapes or {}).items()},
        seed,
        torch.device(device if device is not None else "cpu"),
        store if store is not None else StateStore(),
    )
    extra = {"backend": backend} if backend is not None else {}
    return build(options_of("compression", name, **values), setup, **extra)


__all__ = [
    "Compressor",
    "Params",
    "RoundContext",
    "View",
    "build",
    "decode",
    "decode_params",
    "encode",
    "encode_params",
    "entropy_bound_bits",
    "make",
]
