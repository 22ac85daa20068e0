"""The run's state between rounds: what a checkpoint holds besides the model and the plug-ins.

Saved in ``checkpoint.pt`` as a plain dict (``asdict``), so a checkpoint does not depend on
this class's import path; :meth:`RunState.from_dict` reads older checkpoints too (missing keys
take their defaults).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class RunState:
    round: int = 0  # rounds done
    cum_down: int = 0  # bytes downloaded so far, all clients
    cum_up: int = 0  # bytes uploaded so far
    best_acc: float | None = None  # best test accuracy so far (None: nothing evaluated)
    best_round: int | None = None
    last_acc: float | None = None  # accuracy at the last evaluation
    elapsed: float = 0.0  # wall seconds of the rounds done (wall_s summed)
    sim_time: float = 0.0  # simulated seconds so far (network.*; 0 without a clock)
    checkpoint_s: float = 0.0  # wall seconds spent writing checkpoints
    checkpoint_bytes: int = 0  # bytes those checkpoints wrote

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def evaluated(self, round: int, acc: float) -> None:
        """Record an evaluation of round ``round`` (1-based)."""
        self.last_acc = acc
        if self.best_acc is None or acc > self.best_acc:
            self.best_acc, self.best_round = acc, round
