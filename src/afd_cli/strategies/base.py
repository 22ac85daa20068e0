"""The Strategy interface: which sub-model each client gets, and what the server learns after.

The round loop calls ``select`` before sending and ``observe`` after aggregating; it never
looks inside. FedAvg, Federated Dropout and both Adaptive Federated Dropout variants differ
only here.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..submodel import View


class Strategy(Protocol):
    name: str

    def select(self, round: int, clients: list[int]) -> list[View]:
        """One :class:`View` (kept units per droppable layer) per sampled client."""
        ...

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        """Server-side update after the round (AFD score maps); costs no bytes."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Stateless:
    """Mixin for strategies with no server-side state (FedAvg, FD): nothing to observe or save."""

    def observe(
        self, round: int, clients: list[int], losses: list[float], num_samples: list[int]
    ) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
