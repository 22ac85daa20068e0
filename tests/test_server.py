"""Server momentum (compression.server_momentum): the rule, the aggregate it acts on, resume."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from afd_cli import models, submodel
from afd_cli.compose import compose
from afd_cli.config import validate
from afd_cli.federated import server
from afd_cli.federated.aggregate import MaskedMean
from afd_cli.run.loop import run as run_loop

MODEL = models.build("mlp", (1, 8, 8), 10, hidden=16)
SHAPES = {k: tuple(p.shape) for k, p in MODEL.named_parameters()}


def _w(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()}


class Mean:
    """A round's aggregate as the server step reads it (``delta()``)."""

    def __init__(self, delta: dict[str, torch.Tensor]) -> None:
        self._delta = delta

    def delta(self) -> dict[str, torch.Tensor]:
        return self._delta


def test_build_is_plain_fedavg_unless_momentum_is_on() -> None:
    assert type(server.build(0.0, 1.0)) is server.ServerStep
    assert isinstance(server.build(0.9, 1.0), server.ServerMomentum)
    cfg = validate(compose(["compression=dgc", "compression.server_momentum=0.9"]))
    assert cfg.compression.server_momentum == 0.9  # every compressor reads it


def test_momentum_rule_m_equals_b_m_plus_delta_and_w_moves_by_lr_m() -> None:
    b, lr = 0.9, 0.5
    step = server.build(b, lr)
    w0 = _w(0)
    w = {k: t.clone() for k, t in w0.items()}
    d1, d2 = _w(1, 0.1), _w(2, 0.1)
    step.apply(Mean(d1), w)  # type: ignore[arg-type]
    step.apply(Mean(d2), w)  # type: ignore[arg-type]
    for k in w:
        m2 = b * d1[k] + d2[k]
        torch.testing.assert_close(w[k], w0[k] + lr * d1[k] + lr * m2)
    assert step.nbytes() == 4 * sum(t.numel() for t in w.values())


def test_zero_momentum_unit_lr_is_plain_fedavg() -> None:
    """b = 0, lr = 1 reproduces MaskedMean.apply_ (delta() is what apply_ adds), also with
    sub-models where some entries are held by no client."""
    gen = torch.Generator().manual_seed(0)
    views = [submodel.View(MODEL, submodel.random_keep(MODEL, 0.5, gen)) for _ in range(3)]
    w = _w(3)
    updates = [{k: torch.randn_like(t) for k, t in v.extract(w).items()} for v in views]
    ref = {k: t.clone() for k, t in w.items()}
    mean = MaskedMean(ref)
    mean.add_many(views, updates, [3.0, 1.0, 2.0])
    mean.apply_(ref)
    got = {k: t.clone() for k, t in w.items()}
    server.ServerMomentum(0.0, 1.0).apply(mean, got)
    for k in w:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)


def test_state_dict_round_trip_continues_identically() -> None:
    a = server.build(0.8, 1.0)
    wa = _w(0)
    a.apply(Mean(_w(1, 0.1)), wa)  # type: ignore[arg-type]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = server.build(0.8, 1.0)
    b.load_state_dict(torch.load(buf))
    wb = {k: t.clone() for k, t in wa.items()}
    a.apply(Mean(_w(2, 0.1)), wa)  # type: ignore[arg-type]
    b.apply(Mean(_w(2, 0.1)), wb)  # type: ignore[arg-type]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


SMALL = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=32",
    "schedule.num_clients=8",
    "schedule.clients_per_round=3",
    "progress=none",
    "device=cpu",
    "compression=dgc",
    "compression.warmup_rounds=1",
    "compression.sparsity=0.9",
    "compression.momentum_correction=false",
    "compression.server_momentum=0.9",
    "compression.server_lr=0.1",
]


@pytest.mark.parametrize("strategy", ["fedavg", "single"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, strategy: str) -> None:
    """The momentum buffer is in the checkpoint: 2 rounds + resume to 4 == 4 rounds."""
    extra = [f"strategy={strategy}"] + (["strategy.rate=0.25"] if strategy != "fedavg" else [])

    def run(out, rounds: int) -> pd.DataFrame:
        cfg = validate(compose([*SMALL, *extra, f"schedule.rounds={rounds}"]))
        out.mkdir(parents=True, exist_ok=True)
        run_loop(cfg, out)
        return pd.read_csv(out / "metrics.csv")

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    cols = ["test_acc", "test_loss", "train_loss", "bytes_up", "bytes_down"]
    pd.testing.assert_frame_equal(straight[cols], resumed[cols])
