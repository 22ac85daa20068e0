"""``Evaluator`` against values worked out by hand: a model whose logits are known.

An MLP whose two hidden layers are identities (inputs are >= 0, so the ReLUs pass them
through) and whose output layer is set by hand has logits ``A x + b`` for inputs we choose;
the accuracy and the mean cross-entropy over the test set then follow in closed form. Batch
sizes that leave a short last batch check that every sample weighs the same (a mean of batch
means would not).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afd_cli.data.samples import TensorSamples
from afd_cli.federated.client import Evaluator
from afd_cli.models.mlp import MLP

D = 3  # inputs = hidden units = classes


def _weights(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    eye, zero = torch.eye(D), torch.zeros(D)
    return {
        "fc1.weight": eye,
        "fc1.bias": zero,
        "fc2.weight": eye,
        "fc2.bias": zero,
        "fc3.weight": a,
        "fc3.bias": b,
    }


def _model() -> MLP:
    torch.manual_seed(0)  # the evaluator must not read these: it is handed the weights
    return MLP((D,), D, {"fc1": D, "fc2": D})


L2, L3, L5, L6 = (math.log(v) for v in (2, 3, 5, 6))
# logits = x (A = I, b = 0); with exp(logits) whole numbers the losses are logs of fractions
X = torch.tensor(
    [
        [L2, 0, 0],  # y=0: p = 2/4, loss ln 2, right
        [L2, 0, 0],  # y=1: p = 1/4, loss ln 4, wrong
        [0, L3, 0],  # y=1: p = 3/5, loss ln 5/3, right
        [0, 0, L6],  # y=2: p = 6/8, loss ln 4/3, right
        [0, 0, L6],  # y=0: p = 1/8, loss ln 8, wrong
        [L5, L2, 0],  # y=0: p = 5/8, loss ln 8/5, right
        [L5, L2, 0],  # y=1: p = 2/8, loss ln 4, wrong
    ]
)
Y = torch.tensor([0, 1, 1, 2, 0, 0, 1])
# the product of the 7 fractions: 2 * 4 * 5/3 * 4/3 * 8 * 8/5 * 4 = 8192 / 9
HAND_LOSS, HAND_ACC = math.log(8192 / 9) / 7, 4 / 7


# 3 and 4 leave a short last batch (3+3+1, 4+3); 7 is one batch, 100 one short one
@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 100])
@pytest.mark.parametrize("workers", [1, 2])
def test_accuracy_and_mean_loss_are_the_hand_computed_ones(batch_size, workers):
    ev = Evaluator(_model(), TensorSamples(X, Y), batch_size, "fp32", workers)
    loss, acc = ev(_weights(torch.eye(D), torch.zeros(D)))
    assert acc == HAND_ACC  # 4.0 / 7 in both
    assert loss == pytest.approx(HAND_LOSS, rel=1e-6)


def _oracle(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in float64, one sample at a time."""
    losses, right = [], 0
    for xi, yi in zip(x, y, strict=True):
        z = a @ xi + b
        m = z.max()
        losses.append(m + math.log(np.exp(z - m).sum()) - z[yi])
        right += int(np.argmax(z) == yi)
    return float(np.mean(losses)), right / len(y)


@pytest.mark.parametrize("n,batch_size", [(50, 8), (50, 50), (37, 5), (1, 4)])
def test_random_logits_match_a_float64_oracle(n, batch_size):
    g = torch.Generator().manual_seed(n * 100 + batch_size)
    x = torch.rand(n, D, generator=g) * 3  # >= 0: the identity hidden layers pass it through
    y = torch.randint(D, (n,), generator=g)
    a = torch.randn(D, D, generator=g)
    b = torch.randn(D, generator=g)
    want_loss, want_acc = _oracle(x.double().numpy(), y.numpy(), a.double().numpy(), b.numpy())
    ev = Evaluator(_model(), TensorSamples(x, y), batch_size)
    loss, acc = ev(_weights(a, b))
    assert acc == pytest.approx(want_acc, abs=1e-12)
    assert loss == pytest.approx(want_loss, rel=1e-5)


def test_each_call_evaluates_the_weights_it_is_given():
    ev = Evaluator(_model(), TensorSamples(X, Y), 3)
    first = ev(_weights(torch.eye(D), torch.zeros(D)))
    # every logit equal: loss ln 3 for every sample; argmax takes the first class (y=0: 3 of 7)
    flat = ev(_weights(torch.zeros(D, D), torch.zeros(D)))
    assert flat[0] == pytest.approx(math.log(3), rel=1e-6) and flat[1] == 3 / 7
    assert ev(_weights(torch.eye(D), torch.zeros(D))) == first
