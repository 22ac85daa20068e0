"""FLOPs of local training (afd_cli.flops) against hand-derived counts, per model and sub-model.

Convention (FlopCounterMode's): 2 FLOPs per multiply-add of every matmul and convolution; the
backward pass computes the weight gradient of every layer and the input gradient of every
layer but the first (nothing upstream needs it).
"""

import math

import pytest
import torch

from afd_cli import flops, models
from afd_cli.submodel import units_to_keep


def _example(name: str) -> tuple[models.FLModel, torch.Tensor]:
    if name == "char_lstm":
        return models.build(name, (80,), 80, lstm_hidden=8), torch.zeros(1, 80, dtype=torch.long)
    if name == "mlp":
        return models.build(name, (1, 8, 8), 10), torch.zeros(1, 1, 8, 8)
    classes = 62 if name == "cnn_femnist" else 10
    return models.build(name, (1, 28, 28), classes), torch.zeros(1, 1, 28, 28)


def _sub_units(model: models.FLModel, rate: float) -> dict[str, int]:
    return {k: units_to_keep(n, rate) for k, n in model.units.items()}


def mlp_flops(i: int, h1: int, h2: int, c: int) -> int:
    forward = 2 * (i * h1 + h1 * h2 + h2 * c)
    backward = 2 * i * h1 + 2 * 2 * (h1 * h2 + h2 * c)  # fc1: weight grad only
    return forward + backward


def cnn_flops(c1: int, c2: int, f: int, classes: int) -> int:
    conv1 = 2 * 28 * 28 * c1 * 1 * 25
    conv2 = 2 * 14 * 14 * c2 * c1 * 25
    dense = 2 * (c2 * 49 * f + f * classes)
    return 3 * (conv1 + conv2 + dense) - conv1  # conv1 needs no input gradient


def lstm_flops(seq: int, embed: int, hidden: list[int], vocab: int) -> int:
    forward, prev = 0, embed
    for h in hidden:
        forward += 2 * seq * 4 * h * (prev + h)
        prev = h
    forward += 2 * prev * vocab
    # every layer's input gradient is needed (the embedding trains), except that of the zero
    # initial state at the first time step
    return 3 * forward - sum(2 * 4 * h * h for h in hidden)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mlp", lambda u: mlp_flops(64, u["fc1"], u["fc2"], 10)),
        ("cnn_mnist", lambda u: cnn_flops(u["conv1"], u["conv2"], u["fc1"], 10)),
        ("cnn_femnist", lambda u: cnn_flops(u["conv1"], u["conv2"], u["fc1"], 62)),
        ("char_lstm", lambda u: lstm_flops(80, 8, [u["lstm1"], u["lstm2"]], 80)),
    ],
)
def test_training_flops_per_sample_match_the_formula_and_sub_models_cost_less(name, expected):
    model, x = _example(name)
    full = flops.training_flops(model, x)
    assert full == expected(model.units)
    sub_units = _sub_units(model, 0.25)
    sub = flops.training_flops(model.with_units(sub_units), x)
    assert sub == expected(sub_units)
    assert 0 < sub < full
    # linear in the batch: a client's FLOPs are per-sample FLOPs times its samples
    assert flops.training_flops(model, torch.cat([x, x, x])) == 3 * full


def test_cnn_mnist_figure():
    """McMahan's CNN: 72.4 MFLOPs to train on one 28x28 image (24.5 M forward)."""
    model, x = _example("cnn_mnist")
    assert flops.training_flops(model, x) == 72_384_512


def test_training_cost_counts_once_per_shape_and_scales(monkeypatch):
    model, x = _example("mlp")
    calls = []
    real = flops.training_flops
    monkeypatch.setattr(flops, "training_flops", lambda m, e: calls.append(1) or real(m, e))
    cost = flops.TrainingCost(model, x, epochs=2, batch_size=10)
    sub = _sub_units(model, 0.5)
    for _ in range(3):
        assert cost.flops(model.units, 25) == mlp_flops(64, 200, 200, 10) * 25 * 2
        assert cost.flops(sub, 7) == mlp_flops(64, 100, 100, 10) * 7 * 2
    assert len(calls) == 2  # one count per sub-model shape, not per client or round
    assert cost.steps(25) == math.ceil(25 / 10) * 2 == 6
    assert cost.steps(10) == 2 and cost.steps(1) == 2
