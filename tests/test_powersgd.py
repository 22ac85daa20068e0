"""compression=powersgd: exact bytes, PyTorch's powerSGD_hook on identical inputs, the
client's warm start in full-model columns, and both links."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from views import CNN_MNIST, ID, Cols  # pytest puts tests/ on sys.path

from afd_cli.compression import RoundContext, codec, make
from afd_cli.compression.coded import UP
from afd_cli.compression.powersgd import EPSILON, LowRank, _Columns


def test_exact_bytes_and_a_rank_one_update_arrives_whole() -> None:
    """A LOWRANK record: tag, dims (6, 10), rank, P (6 x 1) and Q (10 x 1) as fp32; the bias
    dense. A rank-1 update is its own rank-1 approximation: decoded exactly (to fp32)."""
    a, b = torch.arange(1.0, 7.0), torch.linspace(-1, 1, 10)
    update = {"w": torch.outer(a, b), "b": torch.tensor([1.0, 2, 3, 4, 5, 6])}
    comp = make("powersgd", rank=1, dense_below=10)
    payload = comp.encode_up(0, update, ID, RoundContext(0, 1))
    rec = codec.decode(payload)[0]
    assert isinstance(rec, LowRank) and rec.p.shape == (6, 1) and rec.q.shape == (10, 1)
    want = (
        b"AFD\x01" + struct.pack("<I", 2)
        + bytes([codec.Kind.LOWRANK | 2 << 4, 6, 10, 1])
        + rec.p.numpy().astype("<f4").tobytes() + rec.q.numpy().astype("<f4").tobytes()
        + bytes([codec.Kind.DENSE32 | 1 << 4, 6]) + struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    )  # fmt: skip
    assert payload == want and len(payload) == 8 + (4 + 4 * 1 * (6 + 10)) + (2 + 24) == 102
    got = comp.decode_up(0, payload, ID)
    torch.testing.assert_close(got["w"], update["w"], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["b"], update["b"])
    # sent: P and Q entries, 16 of 60, plus the bias
    assert comp.end_round()["sparsity"] == pytest.approx(1 - (16 + 6) / 66)


def test_small_matrices_not_worth_compressing_go_dense() -> None:
    """powerSGD_hook's rule: compress only when r (rows + cols) * 2 < rows * cols."""
    comp = make("powersgd", rank=4, dense_below=0)
    payload = comp.encode_up(0, {"w": torch.randn(8, 8)}, ID, RoundContext(0, 1))
    assert isinstance(codec.decode(payload)[0], codec.Dense)  # 4 * 16 * 2 = 128 > 64


def _hook_run(matrices: list[torch.Tensor], rank: int) -> tuple[list, list, list]:
    """torch's powerSGD_hook on a one-process gloo group: a bias-free Linear whose gradient is
    each matrix in turn (through DDP, so the hook runs as in training). Returns, per
    PowerSGD step, the gradient it produced, its error memory and its warm-start Q."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ph
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        rows, cols = matrices[0].shape
        ddp = DistributedDataParallel(torch.nn.Linear(cols, rows, bias=False))
        state = ph.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=2,  # iterations 0 and 1 are plain all-reduce
            min_compression_rate=0,
            orthogonalization_epsilon=EPSILON,
            random_seed=0,
        )
        ddp.register_comm_hook(state, ph.powerSGD_hook)
        grads, errors, qs = [], [], []
        for i, m in enumerate([matrices[0], matrices[0], *matrices]):
            ddp.zero_grad()
            (ddp(torch.eye(cols)) * m.T).sum().backward()  # weight.grad = m
            if i >= 2:
                grads.append(ddp.module.weight.grad.clone())
                errors.append(state.error_dict[0].clone().reshape(rows, cols))
                qs.append(state.q_memory_dict[0].clone().reshape(cols, rank))
        return grads, errors, qs
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_matches_torch_powersgd_hook_with_error_feedback_and_warm_start(rank: int) -> None:
    """Same inputs, same first Q: the hook's first PowerSGD step draws
    ``torch.manual_seed(RandomState(0).randint(1e9)); randn(cols, r)`` (powerSGD_hook.py
    lines 552-558 of the installed torch); the client starts from that Q too. Then every step
    -- P, Q, the approximation, the error memory and the next warm start -- must agree."""
    rows, cols, steps = 24, 40, 4
    g = torch.Generator().manual_seed(rank)
    # a slowly varying low-rank signal plus noise, as gradients are
    base = torch.randn(rows, 3, generator=g) @ torch.randn(3, cols, generator=g)
    ms = [base + 0.3 * torch.randn(rows, cols, generator=g) for _ in range(steps)]
    grads, errors, qs = _hook_run(ms, rank)

    comp = make("powersgd", rank=rank, dense_below=0)
    torch.manual_seed(np.random.RandomState(0).randint(1_000_000_000))
    q0 = torch.randn(cols, rank)
    store = comp._store(UP, {"w": (rows, cols)})
    whole = _Columns({"w": None})
    store.gather(0, whole, {"w": torch.zeros(cols, rank)})
    store.scatter(0, whole, "q", {"w": q0})
    for r, m in enumerate(ms):
        got = comp.decode_up(0, comp.encode_up(0, {"w": m}, ID, RoundContext(r, 1)), ID)["w"]
        state = comp.state_dict()
        torch.testing.assert_close(got, grads[r], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state["up"][0]["e"]["w"], errors[r], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state["q"][UP][0]["q"]["w"], qs[r], rtol=1e-4, atol=1e-5)


def test_warm_start_q_is_kept_per_full_column() -> None:
    """A sub-model with other input columns reuses the Q rows of the columns it shares and
    draws the others fresh; the Q of columns it lacks is left as it was."""
    comp = make("powersgd", shapes={"w": (16, 12)}, rank=2, dense_below=0)
    a, b = Cols([0, 1, 2, 3, 4, 5, 6, 7]), Cols([4, 5, 6, 7, 8, 9, 10, 11])
    comp.encode_up(0, {"w": torch.randn(16, 8)}, a, RoundContext(0, 1))
    q1 = comp.state_dict()["q"][UP][0]["q"]["w"].clone()
    assert q1.shape == (12, 2)
    assert bool(torch.isfinite(q1[:8]).all()) and bool(torch.isnan(q1[8:]).all())
    m = torch.randn(16, 8)
    rec = codec.decode(comp.encode_up(0, {"w": m}, b, RoundContext(1, 1)))[0]
    q2 = comp.state_dict()["q"][UP][0]["q"]["w"]
    assert torch.equal(q2[:4], q1[:4])  # columns b lacks: untouched
    torch.testing.assert_close(q2[4:], rec.q)  # b's columns: its new Q
    # and its first P was computed from a's Q on the shared columns (4..7), fresh on 8..11
    e = comp.state_dict()["up"][0]["e"]["w"]
    assert e.shape == (16, 12)


def test_downlink_converges_to_a_fixed_model() -> None:
    comp = make("powersgd", rank=2, dense_below=100, downlink=True)
    w = {"w": torch.randn(64, 40), "b": torch.randn(64)}
    comp.decode_down(0, comp.encode_down(0, w, ID), ID)
    moved = {n: t + 0.05 * torch.randn_like(t) for n, t in w.items()}
    errs = []
    for r in range(1, 60):
        comp.begin_round(r)
        payload = comp.encode_down(0, moved, ID)
        assert len(payload) == 8 + (3 + 1) + (3 + 1 + 4 * 2 * (64 + 40)) + (2 + 256)
        got = comp.decode_down(0, payload, ID)
        errs.append(float((got["w"] - moved["w"]).norm()))
    assert errs[-1] < 0.2 * errs[0]
    assert math.isfinite(errs[-1])


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("efsign", {}, 213_464),
        ("powersgd", {"rank": 1}, 25_847),
        ("powersgd", {"rank": 2}, 45_983),
        ("powersgd", {"rank": 4}, 86_255),
        ("qsgd", {"levels": 4}, 235_198),
    ],
)
def test_cnn_mnist_upload_sizes_in_the_docs(name: str, options: dict, size: int) -> None:
    """docs/concepts/compression.md's table (efsign and powersgd sizes do not depend on the
    values; QSGD's do, held to 1%)."""
    g = torch.Generator().manual_seed(0)
    upd = {n: torch.randn(s, generator=g) * 0.01 for n, s in CNN_MNIST.items()}
    got = len(make(name, **options).encode_up(0, upd, ID, RoundContext(0, 10)))
    assert got == pytest.approx(size, rel=0.01 if name == "qsgd" else 0)
