"""The server's step on the round's aggregate: plain FedAvg, or momentum on the aggregate.

Plain FedAvg adds the round's sample-weighted, mask-aware mean update to the global model.
``compression.server_momentum = b`` (any compressor) moves DGC's momentum from the clients to
the server, which sees every round (FetchSGD, Rothchild et al., ICML 2020, arXiv 2007.07682,
Algorithm 1; Global Momentum Compression, Shi et al., arXiv 1905.12948; FedAvgM, Hsu et al.,
arXiv 1909.06335):

    delta_t = the round's aggregate (sample-weighted, mask-aware mean of decoded updates)
    m_t     = b * m_{t-1} + delta_t
    w_{t+1} = w_t + lr * m_t                   (lr = compression.server_lr)

with ``b = 0, lr = 1`` being plain FedAvg. Why: DGC's momentum correction assumes every worker
reports every step; with 10% participation a client reports about once in ten rounds, so its
momentum ``u`` and residual ``v`` advance only then and against a stale model. The remedy is
this with momentum correction off on the clients (``compression.momentum_correction=false``:
plain error feedback there), so momentum is applied once per round, on the fresh aggregate.
``lr = 1 - b`` keeps the long-run step of FedAvg (a low-pass filter of the aggregate);
``lr = 1`` amplifies it by ``1 / (1 - b)`` as FetchSGD / FedAvgM do. Unlike FetchSGD the
server does not sparsify its step: the model update stays dense.

The momentum buffer covers the whole model (fp32 on the model's device, 4 bytes per
parameter) and moves every entry, including those no client held this round (sub-models):
heavy-ball momentum keeps coasting. It is part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from .aggregate import MaskedMean

Params = dict[str, torch.Tensor]


class ServerStep:
    """Plain FedAvg: ``w += mean``."""

    def apply(self, mean: MaskedMean, weights: Params) -> None:
        mean.apply_(weights)

    def nbytes(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ServerMomentum(ServerStep):
    """``m = b*m + mean; w += lr * m`` (see the module docstring)."""

    def __init__(self, momentum: float, lr: float = 1.0) -> None:
        if not 0 <= momentum < 1 or lr <= 0:
            raise ValueError(f"server momentum {momentum} must be in [0, 1), lr {lr} > 0")
        self.momentum, self.lr = momentum, lr
        self.m: Params | None = None

    def apply(self, mean: MaskedMean, weights: Params) -> None:
        delta = mean.delta()
        if self.m is None:
            self.m = {k: torch.zeros_like(w) for k, w in weights.items()}
        for k, w in weights.items():
            m = self.m[k]
            if m.device != w.device:
                m = self.m[k] = m.to(w.device)
            m.mul_(self.momentum).add_(delta[k])
            w.add_(m, alpha=self.lr)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.m or {}).values())

    def state_dict(self) -> dict[str, Any]:
        return {"server_m": {k: t.detach().cpu().clone() for k, t in (self.m or {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = state.get("server_m")
        self.m = {k: t.clone() for k, t in m.items()} if m else None


def build(momentum: float, lr: float) -> ServerStep:
    """The step ``compression.server_momentum`` / ``server_lr`` ask for."""
    return ServerMomentum(momentum, lr) if momentum > 0 else ServerStep()
