"""Degenerate runs: no value went non-finite, yet the run learned nothing or blew up.

A run is *degenerate* when

- its best test accuracy is at or below ``majority_baseline`` (always predicting the most
  common test label): whatever it reached, a constant answer reaches too; or
- its training loss exploded: a round's ``train_loss`` is :data:`LOSS_GROWTH` times round 1's
  or more. Round 1's loss is the run's own starting point (local training from the initial
  model: about ln(classes) for a classifier), and a healthy run's loss falls from there; it
  never rose above round 1's in the 84 runs under ``docs/results/runs``, and ``schedule.lr=1``
  on digits + mlp, noisy but learning, stayed within 1.2x. Three orders of magnitude is far
  past noise between rounds and needs only ``metrics.csv``, so ``afd report`` applies the same
  test to any run (stopped, unfinished or older ones). ``schedule.lr=3`` there grows 1,700x by
  round 3 and ``schedule.lr=10`` 5e14x by round 2, both without a NaN.

Losses are compared as ``metrics.csv`` holds them (:func:`as_written`), and the run's
``summary.json`` reads them from there, so a run, its resume and ``afd report`` judge the same
numbers, and the checkpoint holds nothing more. The run records both tests in
``summary.json`` (``"loss_explosion"``, ``"degenerate"``: the reason, or null) and ends
``ok``: it finished and its files are whole; the flag says its numbers mean little.
``on_degenerate=stop`` ends it at the exploding round instead
(:class:`~.callbacks.LossExploded`). Nothing here imports torch: ``afd report`` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..metrics import intact_rows

LOSS_GROWTH = 1000.0  # a train loss this many times round 1's is an explosion
# metrics.csv keeps 6 significant digits (an accuracy of 0.1005586 reads 0.100559), and one
# test sample in a million more than the constant answer is no better than it
ACC_TOLERANCE = 1e-6
STOP = "stop"  # on_degenerate=stop ends the run at the exploding round


def as_written(x: float) -> float:
    """``x`` as ``metrics.csv`` holds it (6 significant digits)."""
    return float(f"{x:.6g}")


def exploded(first: float | None, loss: float) -> bool:
    """Whether ``loss`` is :data:`LOSS_GROWTH` times round 1's train loss ``first`` or more
    (never without a usable ``first``: none recorded, non-finite or not positive)."""
    if first is None or not math.isfinite(first) or first <= 0:
        return False
    return loss >= LOSS_GROWTH * first


def loss_explosion(rounds: Iterable[int], losses: Iterable[float]) -> dict[str, Any] | None:
    """The first round whose train loss exploded against round 1's, as ``summary.json``
    holds it (``round``, ``train_loss``, ``first_train_loss``); None if none did or round 1
    is not among ``rounds``."""
    pairs = list(zip(rounds, losses, strict=True))
    first = next((float(loss) for r, loss in pairs if int(r) == 1), None)
    for r, loss in pairs:
        if exploded(first, float(loss)):
            return explosion(int(r), float(loss), first)
    return None


def explosion(round: int, loss: float, first: float | None) -> dict[str, Any]:
    return {"round": round, "train_loss": loss, "first_train_loss": first}


def first_and_explosion(metrics: Path) -> tuple[float | None, dict[str, Any] | None]:
    """Round 1's train loss in a run's ``metrics.csv`` (its intact rows), and its
    :func:`loss_explosion`."""
    rows = [(int(r["round"]), r["train_loss"]) for r in intact_rows(metrics)]
    rows = [(r, float(loss)) for r, loss in rows if loss != ""]
    first = rows[0][1] if rows and rows[0][0] == 1 else None
    return first, loss_explosion([r for r, _ in rows], [loss for _, loss in rows])


def growth_text(loss: float, first: float | None) -> str:
    """``train loss 6.2e+17 is over 1000x round 1's (1.24e+03)``."""
    return f"train loss {loss:.3g} is over {LOSS_GROWTH:g}x round 1's ({first:.3g})"


def explosion_text(e: Mapping[str, Any]) -> str:
    """``round 2: train loss 6.2e+17 is over 1000x round 1's (1.24e+03)``."""
    return f"round {e['round']}: {growth_text(e['train_loss'], e['first_train_loss'])}"


def at_baseline(best_acc: float | None, majority: float | None) -> bool:
    """Whether the best accuracy is at or below the majority baseline, within
    :data:`ACC_TOLERANCE`."""
    if best_acc is None or majority is None or math.isnan(best_acc) or math.isnan(majority):
        return False
    return best_acc <= majority + ACC_TOLERANCE


def degenerate_reason(summary: Mapping[str, Any]) -> str | None:
    """One line saying why the run of ``summary`` (``summary.json``'s keys ``best_acc``,
    ``majority_baseline``, ``loss_explosion``) is degenerate; None if it is not. A key that is
    missing (older summaries) tests nothing."""
    why = []
    best, majority = summary.get("best_acc"), summary.get("majority_baseline")
    if at_baseline(best, majority):
        why.append(
            f"best accuracy {best:.4f} is at or below the majority baseline {majority:.4f} "
            "(always predicting the most common test label)"
        )
    if summary.get("loss_explosion"):
        why.append(explosion_text(summary["loss_explosion"]))
    return "; ".join(why) or None


def lower_steps(lr: float, server_lr: float, momentum: float, server_momentum: float) -> str:
    """What to try when the global model blows up with every client finite: smaller steps,
    the clients' or the server's (momentum terms only where set)."""
    steps = [f"schedule.lr={lr:g}", f"compression.server_lr={server_lr:g}"]
    steps += [f"schedule.momentum={momentum:g}"] if momentum else []
    steps += [f"compression.server_momentum={server_momentum:g}"] if server_momentum else []
    return f"the steps may be too large: lower {', '.join(steps[:-1])} or {steps[-1]}"


def degenerate_line(summary: Mapping[str, Any]) -> str | None:
    """The line ``afd run`` can print for a degenerate run: the reason and what to try (from
    ``summary["config"]``); None for a healthy run."""
    reason = summary.get("degenerate")
    if not reason:
        return None
    cfg = summary.get("config") or {}
    s, c = cfg.get("schedule") or {}, cfg.get("compression") or {}
    lr = s.get("lr")
    if lr is None:
        return reason
    if summary.get("loss_explosion"):
        return f"{reason}; " + lower_steps(
            lr, c.get("server_lr", 1.0), s.get("momentum", 0.0), c.get("server_momentum", 0.0)
        )
    return (
        f"{reason}; it learned nothing a constant answer does not: schedule.lr={lr:g} may be "
        f"too large or too small, or schedule.rounds={s.get('rounds')} too few"
    )


def status_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``status.json`` of a run that finished: ``ok``, plus ``degenerate`` (the reason) when it
    is; a healthy run's stays ``{"status": "ok"}``."""
    reason = summary.get("degenerate")
    return {"status": "ok", "degenerate": reason} if reason else {"status": "ok"}
