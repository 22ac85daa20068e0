"""HeteroFL, FedRolex and FjORD against their authors' code, on identical inputs.

The index selection and one aggregation step of each official implementation are ported
below, as close to the original lines as a test allows (configuration globals become
arguments; nothing else is changed unless a comment says so). Each port cites its repository,
commit, file and lines:

* HeteroFL: github.com/dem123456789/HeteroFL-Computation-and-Communication-Efficient-
  Federated-Learning-for-Heterogeneous-Clients @ ea528c330ec832b141b2ad64ca299642c91685ae
* FedRolex: github.com/AIoT-MLSys-Lab/FedRolex @ 813510997e1802eb756d53baa4229c90ce5ac008
* FjORD: Flower's baseline by FjORD's authors, github.com/adap/flower, baselines/fjord
  @ fdef7afb1dca3030553be302366cfd285ed6632c

Two changes apply to every port: the output layer's rows are not masked to each client's
labels (HeteroFL's and FedRolex's ``label_split``, i.e. every client "has" every label here),
and McMahan's CNN's ``fc1.weight`` is handed to the ports as ``[512, 64, 49]`` (its input
columns grouped by the conv2 channel they come from), the shape in which their channel rule
applies; it is flattened back before comparing.
"""

import copy
from collections import OrderedDict
from functools import reduce

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from afd_cli import models, strategies
from afd_cli.data.samples import TensorSamples
from afd_cli.federated.aggregate import MaskedMean
from afd_cli.federated.client import LocalJob, LocalSGD, SequentialTrainer

RATES = [1, 0.5, 0.25, 0.125, 0.0625]  # HeteroFL utils.py:114, model_split_rate a-e
MODELS = {
    "mlp": ((1, 8, 8), 10, {"hidden": 200}),
    "cnn_mnist": ((1, 28, 28), 10, {}),
    "cnn_femnist": ((1, 28, 28), 62, {}),
}


def build(name):
    shape, classes, kw = MODELS[name]
    torch.manual_seed(0)
    return models.build(name, shape, classes, **kw)


def to_ref(model, params):
    """Our parameters as the ports take them (fc1.weight of a CNN grouped by channel)."""
    out = OrderedDict((k, v.detach().clone()) for k, v in params.items())
    if hasattr(model, "spatial"):
        w = out["fc1.weight"]
        out["fc1.weight"] = w.view(w.shape[0], -1, model.spatial)
    return out


def from_ref(model, params):
    out = OrderedDict((k, v.clone()) for k, v in params.items())
    if hasattr(model, "spatial"):
        out["fc1.weight"] = out["fc1.weight"].reshape(out["fc1.weight"].shape[0], -1)
    return out


def layer_of(model, key):
    """The droppable layer whose units index dim 0 of a weight (None: the output layer)."""
    axes = model.layout[key]
    return next((a.layer for a in axes if a.dim == 0), None)


# -- HeteroFL: fed.py ------------------------------------------------------------------------


def heterofl_split_model(global_parameters, model_rate, user_idx, global_model_rate=1):
    """fed.py:26-62 (``Federation.split_model``, the ``conv`` branch)."""
    idx_i = [None for _ in range(len(user_idx))]
    idx = [OrderedDict() for _ in range(len(user_idx))]
    output_weight_name = [k for k in global_parameters.keys() if "weight" in k][-1]  # noqa: SIM118
    for k, v in global_parameters.items():
        parameter_type = k.split(".")[-1]
        for m in range(len(user_idx)):
            if "weight" in parameter_type or "bias" in parameter_type:
                if parameter_type == "weight":
                    if v.dim() > 1:
                        input_size = v.size(1)
                        output_size = v.size(0)
                        if idx_i[m] is None:
                            idx_i[m] = torch.arange(input_size, device=v.device)
                        input_idx_i_m = idx_i[m]
                        if k == output_weight_name:
                            output_idx_i_m = torch.arange(output_size, device=v.device)
                        else:
                            scaler_rate = model_rate[user_idx[m]] / global_model_rate
                            local_output_size = int(np.ceil(output_size * scaler_rate))
                            output_idx_i_m = torch.arange(output_size, device=v.device)[
                                :local_output_size
                            ]
                        idx[m][k] = output_idx_i_m, input_idx_i_m
                        idx_i[m] = output_idx_i_m
                    else:
                        input_idx_i_m = idx_i[m]
                        idx[m][k] = input_idx_i_m
                else:
                    input_idx_i_m = idx_i[m]
                    idx[m][k] = input_idx_i_m
    return idx


def heterofl_distribute(global_parameters, param_idx, user_idx):
    """fed.py:164-178 (``Federation.distribute`` after ``split_model``)."""
    local_parameters = [OrderedDict() for _ in range(len(user_idx))]
    for k, v in global_parameters.items():
        for m in range(len(user_idx)):
            if v.dim() > 1:
                local_parameters[m][k] = copy.deepcopy(
                    v[torch.meshgrid(param_idx[m][k], indexing="ij")]
                )
            else:
                local_parameters[m][k] = copy.deepcopy(v[param_idx[m][k]])
    return local_parameters


def heterofl_combine(global_parameters, local_parameters, param_idx):
    """fed.py:180-218 (``Federation.combine``, the ``conv`` branch) without ``label_split``
    (the output layer is added like every other weight)."""
    count = OrderedDict()
    for k, v in global_parameters.items():
        parameter_type = k.split(".")[-1]
        count[k] = v.new_zeros(v.size(), dtype=torch.float32)
        tmp_v = v.new_zeros(v.size(), dtype=torch.float32)
        for m in range(len(local_parameters)):
            if parameter_type == "weight" and v.dim() > 1:
                tmp_v[torch.meshgrid(param_idx[m][k], indexing="ij")] += local_parameters[m][k]
                count[k][torch.meshgrid(param_idx[m][k], indexing="ij")] += 1
            else:
                tmp_v[param_idx[m][k]] += local_parameters[m][k]
                count[k][param_idx[m][k]] += 1
        tmp_v[count[k] > 0] = tmp_v[count[k] > 0].div_(count[k][count[k] > 0])
        v[count[k] > 0] = tmp_v[count[k] > 0].to(v.dtype)


def noisy(g, count, seed):
    """What each client "trained": the global weights moved at random, in full shape; a
    client sends its sub-model's entries of it (ours: extracted, theirs: ``distribute``)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in g.items()}
        for _ in range(count)
    ]


def ours_after_one_round(model, strategy, round, clients, local_of, weights=None):
    """Our round's aggregation: each client's update (trained minus received) into the
    mask-aware mean, applied to the global weights. Returns (views, new global weights)."""
    g = {k: p.detach().clone() for k, p in model.named_parameters()}
    views = strategy.select(round, clients)
    mean = MaskedMean(g)
    updates = []
    for i, view in enumerate(views):
        sent = view.extract(g)
        updates.append({k: local_of(i, view)[k] - sent[k] for k in sent})
    mean.add_many(views, updates, weights or [1.0] * len(views))
    mean.apply_(g)
    return views, g


@pytest.mark.parametrize("name", list(MODELS))
def test_heterofl_index_sets_and_sub_models_match_the_authors(name):
    model = build(name)
    g = {k: p.detach() for k, p in model.named_parameters()}
    users = list(range(len(RATES)))
    ref_idx = heterofl_split_model(to_ref(model, g), RATES, users)
    ref_local = heterofl_distribute(to_ref(model, g), ref_idx, users)
    s = strategies.make("heterofl", model, widths=RATES, assign="listed")
    for m, view in enumerate(s.select(0, users)):
        for k in g:
            layer = layer_of(model, k) if k.endswith("weight") else None
            if layer is not None:
                ours = (
                    view.keep[layer] if view.keep is not None else torch.arange(model.units[layer])
                )
                assert torch.equal(ours, ref_idx[m][k][0]), (m, k)
        sub = view.extract(g)
        for k, v in from_ref(model, ref_local[m]).items():
            assert torch.equal(sub[k], v), (m, k)


@pytest.mark.parametrize("name", ["mlp", "cnn_mnist"])  # cnn_femnist: the same rule, 4x slower
def test_heterofl_aggregation_of_mixed_widths_matches_the_authors(name):
    model = build(name)
    g = OrderedDict((k, p.detach().clone()) for k, p in model.named_parameters())
    users = [0, 1, 2, 3, 4, 5]
    rates = [0.5, 0.5, 0.25, 0.5, 0.0625, 0.125]  # nobody wider than 1/2
    fields = noisy(g, len(users), 1)
    s = strategies.make("heterofl", model, widths=rates, assign="listed")
    _, ours = ours_after_one_round(model, s, 0, users, lambda i, view: view.extract(fields[i]))
    ref = to_ref(model, g)
    idx = heterofl_split_model(ref, rates, users)
    local = [heterofl_distribute(to_ref(model, fields[m]), idx, users)[m] for m in users]
    heterofl_combine(ref, local, idx)
    for k, v in from_ref(model, ref).items():
        assert torch.allclose(ours[k], v, atol=1e-6), k
    half = model.units["fc1"] // 2  # rows no client trained keep their value
    assert torch.equal(ours["fc1.weight"][half:], g["fc1.weight"][half:])


# -- FedRolex: resnet_server.py --------------------------------------------------------------


def fedrolex_split_model(global_parameters, model_rate, user_idx, rounds, hidden, output):
    """resnet_server.py:82-135 (``ResnetServerRoll.split_model``, ``overlap=None``). The
    original tells layers apart by ResNet names: ``'conv1' in k or 'conv2' in k`` (the
    rolled layers) and ``'linear' in k`` (the output layer); here those are ``hidden`` and
    ``output``."""
    idx_i = [None for _ in range(len(user_idx))]
    idx = [OrderedDict() for _ in range(len(user_idx))]
    for k, v in global_parameters.items():
        parameter_type = k.split(".")[-1]
        for m in range(len(user_idx)):
            if "weight" in parameter_type or "bias" in parameter_type:
                if parameter_type == "weight":
                    if v.dim() > 1:
                        input_size = v.size(1)
                        output_size = v.size(0)
                        if k in hidden:
                            if idx_i[m] is None:
                                idx_i[m] = torch.arange(input_size, device=v.device)
                            input_idx_i_m = idx_i[m]
                            scaler_rate = model_rate[user_idx[m]] / 1
                            local_output_size = int(np.ceil(output_size * scaler_rate))
                            roll = rounds % output_size
                            model_idx = torch.arange(output_size, device=v.device)
                            model_idx = torch.roll(model_idx, roll, -1)
                            output_idx_i_m = model_idx[:local_output_size]
                            idx_i[m] = output_idx_i_m
                        elif k in output:
                            input_idx_i_m = idx_i[m]
                            output_idx_i_m = torch.arange(output_size, device=v.device)
                        else:
                            raise ValueError("Not valid k")
                        idx[m][k] = (output_idx_i_m, input_idx_i_m)
                    else:
                        input_idx_i_m = idx_i[m]
                        idx[m][k] = input_idx_i_m
                else:
                    input_size = v.size(0)
                    if k in output:
                        input_idx_i_m = torch.arange(input_size, device=v.device)
                        idx[m][k] = input_idx_i_m
                    else:
                        input_idx_i_m = idx_i[m]
                        idx[m][k] = input_idx_i_m
    return idx


def fedrolex_combine(
    global_parameters, tmp_counts, local_parameters, param_idx, output, aliased=True
):
    """resnet_server.py:156-221 (``ResnetServerRoll.combine``, ``weighting='avg'``) without
    ``label_split``; ``'linear' in k`` is ``k in output``. Returns the new ``tmp_counts``.

    ``aliased``: as the original, ``self.tmp_counts = tmp_counts_cpy`` inside the loop over
    parameters (line 218), so from the second parameter on the counts it weights biases and
    the output layer by are the copy that the same round's earlier clients already raised.
    ``aliased=False`` moves that line after the loop (each round reads the counts as they
    were when it began)."""
    count = OrderedDict()
    updated_parameters = copy.deepcopy(global_parameters)
    tmp_counts_cpy = copy.deepcopy(tmp_counts)
    for k, v in updated_parameters.items():
        parameter_type = k.split(".")[-1]
        count[k] = v.new_zeros(v.size(), dtype=torch.float32, device="cpu")
        tmp_v = v.new_zeros(v.size(), dtype=torch.float32, device="cpu")
        for m in range(len(local_parameters)):
            if parameter_type == "weight" and v.dim() > 1:
                mesh = torch.meshgrid(param_idx[m][k], indexing="ij")
                if k in output:
                    tmp_v[mesh] += tmp_counts[k][mesh] * local_parameters[m][k]
                    count[k][mesh] += tmp_counts[k][mesh]
                    tmp_counts_cpy[k][mesh] += 1
                else:
                    K = 1
                    tmp_v[mesh] += K * local_parameters[m][k]
                    count[k][mesh] += K
                    tmp_counts_cpy[k][mesh] += 1
            else:
                tmp_v[param_idx[m][k]] += tmp_counts[k][param_idx[m][k]] * local_parameters[m][k]
                count[k][param_idx[m][k]] += tmp_counts[k][param_idx[m][k]]
                tmp_counts_cpy[k][param_idx[m][k]] += 1
        tmp_v[count[k] > 0] = tmp_v[count[k] > 0].div_(count[k][count[k] > 0])
        v[count[k] > 0] = tmp_v[count[k] > 0].to(v.dtype)
        if aliased:
            tmp_counts = tmp_counts_cpy
    tmp_counts = tmp_counts_cpy
    global_parameters.update(updated_parameters)
    return tmp_counts


def _rolex_names(model):
    hidden = {k for k in model.layout if k.endswith("weight") and layer_of(model, k)}
    output = {k for k in model.layout if not layer_of(model, k)} - {
        k for k in model.layout if k.endswith("bias") and model.layout[k]
    }
    return hidden, output


@pytest.mark.parametrize("name", ["mlp", "cnn_mnist"])
def test_fedrolex_windows_match_the_authors_every_round(name):
    model = build(name)
    g = to_ref(model, dict(model.named_parameters()))
    hidden, output = _rolex_names(model)
    s = strategies.make("fedrolex", model, widths=RATES, assign="listed")
    users = list(range(len(RATES)))
    for t in [0, 1, 2, 7, 31, 32, 33, 200, 511, 512, 513, 600]:
        ref = fedrolex_split_model(g, RATES, users, t, hidden, output)
        for m, view in enumerate(s.select(t, users)):
            for k in hidden:
                layer = layer_of(model, k)
                got = torch.arange(model.units[layer]) if view.keep is None else view.keep[layer]
                assert torch.equal(got, ref[m][k][0].sort().values), (t, m, k)


@pytest.mark.parametrize("aliased", [False, True])
def test_fedrolex_aggregation_over_two_rounds_matches_the_authors(aliased):
    """Two rounds, so that the authors' per-entry counts (``tmp_counts``) differ between
    entries in the second. Read as the paper states (HeteroFL's aggregation) -- each round
    reading the counts of its start, which all its clients share, so they cancel -- the
    result is the plain mean over the clients that held each entry: ours with equal weights,
    every parameter. The code as written (``aliased``) agrees on every hidden weight matrix
    but weights biases and the output layer by counts that the round's earlier clients
    already raised, so those differ. The clients' values go to the port in its own (rolled)
    index order, via ``distribute`` (resnet_server.py:137-154, the same code as HeteroFL's)."""
    model = build("mlp")
    hidden, output = _rolex_names(model)
    rates = [1, 0.5, 0.25, 0.5, 0.125]
    users = list(range(len(rates)))
    s = strategies.make("fedrolex", model, widths=rates, assign="listed")
    ref = to_ref(model, dict(model.named_parameters()))
    counts = {k: torch.ones_like(v) for k, v in ref.items()}  # resnet_server.py:32-33
    for t in (190, 191):  # windows that wrap around the end of each 200-unit layer
        g = {k: p.detach().clone() for k, p in model.named_parameters()}
        fields = noisy(g, len(users), t)
        _, ours = ours_after_one_round(model, s, t, users, lambda i, v, f=fields: v.extract(f[i]))
        idx = fedrolex_split_model(ref, rates, users, t, hidden, output)
        local = [heterofl_distribute(fields[m], idx, users)[m] for m in users]
        counts = fedrolex_combine(ref, counts, local, idx, output, aliased)
        for k, v in ref.items():
            same = torch.allclose(ours[k], v, atol=1e-6)
            assert same == (not aliased or k in hidden), (t, k)
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(ours[k] if not aliased else ref[k])
    assert all(c.min() < c.max() for k, c in counts.items() if k not in output)  # uneven


# -- FjORD: Flower's baseline ----------------------------------------------------------------


def od_sampler_widths(p_s, max_p):
    """od/samplers/fixed_od.py:20: the widths a client draws from."""
    return np.array([p for p in p_s if p <= max_p])


def od_out_dim(width, p):
    """od/layers/linear.py:42-45 and od/layers/conv.py:30-33: the units a layer keeps."""
    if not p:
        return width
    return int(np.ceil(width * p))


def get_p_layer_updates(p, layer_updates, num_examples, p_max_s):
    """strategy.py:39-60."""
    layer_updates_p = [
        layer_update
        for p_max, layer_update in zip(p_max_s, layer_updates, strict=True)
        if p_max >= p
    ]
    num_examples_p = sum(n for p_max, n in zip(p_max_s, num_examples, strict=True) if p_max >= p)
    return layer_updates_p, num_examples_p


def fjord_average(i, layer_updates, num_examples, p_max_s, p_s, fjord_config, original_parameters):
    """strategy.py:63-136 (``fjord_average``)."""
    update = copy.deepcopy(original_parameters[i])
    if fjord_config["layer_p"][i] is not None:
        p = fjord_config["layer_p"][i]
        layer_updates_p, num_examples_p = get_p_layer_updates(
            p, layer_updates, num_examples, p_max_s
        )
        if len(layer_updates_p) == 0:
            return update
        assert num_examples_p > 0
        return reduce(np.add, layer_updates_p) / num_examples_p
    if fjord_config["layer"][i] in ["ODLinear", "ODConv2d", "ODBatchNorm2d"]:
        for p in p_s[::-1]:
            layer_updates_p, num_examples_p = get_p_layer_updates(
                p, layer_updates, num_examples, p_max_s
            )
            if len(layer_updates_p) == 0:
                continue
            in_dim = int(fjord_config[p][i]["in_dim"]) if fjord_config[p][i]["in_dim"] else None
            out_dim = int(fjord_config[p][i]["out_dim"]) if fjord_config[p][i]["out_dim"] else None
            assert num_examples_p > 0
            if len(update.shape) == 1:
                layer_updates_p = [layer_update[:out_dim] for layer_update in layer_updates_p]
                update[:out_dim] = reduce(np.add, layer_updates_p) / num_examples_p
            else:
                layer_updates_p = [
                    layer_update[:out_dim, :in_dim] for layer_update in layer_updates_p
                ]
                update[:out_dim, :in_dim] = reduce(np.add, layer_updates_p) / num_examples_p
        return update
    raise ValueError(f"Unsupported layer {fjord_config['layer'][i]}")


def fjord_aggregate(results, original_parameters):
    """strategy.py:139-174 (``aggregate``)."""
    weights = [
        [param * num_examples for param in params] for params, num_examples, _, _, _ in results
    ]
    p_max_s = [p_max for _, _, p_max, _, _ in results]
    num_examples = [num_examples for _, num_examples, _, _, _ in results]
    p_s = results[0][3]
    fjord_config = results[0][4]
    return [
        fjord_average(
            i, layer_updates, num_examples, p_max_s, p_s, fjord_config, original_parameters
        )
        for i, layer_updates in enumerate(zip(*weights, strict=True))
    ]


def mlp_fjord_config(model, p_s):
    """What client.py:57-101 (``get_agg_config``) records for our MLP: per p and state-dict
    entry, the input and output dims its ODLinear layer used (fc3, the output layer, is
    built with ``is_od=False``: all its outputs)."""
    keys = [k for k, _ in model.named_parameters()]
    inputs = model.fc1.in_features
    config = {p: [] for p in p_s}
    for p in p_s:
        h1 = od_out_dim(model.units["fc1"], p)
        h2 = od_out_dim(model.units["fc2"], p)
        dims = {"fc1": (inputs, h1), "fc2": (h1, h2), "fc3": (h2, model.fc3.out_features)}
        for k in keys:
            i, o = dims[k.split(".")[0]]
            config[p].append({"in_dim": i, "out_dim": o})
    config["layer"] = ["ODLinear"] * len(keys)
    config["layer_p"] = [None] * len(keys)
    return config


P_S = [0.2, 0.4, 0.6, 0.8, 1.0]  # conf/common.yaml


def test_fjord_index_sets_match_the_authors():
    model = build("mlp")
    s = strategies.make("fjord", model, seed=5, widths=P_S, assign="listed")
    views = s.select(0, [0, 1, 2, 3, 4])
    for max_p, view in zip(P_S, views, strict=True):
        for layer, n in model.units.items():
            assert view.units[layer] == od_out_dim(n, max_p)
        plan = s.local_plan(0, P_S.index(max_p), view, 500)
        steps = {tuple(sorted(u.items())) for u in plan.units}
        allowed = od_sampler_widths(P_S, max_p)
        assert steps == {
            tuple(sorted((k, od_out_dim(n, p)) for k, n in model.units.items())) for p in allowed
        }


def test_fjord_aggregation_of_mixed_widths_matches_the_authors():
    model = build("mlp")
    original = [p.detach().numpy().copy() for _, p in model.named_parameters()]
    g = {k: p.detach().clone() for k, p in model.named_parameters()}
    p_max = [1.0, 0.4, 0.6, 0.2, 0.6, 0.8]
    n = [30, 12, 55, 7, 20, 41]
    s = strategies.make("fjord", model, widths=p_max, assign="listed")
    fields = noisy(g, len(p_max), 3)
    views, ours = ours_after_one_round(
        model, s, 0, list(range(6)), lambda i, v: v.extract(fields[i]), [float(x) for x in n]
    )
    config = mlp_fjord_config(model, P_S)
    results = []
    for i, view in enumerate(views):  # a Flower client returns its whole model: the original
        full = {k: v.clone() for k, v in g.items()}  # outside its sub-model
        view.scatter_(full, view.extract(fields[i]))
        results.append(([full[k].numpy() for k in g], n[i], p_max[i], P_S, config))
    ref = fjord_aggregate(results, original)
    for k, v in zip(g, ref, strict=True):
        assert np.allclose(ours[k].numpy(), v, atol=1e-6), k


def fjord_train(params, batches, ps, max_p, lr, know_distill):
    """models.py:243-262 (``train``) for our MLP: ODLinear's forward (linear.py:40-50: the
    weight ``[:out_dim, :in_dim]``) with the sampler's ``p`` per step, here handed in."""
    w = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.SGD(list(w.values()), lr=lr)
    criterion = torch.nn.CrossEntropyLoss()

    def net(x, p):
        h1 = od_out_dim(w["fc1.weight"].shape[0], p)
        h2 = od_out_dim(w["fc2.weight"].shape[0], p)
        x = x.flatten(1)
        x = F.relu(F.linear(x, w["fc1.weight"][:h1, : x.size(1)], w["fc1.bias"][:h1]))
        x = F.relu(F.linear(x, w["fc2.weight"][:h2, : x.size(1)], w["fc2.bias"][:h2]))
        return F.linear(x, w["fc3.weight"][:, : x.size(1)], w["fc3.bias"])

    loss, samples = 0.0, 0
    for (images, labels), p in zip(batches, ps, strict=True):
        optimizer.zero_grad()
        target = labels
        batch_size = images.shape[0]
        if know_distill:
            full_output = net(images, max_p)
            full_loss = criterion(full_output, target)
            full_loss.backward()
            target = full_output.detach().softmax(dim=1)
        partial_loss = criterion(net(images, p), target)
        partial_loss.backward()
        optimizer.step()
        loss += partial_loss.item() * batch_size
        samples += batch_size
    return {k: v.detach() for k, v in w.items()}, loss / samples


@pytest.mark.parametrize("distill", [False, True])
def test_fjord_local_training_matches_the_authors(distill):
    """Our masked steps (a sub-model of the client's width, units outside the step's width
    masked) against FjORD's sliced steps on the whole model, same batches and widths."""
    model = build("mlp")
    g = torch.Generator().manual_seed(4)
    data = TensorSamples(
        torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    )
    max_p, seed = 0.6, 11
    s = strategies.make("fjord", model, seed=2, widths=P_S, distill=distill)
    view = s.view(0, max_p)
    sgd = LocalSGD(2, 16, 0.1)
    steps = 2 * 4  # 64 samples in batches of 16: equal batches, so both losses are means
    plan = s.local_plan(0, 3, view, steps)
    full = {k: p.detach().clone() for k, p in model.named_parameters()}
    job = LocalJob(3, view.units, view.extract(full), torch.arange(64), seed, plan)
    ours = SequentialTrainer(model, data, sgd, device=torch.device("cpu")).train([job])[0]
    # the same batches: the trainer's order (a generator seeded with the job's seed)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(2):
        order = torch.arange(64)[torch.randperm(64, generator=gen)]
        batches += [data.batch(b) for b in order.split(16)]
    width_of = {od_out_dim(model.units["fc1"], p): p for p in P_S}
    ps = [width_of[u["fc1"]] for u in plan.units]
    assert len(set(ps)) > 1
    ref, ref_loss = fjord_train(full, batches, ps, max_p, 0.1, distill)
    assert ours.loss == pytest.approx(ref_loss, rel=1e-5)
    got = view.extract(ref)
    for k, v in ours.weights.items():
        assert torch.allclose(v, got[k], atol=1e-6), k
    _, held = view.inflate(got, full)
    for k in full:  # outside the client's width: untouched in the authors' model too
        assert torch.equal(ref[k][~held[k]], full[k][~held[k]]), k
