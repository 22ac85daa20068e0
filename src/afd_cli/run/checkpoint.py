"""``checkpoint.pt``: writing it, reading it back, and what a torchrun run needs of it.

A checkpoint holds the config it was made with (for the resume check), the global weights,
the strategy's, compressor's and server step's state, the :class:`~.state.RunState`, the
round's rows (``row``: see :mod:`afd_cli.metrics`) and the index of the run's client-state
files (``store``). It is incremental: :meth:`StateStore.commit` writes only the per-client
state that changed since it was last written, under new file names, then ``checkpoint.pt`` is
replaced atomically (tmp file + ``os.replace``) and only then are the files it no longer names
deleted. It is written before the round's rows, so the row's ``wall_s`` includes it; it holds
that row too, so a kill between the two appends it on resume instead of recomputing the run.

Under torchrun every process runs the loop with its share of the clients and only rank 0
writes: the checkpoint is the full one (every process's per-client state gathered into rank
0's file, no ``state/`` index; each process spills to a private temporary directory), and a
one-process checkpoint's ``state/`` is read into that form on resume (:func:`inline_store`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import compression, registry, strategies
from ..config import ConfigError, RootConfig
from ..federated import team
from ..federated.round import SOLO
from ..state import StateFileError, StateStore, check_index
from .rundir import STATE_DIR, tmp

if TYPE_CHECKING:
    from .build import Simulation
    from .state import RunState


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read: one line naming the file."""


def load(path: Path) -> dict[str, Any]:
    """``torch.load`` of a run's checkpoint; anything wrong with the file (cut, garbage, not a
    checkpoint, a state file it names missing) is a :class:`CheckpointError` naming it and
    how to start over."""
    try:
        # host first: generator states and client buffers must stay CPU tensors on a GPU run
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or not {"config", "weights", "state"} <= ckpt.keys():
            raise ValueError("not an afd checkpoint")
        int(ckpt["state"]["round"])
        # checkpoints from before state.* existed kept everything in fp32
        ckpt["config"].setdefault("state", {"dtype": "fp32"})
        # before the server step was its own part, its momentum was in the compressor's state
        if "server" not in ckpt and isinstance(ckpt.get("compressor"), dict):
            m = ckpt["compressor"].pop("server_m", None)
            ckpt["server"] = {"server_m": m} if m is not None else {}
    except Exception as e:
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 80 else why[:79].rsplit(" ", 1)[0] + " ..."
        raise CheckpointError(
            f"{path} is damaged and cannot be read ({type(e).__name__}: {why}); start over "
            f"with: afd resume {path.parent} --from-scratch"
        ) from None
    if "store" in ckpt:
        try:
            check_index(ckpt["store"], path.parent / STATE_DIR)
        except StateFileError as e:
            raise CheckpointError(
                f"{path} names client state that cannot be read ({e}); start over with: "
                f"afd resume {path.parent} --from-scratch"
            ) from None
    return ckpt


def save(
    path: Path | None,
    config: dict[str, Any],
    sim: Simulation,
    state: RunState,
    last: dict[str, Any],
) -> int:
    """Write the checkpoint (see the module docstring); returns the bytes it wrote.

    ``config``: what the resume check compares (:func:`afd_cli.run.resume.comparable`).
    ``path`` None (a torchrun process other than rank 0): only hand in this process's state.
    """
    fed = sim.fed
    if fed.team is not SOLO:
        ckpt = {
            "config": config,
            "weights": {k: w.cpu() for k, w in sim.weights.items()},
            "strategy": fed.strategy.state_dict(),
            "compressor": team.gathered_state(fed.compressor.state_dict()),
            "server": fed.server.state_dict(),
            "state": state.to_dict(),
            "row": dict(last),
        }
        if path is None:
            return 0
        return _replace(path, ckpt)
    assert path is not None
    before = sim.store.bytes_written
    index = sim.store.commit()  # changed client state, under new file names
    with sim.store.references():  # per-client state: only its namespace, the index has it
        strategy_state, compressor_state = fed.strategy.state_dict(), fed.compressor.state_dict()
    written = _replace(
        path,
        {
            "config": config,
            "weights": {k: w.cpu() for k, w in sim.weights.items()},
            "strategy": strategy_state,
            "compressor": compressor_state,
            "server": fed.server.state_dict(),
            "state": state.to_dict(),
            "store": index,
            "row": dict(last),
        },
    )
    sim.store.committed()  # only now: the files the new index no longer names
    return sim.store.bytes_written - before + written


def _replace(path: Path, ckpt: dict[str, Any]) -> int:
    part = path.with_name(tmp(path.name))
    torch.save(ckpt, part)
    os.replace(part, path)
    return path.stat().st_size


def restore(sim: Simulation, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's weights and plug-in state into ``sim`` (its store restored or
    inlined already)."""
    with torch.no_grad():
        for k, w in sim.weights.items():
            w.copy_(ckpt["weights"][k])
    fed = sim.fed
    fed.strategy.load_state_dict(ckpt["strategy"])
    fed.compressor.load_state_dict(team.my_share(ckpt["compressor"]))
    fed.server.load_state_dict(ckpt.get("server", {}))


def inline_store(ckpt: dict[str, Any], cfg: RootConfig, sim: Simulation, directory: Path) -> None:
    """Replace a one-process checkpoint's state-store references by the per-client values
    (the form a torchrun run gathers and loads), read through throwaway owners."""
    store = StateStore(None, directory, cfg.state.dtype)
    shapes = {k: tuple(w.shape) for k, w in sim.weights.items()}
    setup = registry.Setup(sim.model, shapes, cfg.seed, sim.device, store)
    strategy = strategies.build(cfg.strategy, setup)
    compressor = compression.build(cfg.compression, setup)
    store.restore(ckpt.pop("store"))
    strategy.load_state_dict(ckpt["strategy"])
    compressor.load_state_dict(ckpt["compressor"])
    ckpt["strategy"], ckpt["compressor"] = strategy.state_dict(), compressor.state_dict()
