"""What happens after each round, one small callback each: evaluate the global model, advance
the simulated clock, count the bytes and build the row, watch the train loss, checkpoint,
write the rows, show progress. The loop (:mod:`.loop`) calls them in this order; each sees
the run's :class:`~.state.RunState` and the round's :class:`RoundEnd`, and fills in its part
(``stop``: an exception the loop raises once the round's rows are written).

Under torchrun every process runs every callback (evaluation and the checkpoint are
collective); only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..federated import distributed, team
from ..federated.client import Evaluator
from ..federated.guard import STOP, Diverged
from ..federated.round import RoundResult
from ..metrics import ClientsWriter, MetricsWriter, RoundProgress, RoundRow, WidthsWriter
from . import checkpoint, degenerate
from .build import cpu_workers, divergence_hint
from .rundir import CHECKPOINT, CLIENTS, METRICS

WIDTHS = "widths.csv"  # HeteroFL's evaluation: each width's sub-model (strategy.eval_widths)

if TYPE_CHECKING:
    from .build import Simulation
    from .state import RunState


@dataclass
class RoundEnd:
    """One round as the callbacks see it; each fills in its part."""

    t: int  # the round, 0-based
    t0: float  # perf_counter at its start
    result: RoundResult
    test_loss: float | None = None  # None: not evaluated this round
    test_acc: float | None = None
    eval_s: float = 0.0
    sim_round_s: float | None = None  # None: no clock
    row: RoundRow | None = None
    width_rows: list[dict[str, Any]] = field(default_factory=list)  # widths.csv rows
    exploded: bool = False  # the run's first round whose train loss exploded (degenerate)
    stop: Exception | None = None  # raised by the loop once every callback has run


class Callback:
    """A step after each round; the defaults do nothing."""

    def client_done(self) -> None:
        """A client finished local training (for progress display)."""

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        """Round ``end.t`` is done."""

    def close(self) -> None:
        """The loop ended, normally or not."""


class Evaluate(Callback):
    """Test loss and accuracy of the global model every ``schedule.eval_every`` rounds and
    at the last; a non-finite loss stops the run (``on_nonfinite=stop``). At the evaluation
    rounds its strategy asks for (``strategy.eval_widths``), also each width's sub-model
    (HeteroFL's evaluation), for ``widths.csv``; the global model's numbers do not change."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._by_width: dict[tuple[int, ...], Any] = {}  # evaluators per sub-model shape

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        cfg, t = self.sim.cfg, end.t
        t_eval = time.perf_counter()
        if (t + 1) % cfg.schedule.eval_every == 0 or t + 1 == cfg.schedule.rounds:
            end.test_loss, end.test_acc = self.sim.evaluate(self.sim.weights)
            if not math.isfinite(end.test_loss) and cfg.on_nonfinite == STOP:
                raise Diverged(
                    t + 1,
                    None,
                    f"non-finite test loss ({end.test_loss}) of the global model",
                    divergence_hint(cfg, client=False),
                )
            state.evaluated(t + 1, end.test_acc)
            if self.sim.strategy.eval_due(t + 1, t + 1 == cfg.schedule.rounds):
                end.width_rows = self.widths(t + 1, end.test_loss, end.test_acc)
        end.eval_s = time.perf_counter() - t_eval

    def widths(self, round: int, loss: float, acc: float | None) -> list[dict[str, Any]]:
        """One row per width, widest first; width 1 is the global model just tested."""
        sim = self.sim
        rows = [{"width": 1.0, "test_loss": loss, "test_acc": acc}]
        for width, view in sorted(sim.strategy.eval_views().items(), reverse=True):
            key = tuple(view.units[k] for k in sorted(view.units))
            if key not in self._by_width:
                self._by_width[key] = team.evaluator(
                    Evaluator(
                        sim.model.with_units(view.units).to(sim.device),
                        sim.test,
                        sim.cfg.schedule.eval_batch_size,
                        sim.cfg.precision,
                        workers=cpu_workers(sim.cfg),
                    )
                )
            w_loss, w_acc = self._by_width[key](view.extract(sim.weights))
            rows.append({"width": width, "test_loss": w_loss, "test_acc": w_acc})
        return [{"round": round, **r} for r in rows]


class SimulatedClock(Callback):
    """Simulated seconds of the round (its slowest client, or the deadline), from its rows."""

    def __init__(self, sim: Simulation) -> None:
        self.clock = sim.clock

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        if self.clock is not None:
            end.sim_round_s = self.clock.round_seconds(end.result.rows)
        state.sim_time += end.sim_round_s or 0.0


class Totals(Callback):
    """The byte counts so far and the round's ``metrics.csv`` row."""

    def __init__(self, sim: Simulation) -> None:
        self.cfg = sim.cfg

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        c, r = self.cfg, end.result
        state.cum_down += r.bytes_down
        state.cum_up += r.bytes_up
        state.round = end.t + 1
        end.row = RoundRow(
            round=end.t + 1,
            dataset=c.dataset.name,
            model=c.model.name,
            partition=c.partition.name,
            strategy=c.strategy.name,
            compression=c.compression.name,
            seed=c.seed,
            clients=len(r.clients),
            skipped=r.skipped,
            dropped=sum(row.dropped for row in r.rows),
            bytes_down=r.bytes_down,
            bytes_up=r.bytes_up,
            cum_bytes_down=state.cum_down,
            cum_bytes_up=state.cum_up,
            cum_bytes=state.cum_down + state.cum_up,
            train_loss=r.train_loss,
            test_loss=end.test_loss,
            test_acc=end.test_acc,
            keep_fraction=r.keep_fraction,
            sparsity=r.compressor_stats.get("sparsity", 0.0),
            sim_round_s=end.sim_round_s,
            sim_time_s=state.sim_time if self.cfg.network.name != "none" else None,
            wall_s=time.perf_counter() - end.t0,  # without the checkpoint (saved in it)
            train_s=r.train_s,
            eval_s=end.eval_s,
        )


class LossExploded(Diverged):
    """``on_degenerate=stop``: the train loss exploded (:mod:`.degenerate`) with every value
    finite; one line naming the round, the losses and what to try."""


class LossWatch(Callback):
    """The train loss against round 1's (:mod:`.degenerate`, as ``metrics.csv`` holds them):
    the first round at :data:`~.degenerate.LOSS_GROWTH` times it or more is marked on its
    progress line (stderr holds one line, for how the run ended; ``summary.json`` reads the
    losses from ``metrics.csv``); ``on_degenerate=stop`` ends the run at such a round once its
    rows are written, on every process (the loss is the round's, gathered). A resumed run
    reads round 1's loss back from ``metrics.csv``, so the checkpoint holds nothing more."""

    def __init__(self, sim: Simulation, run_dir: Path) -> None:
        self.cfg, self.path = sim.cfg, run_dir / METRICS
        self.first: float | None = None  # round 1's train loss
        self.seen = False  # a round exploded already
        self.known = False  # first and seen are known (round 1 ran here, or was read back)

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        loss = degenerate.as_written(end.result.train_loss)
        if end.t == 0:
            self.first, self.seen, self.known = loss, False, True
        elif not self.known:  # resumed: rounds 1..t are in metrics.csv (Rows wrote them)
            self.first, seen = distributed.from_lead(
                lambda: degenerate.first_and_explosion(self.path), "reading round 1's loss"
            )
            self.seen, self.known = seen is not None, True
        if not degenerate.exploded(self.first, loss):
            return
        end.exploded, self.seen = not self.seen, True
        if self.cfg.on_degenerate == degenerate.STOP:
            what = degenerate.growth_text(loss, self.first)
            hint = divergence_hint(self.cfg, client=False)
            end.stop = LossExploded(end.t + 1, None, f"{what} (on_degenerate=stop)", hint)


class Checkpoint(Callback):
    """Every ``checkpoint_every`` rounds and at the last (see :mod:`.checkpoint`); holds the
    round's rows, so a kill before they are written loses nothing."""

    def __init__(self, sim: Simulation, run_dir: Path, config: dict[str, Any], lead: bool):
        self.sim, self.config = sim, config
        self.path = run_dir / CHECKPOINT if lead else None  # every process hands in its state

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        cfg = self.sim.cfg
        if state.round % cfg.checkpoint_every and state.round != cfg.schedule.rounds:
            return
        assert end.row is not None
        t_ckpt = time.perf_counter()
        saved = type(state)(**{**state.to_dict(), "elapsed": state.elapsed + end.row.wall_s})
        last = {
            "metrics": asdict(end.row),
            "clients": [asdict(r) for r in end.result.rows],
            "widths": end.width_rows,
        }
        written = checkpoint.save(self.path, self.config, self.sim, saved, last)
        state.checkpoint_s += time.perf_counter() - t_ckpt
        state.checkpoint_bytes += written

    def close(self) -> None:
        self.sim.store.close()  # other processes' clients' spills (torchrun): in no index


class Rows(Callback):
    """Appends the round's rows to ``clients.csv`` then ``metrics.csv`` (rank 0), its
    ``wall_s`` now with the checkpoint; on resume first drops rows past the checkpoint and
    writes the checkpoint's own pending rows."""

    def __init__(self, run_dir: Path, per_round: int, keep: int, pending: dict | None, lead: bool):
        self.metrics = MetricsWriter(run_dir / METRICS, keep_rounds=keep) if lead else None
        self.clients = ClientsWriter(run_dir / CLIENTS, per_round, keep) if lead else None
        self.widths = WidthsWriter(run_dir / WIDTHS, keep) if lead else None
        if pending is not None and self.metrics and self.clients and self.widths:
            self.clients.write(pending["clients"])
            self.widths.write(pending.get("widths", []))
            self.metrics.write(pending["metrics"])

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        assert end.row is not None
        end.row.wall_s = time.perf_counter() - end.t0  # the whole round, checkpoint included
        if self.metrics and self.clients and self.widths:
            self.clients.write(end.result.rows)
            self.widths.write(end.width_rows)
            self.metrics.write(end.row)
        state.elapsed += end.row.wall_s

    def close(self) -> None:
        if self.metrics and self.clients and self.widths:
            self.metrics.close()
            self.clients.close()
            self.widths.close()


class Progress(Callback):
    """A rich bar on a terminal, a plain line per round otherwise (rank 0, ``progress``)."""

    def __init__(self, sim: Simulation, start: int, lead: bool) -> None:
        s = sim.cfg.schedule
        shown = sim.cfg.progress if lead else "none"
        self.bar = RoundProgress(s.rounds, s.clients_per_round, shown, start=start)

    def client_done(self) -> None:
        self.bar.client_done()

    def round_end(self, state: RunState, end: RoundEnd) -> None:
        assert end.row is not None
        note = f" (train loss {degenerate.LOSS_GROWTH:g}x round 1's: degenerate)"
        self.bar.round_done(end.row, note=note if end.exploded else "")

    def close(self) -> None:
        self.bar.close()
