"""Server momentum (compression.server_momentum): the rule, the aggregate it acts on, resume."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from afd_cli import cli, experiment, models, submodel
from afd_cli.compression import ServerMomentum, build
from afd_cli.config import CompressionConfig, validate
from afd_cli.federated.aggregate import MaskedMean

MODEL = models.build("mlp", (1, 8, 8), 10, hidden=16)
SHAPES = {k: tuple(p.shape) for k, p in MODEL.named_parameters()}


def _w(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()}


def test_build_wraps_only_when_on_and_forwards_the_rest() -> None:
    plain = build(CompressionConfig(name="dgc", momentum_correction=False))
    assert not isinstance(plain, ServerMomentum)
    assert getattr(plain, "apply_aggregate", None) is None
    comp = build(CompressionConfig(name="dgc", momentum_correction=False, server_momentum=0.9))
    assert isinstance(comp, ServerMomentum)
    assert comp.name == "dgc" and comp.end_round()["sparsity"] == 0.0


def test_momentum_rule_m_equals_b_m_plus_delta_and_w_moves_by_lr_m() -> None:
    b, lr = 0.9, 0.5
    comp = build(CompressionConfig(name="topk", server_momentum=b, server_lr=lr))
    w0 = _w(0)
    w = {k: t.clone() for k, t in w0.items()}
    d1, d2 = _w(1, 0.1), _w(2, 0.1)
    comp.apply_aggregate(d1, w)
    comp.apply_aggregate(d2, w)
    for k in w:
        m2 = b * d1[k] + d2[k]
        torch.testing.assert_close(w[k], w0[k] + lr * d1[k] + lr * m2)
    assert comp.state_nbytes() == 4 * sum(t.numel() for t in w.values())


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
    ServerMomentum(build(CompressionConfig(name="topk")), 0.0, 1.0).apply_aggregate(
        mean.delta(), got
    )
    for k in w:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)


def test_state_dict_round_trip_continues_identically() -> None:
    cfg = CompressionConfig(name="dgc", momentum_correction=False, server_momentum=0.8)
    a = build(cfg)
    wa = _w(0)
    a.apply_aggregate(_w(1, 0.1), wa)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build(cfg)
    b.load_state_dict(torch.load(buf))
    wb = {k: t.clone() for k, t in wa.items()}
    a.apply_aggregate(_w(2, 0.1), wa)
    b.apply_aggregate(_w(2, 0.1), wb)
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
        cfg = validate(cli.compose([*SMALL, *extra, f"schedule.rounds={rounds}"]))
        out.mkdir(parents=True, exist_ok=True)
        experiment.run(cfg, out)
        return pd.read_csv(out / "metrics.csv")

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    cols = ["test_acc", "test_loss", "train_loss", "bytes_up", "bytes_down"]
    pd.testing.assert_frame_equal(straight[cols], resumed[cols])
