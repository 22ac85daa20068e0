"""The Strategy contract: which sub-model each client gets, and what the server learns after.

The round loop calls :meth:`Strategy.select` before sending and :meth:`Strategy.observe` after
aggregating; the checkpoint calls :meth:`Strategy.state_dict` / :meth:`Strategy.load_state_dict`.
That is everything the loop, the checkpoint and torchrun ever call. FedAvg, Federated Dropout
and both Adaptive Federated Dropout variants differ only here.

A strategy is one module with its options dataclass and one ``conf/strategy/<name>.yaml``::

    @dataclass
    class HalfOptions(Options):
        rate: float = option(0.5, "fraction of units dropped", ge=0, lt=1)

    @registry.strategy("half")
    class Half(Strategy):
        options = HalfOptions

        def select(self, round, clients):
            ...

It is built once per run as ``cls(options, setup)`` (:class:`~afd_cli.registry.Setup`: the full
model, its shapes, the run seed, the device and the per-client state store). Randomness must be
a pure function of ``(setup.seed, round, client)`` so that a resumed run repeats exactly, and
``select`` must give every process of a torchrun run the same views (it runs in all of them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..options import NoOptions, Options
from ..submodel import View

if TYPE_CHECKING:
    from ..registry import Setup


class Strategy:
    """Base of every strategy; a subclass must implement :meth:`select`."""

    options: ClassVar[type[Options]] = NoOptions

    def __init__(self, opts: Options, setup: Setup) -> None:
        self.name = opts.name
        self.opts = opts
        self.model, self.seed, self.store = setup.model, setup.seed, setup.store
        self.full = View(setup.model)  # the identity view: every unit kept

    def select(self, round: int, clients: list[int]) -> list[View]:
        """One :class:`View` (kept units per droppable layer) per sampled client, in order."""
        raise NotImplementedError

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        """After aggregation: the clients whose updates were aggregated, their mean local
        training losses and sample counts (server side, costs no bytes). Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Server-side state for the checkpoint (plain data and tensors). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
