"""A corpus of bad input (issue 12, item 8): every case goes through the real ``afd`` command in
a subprocess and must exit 2 with exactly one line on stderr that names the bad key or value and
what would be valid, leaving no run directory, sweep directory or ``outputs/`` behind.

Each case is a fresh process forked from a server that has imported afd_cli and torch once
(``helpers.afd_forked``: the real ``main()``, its exit code, stdout and stderr, as a subprocess
would give them), started together by one module-scoped fixture (a thread pool): the corpus
costs the checks themselves, not one interpreter start and torch import per case.
``AFD_DATA_DIR`` points at an empty directory: a case that slipped past
validation fails fast on the missing dataset instead of training.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import afd_forked

# cases that must get past the dataset check (the default cache's mnist) to reach their error
NEEDS_DATA = {"run-dir-under-file", "run-dir-bad-interpolation"}
RUN = "<run>"  # placeholder: an `afd run` case gets hydra.run.dir=<cwd>/run appended
DIGITS = ["dataset=digits", "model=mlp"]  # bundled with scikit-learn: past the dataset check

# (case id, argv after `afd`, expected message fragment). Every case expects exit code 2.
CASES: list[tuple[str, list[str], str]] = [
    # unknown groups / options
    ("unknown-strategy", [RUN, "strategy=foo"], "strategy='foo' is not valid; choose one of: fd,"),
    ("unknown-dataset", [RUN, "dataset=cifar10"], "dataset='cifar10' is not valid; choose one of"),
    ("unknown-model", [RUN, "model=resnet"], "model='resnet' is not valid; choose one of"),
    ("unknown-partition", [RUN, "partition=zipf"], "partition='zipf' is not valid; choose one of"),
    ("unknown-compression", [RUN, "compression=zip"], "compression='zip' is not valid; choose"),
    ("unknown-schedule", [RUN, "schedule=fast"], "schedule='fast' is not valid; choose one of"),
    ("unknown-trainer-group", [RUN, "trainer=fast"], "trainer='fast' is not valid; choose one of"),
    ("unknown-experiment", [RUN, "experiment=foo"], "experiment='foo' is not valid; choose one"),
    # unknown keys at each level
    ("unknown-top-key", [RUN, "foo=1"], "unknown config key 'foo'; valid keys: dataset,"),
    ("unknown-added-key", [RUN, "+foo=1"], "unknown config key 'foo'; valid keys"),
    ("unknown-schedule-key", [RUN, "schedule.epochs=3"], "unknown config key 'schedule.epochs'"),
    ("unknown-dataset-key", [RUN, "dataset.size=3"], "unknown config key 'dataset.size'"),
    ("unknown-strategy-key", [RUN, "strategy.p=0.5"], "unknown config key 'strategy.p'"),
    ("unknown-compression-key", [RUN, "compression.k=5"], "unknown config key 'compression.k'"),
    ("unknown-deep-key", [RUN, "model.hidden.x=1"], "model.hidden"),
    # wrong types
    ("lr-not-number", [RUN, "schedule.lr=abc"], "could not be converted to Float"),
    ("seed-not-int", [RUN, "seed=x"], "could not be converted to Integer"),
    ("seed-float", [RUN, "seed=1.5"], "seed=1.5"),
    ("rounds-float", [RUN, "schedule.rounds=1e3"], "schedule.rounds=1e3"),
    ("downlink-not-bool", [RUN, "compression.downlink=maybe"], "compression.downlink=maybe"),
    # schedule ranges
    ("rounds-zero", [RUN, "schedule.rounds=0"], "schedule.rounds=0 is out of range; expected an"),
    ("batch-negative", [RUN, "schedule.batch_size=-4"], "schedule.batch_size=-4 is out of range"),
    ("lr-zero", [RUN, "schedule.lr=0"], "schedule.lr=0.0 is out of range; expected a number > 0"),
    ("lr-inf", [RUN, "schedule.lr=inf"], "schedule.lr=inf is out of range; expected a finite"),
    ("momentum-nan", [RUN, "schedule.momentum=nan"], "schedule.momentum=nan is out of range"),
    ("momentum-one", [RUN, "schedule.momentum=1"], "schedule.momentum=1.0 is out of range"),
    ("weight-decay-neg", [RUN, "schedule.weight_decay=-1"], "schedule.weight_decay=-1.0 is out"),
    (
        "clients-per-round-too-many",
        [RUN, "schedule.num_clients=10", "schedule.clients_per_round=11"],
        "schedule.clients_per_round=11 is out of range; expected <= schedule.num_clients (10)",
    ),
    # partition
    ("alpha-inf", [RUN, "partition.alpha=inf"], "partition.alpha=inf is out of range; expected a"),
    ("alpha-zero", [RUN, "partition.alpha=0"], "partition.alpha=0.0 is out of range"),
    ("shards-zero", [RUN, "partition.shards_per_client=0"], "partition.shards_per_client=0 is"),
    ("max-samples-zero", [RUN, "partition.max_samples=0"], "partition.max_samples=0 is out"),
    ("natural-on-images", [RUN, "partition=natural"], "partition=natural needs a dataset with"),
    # strategy
    ("rate-one", [RUN, "strategy.rate=1"], "strategy.rate=1.0 is out of range; expected a number"),
    ("explore-neg-inf", [RUN, "strategy.explore=-inf"], "strategy.explore=-inf is out of range"),
    ("score-init-neg", [RUN, "strategy.score_init=-1"], "strategy.score_init=-1.0 is out of"),
    ("score-update", [RUN, "strategy.score_update=x"], "strategy.score_update='x' is not valid"),
    # compression
    ("sparsity-one", [RUN, "compression.sparsity=1"], "compression.sparsity=1.0 is out of range"),
    ("sample-ratio-zero", [RUN, "compression.sample_ratio=0"], "compression.sample_ratio=0.0"),
    ("clip-norm-nan", [RUN, "compression.clip_norm=nan"], "compression.clip_norm=nan is out"),
    ("warmup-neg", [RUN, "compression.warmup_rounds=-1"], "compression.warmup_rounds=-1 is"),
    ("values-int8", [RUN, "compression.values=int8"], "compression.values='int8' is not valid"),
    (
        "bits-nine",
        [RUN, "compression=hadamard", "compression.bits=9"],
        "compression.bits=9 is out of range; expected an integer in [1, 8]",
    ),
    ("bits-zero", [RUN, "compression.bits=0"], "compression.bits=0 is out of range"),
    ("bits-fraction", [RUN, "compression.bits=2.5"], "compression.bits"),
    ("bits-down-nine", [RUN, "compression.bits_down=9"], "compression.bits_down=9 is out of"),
    (
        "subsample-zero",
        [RUN, "compression=hadamard", "compression.subsample=0"],
        "compression.subsample=0.0 is out of range; expected a number in (0, 1]",
    ),
    ("subsample-big", [RUN, "compression.subsample=1.5"], "compression.subsample=1.5 is out"),
    (
        "block-not-power-of-two",
        [RUN, "compression=hadamard", "compression.block=1000"],
        "compression.block=1000 is out of range; expected a power of two",
    ),
    (
        "first-copy-fp8",
        [RUN, "compression.first_copy=fp8"],
        "compression.first_copy='fp8' is not valid; choose one of: fp32, fp16, q8",
    ),
    (
        "first-copy-without-downlink",
        [RUN, "compression=dgc", "compression.first_copy=q8"],
        "compression.first_copy=q8 needs compression.downlink=true with a sparse compressor",
    ),
    (
        "server-momentum-one",
        [RUN, "compression.server_momentum=1"],
        "compression.server_momentum=1.0 is out of range; expected a number in [0, 1)",
    ),
    ("server-lr-zero", [RUN, "compression.server_lr=0"], "compression.server_lr=0.0 is out of"),
    (
        "downlink-dense",
        [RUN, "compression=q8", "compression.downlink=true"],
        "compression.downlink=true needs a compressor that reads it, not compression='q8'",
    ),
    # dataset / model
    ("test-fraction-one", [RUN, "dataset.test_fraction=1"], "dataset.test_fraction=1.0 is out"),
    ("seq-len-zero", [RUN, "dataset.seq_len=0"], "dataset.seq_len=0 is out of range"),
    ("hidden-zero", [RUN, "model.hidden=0"], "model.hidden=0 is out of range"),
    ("model-dataset-mismatch", [RUN, "model=char_lstm"], "model='char_lstm' does not fit dataset"),
    ("text-data-image-model", [RUN, "dataset=shakespeare", "model=mlp"], "model='mlp' does not"),
    # run-level keys
    ("chunk-zero", [RUN, "trainer.chunk=0"], "trainer.chunk=0 is out of range"),
    ("threads-zero", [RUN, "threads=0"], "threads=0 is out of range; expected null or an integer"),
    ("checkpoint-every-zero", [RUN, "checkpoint_every=0"], "checkpoint_every=0 is out of range"),
    ("device", [RUN, "device=tpu"], "device='tpu' is not valid; choose one of: auto, cpu, cuda"),
    ("precision", [RUN, "precision=fp8"], "precision='fp8' is not valid; choose one of: auto,"),
    ("trainer-name", [RUN, "trainer.name=gpu"], "trainer='gpu' is not valid; choose one of"),
    ("progress", [RUN, "progress=loud"], "progress='loud' is not valid; choose one of: auto,"),
    ("on-nonfinite", [RUN, "on_nonfinite=ignore"], "on_nonfinite='ignore' is not valid; choose"),
    # network (the simulated clock)
    ("unknown-network", [RUN, "network=5g"], "network='5g' is not valid; choose one of: cellular"),
    ("network-name", [RUN, "network.name=5g"], "network='5g' is not valid; choose one of"),
    ("network-up-zero", [RUN, "network.up_mbps=0"], "network.up_mbps=0.0 is out of range; exp"),
    ("network-down-neg", [RUN, "network.down_mbps=-2"], "network.down_mbps=-2.0 is out of range"),
    ("network-latency-neg", [RUN, "network.latency_ms=-1"], "network.latency_ms=-1.0 is out of"),
    ("network-gflops-zero", [RUN, "network.device_gflops=0"], "network.device_gflops=0.0 is out"),
    ("network-spread-neg", [RUN, "network.spread=-0.1"], "network.spread=-0.1 is out of range"),
    ("network-spread-inf", [RUN, "network.spread=inf"], "network.spread=inf is out of range"),
    ("network-deadline-zero", [RUN, "network.deadline_s=0"], "network.deadline_s=0.0 is out of"),
    (
        "network-deadline-no-clock",
        [RUN, "network=none", "network.deadline_s=30"],
        "network.deadline_s=30.0 needs a clock, not network='none'; choose one of",
    ),
    ("network-unknown-key", [RUN, "network.speed=3"], "unknown config key 'network.speed'"),
    ("report-network-unknown", ["report", "empty", "--network", "5g"], "network='5g' is not"),
    ("report-network-value", ["report", "empty", "network.up_mbps=-1"], "network.up_mbps=-1.0"),
    ("report-other-override", ["report", "empty", "seed=3"], "can only change network.* keys"),
    # client state (issue 12 item 5)
    (
        "state-memory-negative",
        [RUN, "state.memory_mb=-1"],
        "state.memory_mb=-1 is out of range; expected null or an integer >= 0",
    ),
    ("state-memory-not-int", [RUN, "state.memory_mb=lots"], "state.memory_mb"),
    ("state-memory-float", [RUN, "state.memory_mb=0.5"], "state.memory_mb=0.5"),
    (
        "state-dtype",
        [RUN, "state.dtype=int8"],
        "state.dtype='int8' is not valid; choose one of: fp32, fp16, bf16",
    ),
    ("state-unknown-key", [RUN, "state.size=3"], "unknown config key 'state.size'"),
    ("state-group", [RUN, "state=big"], "state='big' is not valid; choose one of: default"),
    # malformed override syntax
    ("no-equals", [RUN, "strategy"], "strategy"),
    ("empty-key", [RUN, "=3"], "override '=3' has no key; expected key=value"),
    ("double-equals", [RUN, "a==b"], "a==b"),
    ("unbalanced-bracket", [RUN, "strategy=[fd"], "[fd"),
    ("unbalanced-paren", [RUN, "strategy=fd)"], "strategy=fd)"),
    # arguments
    ("run-unknown-option", [RUN, "--foo"], "No such option: --foo"),
    ("top-unknown-option", ["--foo"], "No such option: --foo"),
    ("report-bad-target", ["report", ".", "--target", "abc"], "'--target'"),
    ("report-target-range", ["report", "empty", "--target", "2"], "--target=2.0 is out of range"),
    ("report-missing-path", ["report", "nowhere"], "nowhere does not exist"),
    ("report-empty-dir", ["report", "empty"], "no runs (no metrics.csv) found under empty"),
    ("report-no-args", ["report"], "Missing argument"),
    ("resume-missing-dir", ["resume", "nowhere"], "nowhere is not a run directory"),
    ("resume-not-a-run", ["resume", "empty"], "empty is not a run directory"),
    ("data-fetch-unknown", ["data", "fetch", "cifar"], "dataset 'cifar' is not known; choose one"),
    ("config-show-bad", ["config", "show", "strategy=zz"], "strategy='zz' is not valid"),
    ("config-show-option", ["config", "show", "--foo"], "No such option: --foo"),
    # seeds
    ("seed-negative", [RUN, "seed=-1"], "seed=-1 is out of range; expected an integer in [0,"),
    (
        "seed-23-digits",
        [RUN, "seed=12345678901234567890123"],
        "seed=12345678901234567890123 is out of range",
    ),
    (
        "sweep-one-bad-value",
        ["run", "-m", "seed=0,1", "strategy.rate=0.1,1.5", "hydra.sweep.dir=sweep"],
        "strategy.rate=1.5 is out of range",
    ),
    ("sweep-bad-seed", ["run", "-m", "seed=0,-1", "hydra.sweep.dir=sweep"], "seed=-1 is out"),
    # run directory
    ("run-dir-under-file", ["run", "hydra.run.dir=afile/run"], "cannot create the run directory"),
    # found only by building the run: refused before its directory exists (digits: bundled)
    (
        "iid-more-clients-than-samples",
        [RUN, *DIGITS, "partition=iid", "schedule.num_clients=10000000"],
        "schedule.num_clients=10000000 is more than the 1,618 training samples",
    ),
    (
        "dirichlet-alpha-tiny",
        [RUN, *DIGITS, "partition.alpha=1e-9"],
        "raise partition.alpha or lower schedule.num_clients",
    ),
    (
        "shards-too-many",
        [RUN, *DIGITS, "partition=shards", "partition.shards_per_client=1000"],
        "partition=shards: shards: 1618 samples are fewer than 100 clients x 1000 shards",
    ),
    ("model-too-big", [RUN, *DIGITS, "model.hidden=1000000"], "GB of memory; lower model.hidden"),
    (
        "cuda-without-a-gpu",
        [RUN, *DIGITS, "device=cuda"],
        "device='cuda' but no CUDA GPU is visible",
    ),
    ("run-dir-empty", ["run", *DIGITS, "hydra.run.dir="], "hydra.run.dir is empty"),
    ("run-dir-is-a-file", ["run", *DIGITS, "hydra.run.dir=afile"], "is a file, not a directory"),
    (
        "run-dir-in-a-sweep",
        ["run", "-m", *DIGITS, "seed=0,1", "hydra.run.dir=x"],
        "hydra.run.dir does not apply to a sweep (-m)",
    ),
    (
        "tilde-unquoted",
        [RUN, "data_dir=~/d"],
        "character '~' unquoted; quote the value: data_dir='~/d'",
    ),
    ("non-ascii-unquoted", [RUN, "dataset=mnïst"], "the character 'ï' unquoted; quote the value"),
    ("run-dir-bad-interpolation", ["run", "hydra.run.dir=${nope}/r"], "cannot resolve hydra"),
    ("delete-seed", [RUN, "~seed"], "override '~seed' cannot delete a config key; set it"),
    ("delete-deep-key", [RUN, "~schedule.lr"], "cannot delete a config key; set it: schedule.lr="),
]


def _mnist_cached() -> bool:
    from afd_cli import data
    from afd_cli.data.cache import default_data_dir

    return data.is_fetched("mnist", default_data_dir())


def _argv(args: list[str], cwd: Path) -> list[str]:
    if args and args[0] == RUN:
        return ["run", *args[1:], f"hydra.run.dir={cwd / 'run'}"]
    return args


def _one(case: tuple[str, list[str], str], root: Path) -> dict:
    name, args, _ = case
    cwd = root / name
    cwd.mkdir()
    (cwd / "empty").mkdir()
    (cwd / "afile").write_text("not a directory\n")
    env = {**os.environ, "COLUMNS": "80"}
    if name not in NEEDS_DATA:
        env["AFD_DATA_DIR"] = str(root / "no-data")
    before = sorted(p.name for p in cwd.iterdir())
    p = afd_forked(_argv(args, cwd), cwd, env)
    after = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    return {"p": p, "before": before, "after": after}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad_input")
    (root / "no-data").mkdir()
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) * 2)) as pool:
        done = pool.map(lambda c: (c[0], _one(c, root)), CASES)
        return dict(done)


def test_corpus_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert len({tuple(c[1]) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, results):
    name, _, fragment = case
    if name == "cuda-without-a-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible here")
    if name in NEEDS_DATA and not _mnist_cached():
        pytest.skip("needs mnist in the default data cache (afd data fetch mnist)")
    r = results[name]
    p = r["p"]
    err = p.stderr.strip()
    assert p.returncode == 2, f"rc={p.returncode}\n{p.stderr}"
    assert err.count("\n") == 0, f"not one line:\n{p.stderr}"
    assert "Traceback" not in err and fragment in err, err
    assert err.startswith("error: "), err
    assert p.stdout == "", p.stdout
    # nothing made: no run dir, no sweep dir, no outputs/ (only what the case set up)
    assert r["after"] == r["before"], r["after"]
