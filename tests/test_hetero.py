"""Sub-models sized per client (issue 25): HeteroFL, FedRolex, FjORD, widths per client for
every sized strategy, FjORD's per-step widths in local training, and what a run records."""

import csv
import math

import pytest
import torch
from torch.nn import functional as F

from afd_cli import compose, models, network, strategies
from afd_cli.config import ConfigError, validate
from afd_cli.federated.aggregate import MaskedMean
from afd_cli.federated.client import LocalJob, LocalSGD, SequentialTrainer, StepPlan
from afd_cli.flops import TrainingCost
from afd_cli.metrics import (
    CLIENT_COLUMNS,
    CLIENT_INT_COLUMNS,
    ClientRow,
    ClientsWriter,
    intact_client_rows,
)
from afd_cli.run import loop
from afd_cli.strategies.widths import block_tiers
from afd_cli.submodel import View, units_at_width

MODELS = {
    "mlp": ((1, 8, 8), 10, {"hidden": 20}),
    "cnn_mnist": ((1, 28, 28), 10, {}),
    "cnn_femnist": ((1, 28, 28), 62, {}),
    "char_lstm": ((80,), 80, {"lstm_hidden": 12}),
}
TIERS = [1.0, 0.5, 0.25, 0.125, 0.0625]


def build(name: str) -> models.FLModel:
    shape, classes, kw = MODELS[name]
    return models.build(name, shape, classes, **kw)


def keep_lists(view: View) -> dict[str, list[int]]:
    if view.keep is None:
        return {k: list(range(n)) for k, n in view.full_units.items()}
    return {k: v.tolist() for k, v in view.keep.items()}


# -- which units --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_heterofl_keeps_the_first_ceil_w_k_units_and_the_whole_output_layer(name):
    model = build(name)
    s = strategies.make("heterofl", model, widths=TIERS, assign="listed")
    views = s.select(0, [0, 1, 2, 3, 4])
    full = dict(model.named_parameters())
    for w, view in zip(TIERS, views, strict=True):
        assert view.width == w
        assert keep_lists(view) == {
            k: list(range(math.ceil(w * n))) for k, n in model.units.items()
        }
        sub = view.extract({k: p.detach() for k, p in full.items()})
        small = model.with_units(view.units)
        assert {k: tuple(v.shape) for k, v in sub.items()} == {
            k: tuple(p.shape) for k, p in small.named_parameters()
        }
        out = [k for k in full if k.startswith(("fc2.", "fc3.", "fc."))][-2:]  # output layer
        assert all(sub[k].shape[0] == full[k].shape[0] for k in out)


def test_fedrolex_window_rolls_one_unit_per_round_and_wraps():
    model = build("mlp")  # fc1, fc2: 20 units each
    s = strategies.make("fedrolex", model, widths=[0.25], assign="fixed")
    for t in range(45):
        (view,) = s.select(t, [3])
        start = (20 - t % 20) % 20
        assert keep_lists(view)["fc1"] == sorted((start + j) % 20 for j in range(5))
    # the round's clients share the start and differ only in width: nested windows
    s = strategies.make("fedrolex", model, widths=[1.0, 0.5, 0.25], assign="listed")
    a, b, c = (set(keep_lists(v)["fc2"]) for v in s.select(7, [0, 1, 2]))
    assert c < b < a and len(b) == 10 and len(c) == 5


def test_fjord_draws_each_steps_width_from_the_tiers_up_to_the_clients():
    model = build("mlp")
    s = strategies.make("fjord", model, seed=3, widths=[0.2, 0.4, 0.6, 0.8, 1.0], assign="listed")
    views = s.select(5, [0, 1, 2, 3, 4])
    for w, view in zip([0.2, 0.4, 0.6, 0.8, 1.0], views, strict=True):
        plan = s.local_plan(5, views.index(view), view, 400)
        assert len(plan.units) == 400 and not plan.distill
        seen = {u["fc1"] for u in plan.units}
        allowed = {units_at_width(20, p) for p in (0.2, 0.4, 0.6, 0.8, 1.0) if p <= w}
        assert seen == allowed  # 400 uniform draws reach every allowed width
        assert plan == s.local_plan(5, views.index(view), view, 400)  # a pure function
    other = s.local_plan(6, 4, views[4], 400)
    assert other != s.local_plan(5, 4, views[4], 400)


# -- widths per client --------------------------------------------------------------------


def test_fixed_tiers_follow_heterofls_index_blocks():
    assert block_tiers(10, [1, 1]) == [0] * 5 + [1] * 5
    assert block_tiers(11, [1, 2]) == [0] * 3 + [1] * 8  # 3 + 6, the rest to the last tier
    assert block_tiers(100, [1] * 5) == [i // 20 for i in range(100)]  # FjORD's cid // 20
    assert block_tiers(10, [0.3, 0.7]) == [0] * 3 + [1] * 7
    s = strategies.make("heterofl", build("mlp"), samples=(50,) * 10, widths=[1, 0.5])
    assert [v.width for v in s.select(0, list(range(10)))] == [1.0] * 5 + [0.5] * 5


def test_per_round_widths_are_redrawn_from_the_shares():
    s = strategies.make(
        "heterofl", build("mlp"), widths=[1, 0.25], shares=[3, 1], assign="per_round"
    )
    draws = [v.width for t in range(200) for v in s.select(t, [0, 1, 2, 3, 4])]
    assert abs(draws.count(1.0) / len(draws) - 0.75) < 0.05
    assert [v.width for v in s.select(9, [0, 1])] == [v.width for v in s.select(9, [0, 1])]


def _clocked(name, deadline, **kw):
    model = build("mlp")
    samples = tuple(40 + 15 * c for c in range(12))
    profile = network.Profile(1.0, 0.5, 10.0, 0.0002, spread=0.5, deadline_s=deadline)
    cost = TrainingCost(model, torch.zeros(1, 1, 8, 8), 1, 10)
    clock = network.Clock(profile, seed=0)
    return strategies.make(name, model, samples=samples, clock=clock, cost=cost, **kw)


def test_device_widths_are_the_widest_tier_that_fits_the_deadline():
    s = _clocked("heterofl", 0.6, widths=TIERS, assign="device")
    clients = list(range(12))
    chosen = [v.width for v in s.select(0, clients)]
    for c, w in zip(clients, chosen, strict=True):
        t = {x: s.seconds(c, x) for x in TIERS}
        fits = [x for x in TIERS if t[x] <= 0.6]
        assert w == (max(fits) if fits else min(TIERS))
        # the estimate is the clock's formula at the width's dense bytes and FLOPs
        p = s.clock.profile
        units = s.units_of(w)
        params = s.params_of(units)
        assert params == sum(x.numel() for x in build("mlp").with_units(units).parameters())
        assert t[w] == pytest.approx(
            network.client_seconds(
                p,
                network.client_link(p, 0, c),
                4 * params,
                4 * params,
                s.cost.flops(units, s.samples[c]),
            )
        )
    assert len(set(chosen)) > 1  # the spread of links and devices spreads the widths


def test_device_widths_follow_the_previous_rounds_bytes_per_parameter():
    s = _clocked("heterofl", 0.6, widths=TIERS, assign="device")
    before = [v.width for v in s.select(0, list(range(12)))]
    views = s.select(0, [0, 1])
    rows = [
        ClientRow(1, c, 100, 50, 40, 4, 0, 0, v.width) for c, v in zip([0, 1], views, strict=True)
    ]
    s.observe_cost(0, rows, views)
    params = sum(s.params_of(v.units) for v in views)
    assert s.bytes_per_param == [200 / params, 100 / params]
    after = [v.width for v in s.select(1, list(range(12)))]
    assert all(a >= b for a, b in zip(after, before, strict=True)) and after != before
    state = s.state_dict()
    fresh = _clocked("heterofl", 0.6, widths=TIERS, assign="device")
    fresh.load_state_dict(state)
    assert fresh.bytes_per_param == s.bytes_per_param


def test_without_a_deadline_device_widths_are_speed_quantiles():
    s = _clocked("heterofl", None, widths=[0.25, 1.0], shares=[1, 2], assign="device")
    widths = [v.width for v in s.select(0, list(range(12)))]
    assert widths.count(1.0) == 8 and widths.count(0.25) == 4
    slow = sorted(range(12), key=lambda c: s.seconds(c, 1.0))[8:]
    assert {c for c in range(12) if widths[c] == 0.25} == set(slow)


def test_fjords_device_estimate_is_the_mean_over_its_step_widths():
    s = _clocked("fjord", 0.6, widths=[1.0, 0.5], assign="device")
    both = [s.cost.flops(s.units_of(w), 100) for w in (0.5, 1.0)]
    assert s.flops_of(1.0, 100) == round(sum(both) / 2)
    d = _clocked("fjord", 0.6, widths=[1.0, 0.5], assign="device", distill=True)
    assert d.flops_of(1.0, 100) == round(sum(both) / 2) + both[1]


@pytest.mark.parametrize("name", ["fd", "multi", "single"])
def test_dropout_strategies_take_a_rate_per_client(name):
    model = build("mlp")
    default = strategies.make(name, model, seed=1, rate=0.25)
    same = strategies.make(name, model, seed=1, rate=0.5, widths=[0.75])
    for t in range(4):
        a, b = default.select(t, [0, 1, 2]), same.select(t, [0, 1, 2])
        assert [keep_lists(v) for v in a] == [keep_lists(v) for v in b]
        assert [v.width for v in a] == [0.75] * 3
        losses = [1.0 / (t + 1 + c) for c in range(3)]
        default.observe(t, [0, 1, 2], losses, [5, 5, 5])
        same.observe(t, [0, 1, 2], losses, [5, 5, 5])
    mixed = strategies.make(name, model, seed=1, widths=[1.0, 0.5, 0.25], assign="listed")
    for t in range(3):
        views = mixed.select(t, [0, 1, 2])
        assert [v.units["fc1"] for v in views] == [20, 10, 5]
        if name == "single":  # nested: the narrower clients take A's best-scored units
            kept = [set(keep_lists(v)["fc2"]) for v in views]
            assert kept[2] < kept[1] < kept[0]
        mixed.observe(t, [0, 1, 2], [1.0 / (t + 1)] * 3, [5, 5, 5])


def test_multi_redraws_a_map_when_its_clients_width_changes():
    model = build("mlp")
    s = strategies.make("multi", model, widths=[1.0, 0.5], assign="per_round")
    sizes = set()
    for t in range(12):
        views = s.select(t, [4])
        sizes.add(views[0].units["fc1"])
        assert views[0].units["fc1"] == (20 if views[0].width == 1.0 else 10)
        s.observe(t, [4], [1.0 / (t + 1)], [5])
    assert sizes == {10, 20}


def test_width_options_are_checked():
    base = ["dataset=digits", "model=mlp"]
    for bad, words in (
        (["strategy=heterofl", "strategy.widths=[1,0]"], "(0, 1]"),
        (["strategy=heterofl", "strategy.widths=[1,0.5]", "strategy.shares=[1]"], "one share"),
        (["strategy=fd", "strategy.assign=listed"], "one width per client"),
        (["strategy=fjord", "strategy.assign=sometimes"], "choose one of"),
    ):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("]", r"\]")):
            validate(compose.compose([*base, *bad]))


# -- FjORD's ordered dropout in local training --------------------------------------------


def _slices(model, units):
    """The prefix sub-model of ``units`` as a module of that size, with the same weights."""
    small = model.with_units(units)
    view = View(model, {k: torch.arange(n) for k, n in units.items()})
    sub = view.extract({k: p.detach() for k, p in model.named_parameters()})
    with torch.no_grad():
        for k, p in small.named_parameters():
            p.copy_(sub[k])
    return small, view


@pytest.mark.parametrize("name", ["mlp", "cnn_mnist", "char_lstm"])
def test_a_masked_step_is_exactly_the_prefix_sub_models_step(name):
    """Outputs and gradients of the masked model equal the smaller model's; masked entries
    get exactly zero gradient (char_lstm: the mask acts inside the recurrence)."""
    torch.manual_seed(0)
    model = build(name)
    shape, classes, _ = MODELS[name]
    x = torch.randint(0, classes, (6, *shape)) if name == "char_lstm" else torch.randn(6, *shape)
    y = torch.randint(0, classes, (6,))
    units = {k: max(1, n // 3) for k, n in model.units.items()}
    small, view = _slices(model, units)
    model.unit_masks = {k: (torch.arange(n) < units[k]).float() for k, n in model.units.items()}
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(small(x), y).backward()
    model.unit_masks = None
    grads = {k: p.grad for k, p in model.named_parameters()}
    kept = view.extract(grads)
    for k, p in small.named_parameters():
        assert torch.allclose(kept[k], p.grad, atol=1e-5, rtol=1e-4), k
    full, mask = view.inflate(kept, grads)
    for k, g in grads.items():
        assert torch.equal(g[~mask[k]], torch.zeros_like(g[~mask[k]])), k


def _digits_like(n=60, seed=0):
    from afd_cli.data.samples import TensorSamples

    g = torch.Generator().manual_seed(seed)
    return TensorSamples(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _train(model, data, job, sgd):
    return SequentialTrainer(model, data, sgd, device=torch.device("cpu")).train([job])[0]


def test_a_plan_of_whole_steps_is_plain_local_sgd():
    model, data = build("mlp"), _digits_like()
    sgd = LocalSGD(2, 8, 0.1, momentum=0.5)
    w = {k: p.detach().clone() for k, p in model.named_parameters()}
    plain = LocalJob(0, dict(model.units), w, torch.arange(60), 7)
    steps = 2 * math.ceil(60 / 8)
    planned = LocalJob(
        0, dict(model.units), w, torch.arange(60), 7, StepPlan([model.units] * steps)
    )
    a, b = _train(model, data, plain, sgd), _train(model, data, planned, sgd)
    assert a.loss == b.loss and all(torch.equal(a.weights[k], b.weights[k]) for k in w)


def test_a_plan_of_one_prefix_trains_that_prefix_and_leaves_the_rest():
    model, data = build("mlp"), _digits_like()
    sgd = LocalSGD(1, 8, 0.1)
    units = {"fc1": 7, "fc2": 4}
    w = {k: p.detach().clone() for k, p in model.named_parameters()}
    plan = StepPlan([units] * math.ceil(60 / 8))
    res = _train(model, data, LocalJob(0, dict(model.units), w, torch.arange(60), 3, plan), sgd)
    small, view = _slices(model, units)
    sub = view.extract(w)
    ref = _train(model, data, LocalJob(0, units, sub, torch.arange(60), 3), sgd)
    got = view.extract(res.weights)
    for k in sub:
        assert torch.allclose(got[k], ref.weights[k], atol=1e-6), k
    _, mask = view.inflate(sub, w)
    for k in w:
        assert torch.equal(res.weights[k][~mask[k]], w[k][~mask[k]]), k
    assert res.loss == pytest.approx(ref.loss, rel=1e-6)


def test_plan_flops_charge_each_steps_width():
    model = build("mlp")
    cost = TrainingCost(model, torch.zeros(1, 1, 8, 8), 2, 8)
    small = {"fc1": 5, "fc2": 5}
    steps = cost.steps(20)  # 2 epochs of batches 8, 8, 4
    plan = StepPlan([small, model.units, small, model.units, small, model.units])
    assert steps == 6
    sizes = [8, 8, 4, 8, 8, 4]
    expect = sum(cost.per_sample(u) * n for u, n in zip(plan.units, sizes, strict=True))
    assert cost.plan_flops(plan, model.units, 20) == expect
    assert cost.plan_flops(StepPlan([model.units] * 6), model.units, 20) == cost.flops(
        model.units, 20
    )
    kd = StepPlan(plan.units, distill=True)
    assert cost.plan_flops(kd, model.units, 20) == expect + cost.flops(model.units, 20)


def test_the_batched_trainer_refuses_per_step_widths():
    cfg = validate(
        compose.compose(["dataset=digits", "model=mlp", "strategy=fjord", "trainer=batched"])
    )
    from afd_cli.run.build import trainer_kind

    with pytest.raises(ConfigError, match="trainer=batched cannot train strategy=fjord"):
        trainer_kind(cfg, torch.device("cpu"))
    auto = validate(compose.compose(["dataset=digits", "model=mlp", "strategy=fjord"]))
    assert trainer_kind(auto, torch.device("cuda")) == "sequential"


# -- aggregation ----------------------------------------------------------------------------


def test_entries_no_client_trained_keep_their_value():
    model = build("mlp")
    s = strategies.make("heterofl", model, widths=[0.5, 0.25], assign="listed")
    g = {k: p.detach().clone() for k, p in model.named_parameters()}
    views = s.select(0, [0, 1])
    mean = MaskedMean(g)
    mean.add_many(
        views,
        [{k: torch.ones_like(v) for k, v in view.extract(g).items()} for view in views],
        [3.0, 1.0],
    )
    new = {k: v.clone() for k, v in g.items()}
    mean.apply_(new)
    _, held = views[0].inflate(views[0].extract(g), g)
    for k in g:
        assert torch.equal(new[k][~held[k]], g[k][~held[k]]), k
        assert torch.allclose(new[k][held[k]], g[k][held[k]] + 1), k


# -- what a run records --------------------------------------------------------------------

RUN = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=16",
    "schedule.num_clients=6",
    "schedule.clients_per_round=3",
    "progress=none",
    "threads=1",
]


def _run(tmp_path, *extra, rounds=2):
    cfg = validate(compose.compose([*RUN, f"schedule.rounds={rounds}", *extra]))
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    return loop.run(cfg, out), out


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_clients_csv_records_each_clients_width_and_widths_csv_each_tier(tmp_path):
    _, out = _run(tmp_path, "strategy=heterofl", "strategy.widths=[1,0.5,0.25]")
    rows = _rows(out / "clients.csv")
    assert list(rows[0]) == CLIENT_COLUMNS and {r["width"] for r in rows} <= {"1", "0.5", "0.25"}
    assert [int(r["flops"]) > 0 for r in rows]
    tested = _rows(out / "widths.csv")
    assert [(r["round"], r["width"]) for r in tested] == [("2", "1"), ("2", "0.5"), ("2", "0.25")]
    last = _rows(out / "metrics.csv")[-1]
    assert tested[0]["test_acc"] == last["test_acc"]  # width 1: the global model's numbers


def test_fjords_rows_charge_its_plan(tmp_path):
    extra = ("strategy=fjord", "strategy.widths=[1,0.5]", "strategy.distill=true", "seed=4")
    _, out = _run(tmp_path, *extra)
    model = models.build("mlp", (1, 8, 8), 10, hidden=16)
    cost = TrainingCost(model, torch.zeros(1, 1, 8, 8), 1, 10)
    s = strategies.make("fjord", model, seed=4, widths=[1.0, 0.5], distill=True)
    rows = _rows(out / "clients.csv")
    for r in rows:
        view = s.view(int(r["round"]) - 1, float(r["width"]))
        n = int(r["samples"])
        plan = s.local_plan(int(r["round"]) - 1, int(r["client"]), view, cost.steps(n))
        assert int(r["flops"]) == cost.plan_flops(plan, view.units, n)
        assert int(r["flops"]) > cost.flops(view.units, n)  # the distillation pass on top
    assert {r["width"] for r in rows} == {"1", "0.5"}


def test_an_old_clients_csv_without_widths_still_resumes_and_reports(tmp_path):
    from afd_cli.report.retime import read_clients

    _, out = _run(tmp_path, "strategy=fd", "checkpoint_every=1", rounds=2)
    path = out / "clients.csv"
    rows = _rows(path)
    with path.open("w", newline="") as f:  # as a run before the width column wrote it
        w = csv.DictWriter(f, fieldnames=CLIENT_INT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert len(intact_client_rows(path, 3)) == 6
    assert list(read_clients(path).columns) == CLIENT_INT_COLUMNS
    _run(tmp_path, "strategy=fd", "checkpoint_every=1", rounds=4)  # resumes at round 3
    after = _rows(path)
    assert len(after) == 12 and list(after[0]) == CLIENT_COLUMNS
    assert [r["width"] for r in after] == [""] * 6 + ["0.75"] * 6
    assert [r["flops"] for r in after[:6]] == [r["flops"] for r in rows]
    assert len(read_clients(path)) == 12
    writer = ClientsWriter(path, 3, keep_rounds=4)  # a resume keeps the mixed file whole
    writer.close()
    assert _rows(path) == after


def test_the_report_adds_dropped_clients_and_each_widths_accuracy(tmp_path):
    from afd_cli import report

    _, out = _run(tmp_path, "strategy=heterofl", "strategy.widths=[1,0.25]", "seed=1")
    rep = report.build([out])
    text = report.markdown(rep)
    assert "## Clients and widths" in text
    line = next(x for x in text.splitlines() if x.startswith("| heterofl"))
    tested = {float(r["width"]): float(r["test_acc"]) for r in _rows(out / "widths.csv")}
    assert f"{100 * tested[0.25]:.2f}" in line and f"{100 * tested[1.0]:.2f}" in line
    assert "## Clients and widths" not in report.markdown(
        report.build([_run(_mk(tmp_path / "fd"), "strategy=fd")[1]])
    )


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("name", ["fjord", "multi"])
def test_widths_from_the_clock_resume_exactly(tmp_path, name):
    """The bytes per parameter the device rule learnt are checkpointed: a run stopped after
    round 2 and resumed gives the uninterrupted run's rows (and widths.csv)."""
    extra = (
        f"strategy={name}",
        "strategy.widths=[1,0.5,0.25]",
        "strategy.assign=device",
        "strategy.eval_widths=every",
        "compression=hadamard",
        "compression.bits=2",
        "network.deadline_s=0.01",
        "network.latency_ms=0",
        "network.device_gflops=0.5",
        "checkpoint_every=1",
    )
    _, whole = _run(_mk(tmp_path / "whole"), *extra, rounds=4)
    _, part = _run(_mk(tmp_path / "part"), *extra, rounds=2)
    _, part = _run(_mk(tmp_path / "part"), *extra, rounds=4)
    timing = ("wall_s", "train_s", "eval_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _rows(whole / "metrics.csv")]
    assert strip == [
        {k: v for k, v in r.items() if k not in timing} for r in _rows(part / "metrics.csv")
    ]
    assert _rows(whole / "clients.csv") == _rows(part / "clients.csv")
    assert _rows(whole / "widths.csv") == _rows(part / "widths.csv")
    widths = {r["width"] for r in _rows(whole / "clients.csv")}
    assert len(widths) > 1, widths  # the deadline spread the clients over the tiers
