"""BatchedTrainer gives SequentialTrainer's numbers: weights, losses, order, for every model kind.

Clients have unequal sizes (short last batches, clients running out of batches early, one
client with fewer samples than a batch), chunks are smaller than the round, and momentum and
weight decay are on, so every branch of the stacked SGD is exercised.
"""

from dataclasses import replace

import pytest
import torch

from afd_cli import submodel
from afd_cli.data.samples import TensorSamples, WindowSamples
from afd_cli.federated import batched
from afd_cli.federated.batched import BatchedTrainer, chunk_from_memory
from afd_cli.federated.client import LocalJob, LocalSGD, SequentialTrainer
from afd_cli.models.char_lstm import CharLSTM
from afd_cli.models.cnn import CNN
from afd_cli.models.mlp import MLP

SIZES = (3, 17, 25, 40)
SGD = LocalSGD(epochs=2, batch_size=10, lr=0.05, momentum=0.9, weight_decay=1e-3)
CPU = torch.device("cpu")


def _images(n=100, shape=(1, 8, 8), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorSamples(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def _text(n=100, seq_len=6, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, vocab, (n + seq_len + 1,), generator=g, dtype=torch.uint8)
    return WindowSamples(text, torch.arange(n), seq_len)


def _jobs(model, data, sizes=SIZES, rates=None, seed=0):
    """One job per size; ``rates[i]`` (None = full model) picks a random sub-model."""
    torch.manual_seed(seed)
    full = {k: v.detach().clone() for k, v in model.named_parameters()}
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    rates = rates or [None] * len(sizes)
    jobs, start = [], 0
    for c, (size, rate) in enumerate(zip(sizes, rates, strict=True)):
        keep = None
        if rate is not None:
            keep = submodel.random_keep(model, rate, torch.Generator().manual_seed(100 + c))
        view = submodel.View(model, keep)
        indices = perm[start : start + size]
        start += size
        jobs.append(LocalJob(c, view.units, view.extract(full), indices, seed=1000 + c))
    return jobs


def _assert_same(model, data, jobs, chunk, **opts):
    sgd = replace(SGD, **opts)
    seq = SequentialTrainer(model, data, sgd, device=CPU).train(jobs)
    done = []
    got = BatchedTrainer(model, data, sgd, device=CPU, chunk=chunk).train(
        jobs, lambda: done.append(1)
    )
    assert len(got) == len(jobs) == len(done)
    for job, s, b in zip(jobs, seq, got, strict=True):
        assert b.num_samples == s.num_samples == len(job.indices)
        assert b.loss == pytest.approx(s.loss, rel=1e-5)
        assert b.weights.keys() == s.weights.keys()
        for k, w in s.weights.items():
            assert b.weights[k].shape == w.shape
            assert b.weights[k].is_contiguous()
            torch.testing.assert_close(b.weights[k], w, atol=1e-5, rtol=1e-5)
            # every client actually trained: a no-op trainer could not pass
            assert not torch.equal(w, job.weights[k])
    return got


def _cnn():
    return CNN((1, 8, 8), 10, {"conv1": 4, "conv2": 6, "fc1": 16})


def _mlp():
    return MLP((1, 8, 8), 10, {"fc1": 12, "fc2": 8})


@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_batched_equals_sequential(make):
    model, data = make(), _images()
    _assert_same(model, data, _jobs(model, data), chunk=3)


def test_batched_equals_sequential_without_momentum_or_weight_decay():
    model, data = _mlp(), _images()
    _assert_same(model, data, _jobs(model, data), chunk=3, momentum=0.0, weight_decay=0.0)


@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_sub_models_of_one_rate_and_the_full_model_in_one_round(make):
    model, data = make(), _images()
    rates = [0.5, None, 0.5, 0.5, 0.25]
    jobs = _jobs(model, data, sizes=(17, 3, 25, 40, 12), rates=rates)
    # rate 0.5: same shapes, different units; with the full model, three shape groups
    assert jobs[0].units == jobs[2].units != jobs[1].units
    assert not torch.equal(jobs[0].weights["fc1.bias"], jobs[2].weights["fc1.bias"])
    got = _assert_same(model, data, jobs, chunk=2)
    assert [tuple(r.weights["fc1.weight"].shape) for r in got] == [
        tuple(j.weights["fc1.weight"].shape) for j in jobs
    ]


def test_char_lstm_batched_equals_sequential():
    model, data = CharLSTM(20, {"lstm1": 6, "lstm2": 5}, embed_dim=4), _text()
    trainer = BatchedTrainer(model, data, SGD, device=CPU, chunk=3)
    assert trainer.batched  # a functional LSTM, not the sequential fallback
    jobs = _jobs(model, data, rates=[0.5, 0.5, None, 0.5])
    _assert_same(model, data, jobs, chunk=3)


def test_other_recurrent_models_fall_back_to_sequential_with_one_note(capsys):
    class OtherLSTM(CharLSTM):  # not CharLSTM's forward, so no functional LSTM for it
        def with_units(self, units):
            return OtherLSTM(self.vocab, units, self.embed_dim)

    model, data = OtherLSTM(20, {"lstm1": 6}, embed_dim=4), _text()
    trainer = BatchedTrainer(model, data, SGD, device=CPU, chunk=2)
    assert not trainer.batched
    jobs = _jobs(model, data, sizes=(17, 25))
    seq = SequentialTrainer(model, data, SGD, device=CPU).train(jobs)
    for _ in range(2):
        got = trainer.train(jobs)
    for s, b in zip(seq, got, strict=True):
        assert b.loss == pytest.approx(s.loss, rel=1e-5)
        for k, w in s.weights.items():
            torch.testing.assert_close(b.weights[k], w, atol=1e-5, rtol=1e-5)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and len(err.strip().splitlines()) == 1


def test_auto_chunk_on_cpu_and_chunking_does_not_change_numbers(monkeypatch):
    model, data = _mlp(), _images()
    jobs = _jobs(model, data)
    assert (
        BatchedTrainer(model, data, SGD, device=CPU).chunk_size(jobs[0], 100) == batched.CPU_CHUNK
    )
    whole = _assert_same(model, data, jobs, chunk=None)
    monkeypatch.setattr(batched, "CPU_CHUNK", 1)
    ones = BatchedTrainer(model, data, SGD, device=CPU, chunk=None).train(jobs)
    for a, b in zip(whole, ones, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        for k in a.weights:
            torch.testing.assert_close(a.weights[k], b.weights[k], atol=1e-6, rtol=1e-6)


def test_chunk_from_memory():
    assert chunk_from_memory(1000, 100, 50) == 5  # half of the memory, 100 bytes a client
    assert chunk_from_memory(1000, 10_000, 50) == 1  # always at least one
    assert chunk_from_memory(10**12, 100, 50) == 50  # never more than the clients


def test_bf16_runs_and_stays_close():
    model, data = _cnn(), _images()
    jobs = _jobs(model, data)
    sgd = replace(SGD, precision="bf16")
    seq = SequentialTrainer(model, data, sgd, device=CPU).train(jobs)
    got = BatchedTrainer(model, data, sgd, device=CPU, chunk=3).train(jobs)
    for s, b in zip(seq, got, strict=True):
        assert b.loss == pytest.approx(s.loss, rel=2e-2)
        for k, w in s.weights.items():
            assert b.weights[k].dtype == torch.float32
            torch.testing.assert_close(b.weights[k], w, atol=2e-2, rtol=0)


def test_empty_round_and_empty_client():
    # partitions give every client >= 1 sample; SequentialTrainer would take one NaN step on
    # an empty batch, the batched trainer leaves such a client where it was with loss 0
    model, data = _mlp(), _images()
    trainer = BatchedTrainer(model, data, SGD, device=CPU, chunk=4)
    assert trainer.train([]) == []
    jobs = _jobs(model, data, sizes=(0, 17))
    got = trainer.train(jobs)
    assert got[0].loss == 0.0 and got[0].num_samples == 0
    for k, w in jobs[0].weights.items():
        assert torch.equal(got[0].weights[k], w)
    seq = SequentialTrainer(model, data, SGD, device=CPU).train(jobs[1:])
    assert got[1].loss == pytest.approx(seq[0].loss, rel=1e-5)
    for k, w in seq[0].weights.items():
        torch.testing.assert_close(got[1].weights[k], w, atol=1e-5, rtol=1e-5)
