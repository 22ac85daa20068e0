"""The Strategy contract: which sub-model each client gets, and what the server learns after.

The round loop calls :meth:`Strategy.select` before sending and :meth:`Strategy.observe` after
aggregating; the checkpoint calls :meth:`Strategy.state_dict` / :meth:`Strategy.load_state_dict`.
That is everything the loop, the checkpoint and torchrun ever call. FedAvg, Federated Dropout
and both Adaptive Federated Dropout variants differ only here. Three optional hooks serve
model-heterogeneous strategies (HeteroFL, FjORD, FedRolex; :mod:`.hetero`): a plan of local
steps (:meth:`Strategy.local_plan`, FjORD's width per step), what each client's messages cost
(:meth:`Strategy.observe_cost`, for widths chosen from the clock) and the sub-models whose
test accuracy is reported per width (:meth:`Strategy.eval_views`).

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
    from ..federated.client import StepPlan
    from ..metrics import ClientRow
    from ..registry import Setup


class Strategy:
    """Base of every strategy; a subclass must implement :meth:`select`."""

    options: ClassVar[type[Options]] = NoOptions
    # True when :meth:`local_plan` can return a plan (the batched trainer cannot run one)
    plans_steps: ClassVar[bool] = False

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

    def local_plan(self, round: int, client: int, view: View, steps: int) -> StepPlan | None:
        """How the client trains its ``view`` over its ``steps`` local steps: None (the
        default) trains the whole view at every step; a :class:`StepPlan` gives the units of
        each step (a prefix of the view's units) and whether to self-distil. A pure function
        of its arguments and the run seed: every torchrun process asks it for every client."""
        return None

    def observe_cost(self, round: int, rows: list[ClientRow], views: list[View]) -> None:
        """After the round, in every process: each client's ``clients.csv`` row (bytes each
        way as encoded, FLOPs, dropped) with its view, in client order. Default: nothing."""

    def eval_views(self) -> dict[float, View]:
        """Sub-models to test besides the full model, by nominal width (HeteroFL's
        evaluation); each is evaluated on the test set at the rounds its strategy says
        (:meth:`eval_due`). Default: none."""
        return {}

    def eval_due(self, round: int, last: bool) -> bool:
        """Whether :meth:`eval_views` are tested after round ``round`` (1-based), an
        evaluation round; ``last``: the run's final round. Default: never."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Server-side state for the checkpoint (plain data and tensors). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
