"""What a run needs that its config alone does not say -- the GPU it asks for, at least one
training sample for every client, memory for its model -- checked before the run directory is
claimed, so an impossible run costs one line and leaves nothing behind.

The dataset loaded here is kept for the run that follows in this process (``build.load_data``
caches the last one), so checking costs no second load.
"""

from __future__ import annotations

import os

import torch

from .. import models, registry
from ..config import ConfigError, RootConfig
from . import build

COPIES_PER_CLIENT = 4  # received, trained, update, decoded update (federated/round.py)


def check(cfg: RootConfig) -> None:
    """Raise ConfigError (one line naming the key) if the run cannot be made here."""
    device = build.resolve_device(cfg.device)
    ds = build.load_data(cfg)
    parts = build.make_partition(cfg, ds)  # refuses impossible partitions, names the key
    empty = sum(1 for p in parts if len(p) == 0)
    if empty:
        raise ConfigError(
            f"schedule.num_clients={cfg.schedule.num_clients}: partition={cfg.partition.name} "
            f"leaves {empty} clients without a training sample (dataset={cfg.dataset.name} has "
            f"{len(ds.train)}); lower schedule.num_clients"
        )
    _check_memory(cfg, ds, device)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where it cannot tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(cfg: RootConfig, ds, device: torch.device) -> None:
    """The model's parameters counted without allocating them (meta device); a round holds the
    global model, an evaluation copy and a few copies per client in flight."""
    factory = registry.load("model", cfg.model.name)
    with torch.device("meta"):
        params = models.num_params(factory(ds.input_shape, ds.num_classes, cfg.model))
    in_flight = min(cfg.schedule.clients_per_round, cfg.trainer.chunk or 32)
    need = 4 * params * (2 + COPIES_PER_CLIENT * in_flight)
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, "GPU memory"
    else:
        have, where = physical_memory(), "memory"
    if have is None or need <= have:
        return
    reads = [f"model.{k}" for k in registry.get("model", cfg.model.name).reads]
    fix = f"lower {' or '.join(reads)}" if reads else "choose a smaller model"
    raise ConfigError(
        f"model={cfg.model.name} has {params:,} parameters ({4 * params / 1e9:,.1f} GB in "
        f"fp32); a round needs about {need / 1e9:,.0f} GB, more than this machine's "
        f"{have / 1e9:,.0f} GB of {where}; {fix}"
    )
