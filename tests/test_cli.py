"""The command line: bad input gives one line and exit 2; a run writes tidy, reproducible CSVs."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import AFD, SMALL

from afd_cli import compose, models
from afd_cli.compression import encode_params
from afd_cli.config import ConfigError
from afd_cli.metrics import COLUMNS, TIMING_COLUMNS

BAD = {
    "strategy=foo": "strategy='foo' is not valid; choose one of: fd, fedavg, fedrolex, fjord, "
    "heterofl, multi, single",
    "dataset=cifar10": "choose one of: digits, fashion_mnist, mnist, mnist5k, shakespeare",
    "model=resnet": "model='resnet' is not valid",
    "compression=zip": "compression='zip' is not valid",
    "schedule.rounds=0": "schedule.rounds=0 is out of range",
    "schedule.lr=abc": "could not be converted to Float",
    "partition.alpha=0": "partition.alpha=0.0 is out of range; expected a number > 0",
    "schedule.clients_per_round=200": "expected <= schedule.num_clients (100)",
    "strategy.rate=1.5": "strategy.rate=1.5 is out of range; expected a number in [0, 1)",
    "foo=1": "unknown config key 'foo'; valid keys: dataset,",
    "schedule.epochs=3": "unknown config key 'schedule.epochs'; valid keys of schedule: rounds,",
    "model=char_lstm": "model='char_lstm' does not fit dataset='mnist'",
    "partition=natural": "partition=natural needs a dataset with natural clients",
    "device=tpu": "device='tpu' is not valid; choose one of: auto, cpu, cuda",
    "seed=x": "could not be converted to Integer",
    "compression.sparsity=1": "compression.sparsity=1.0 is out of range",
    "schedule.momentum=1.5": "schedule.momentum=1.5 is out of range",
    "compression.downlink=true": "compression.downlink=true needs a compressor that reads it, "
    "not compression='none'; choose one of: dgc, efsign, hadamard, powersgd, qsgd, topk",
    "state.dtype=fp8": "state.dtype='fp8' is not valid; choose one of: fp32, fp16, bf16",
    "state.memory_mb=-5": "state.memory_mb=-5 is out of range; expected null or an integer >= 0",
}


@pytest.mark.parametrize("override,message", BAD.items())
def test_bad_override_is_one_clear_line(override, message):
    with pytest.raises(ConfigError) as e:
        compose.check([override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_exits_2_with_one_line_and_no_run_dir(tmp_path):
    p = subprocess.run(
        [*AFD, "run", "strategy.rate=2", f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "strategy.rate=2.0" in p.stderr
    assert not (tmp_path / "r").exists()


def test_missing_dataset_names_the_fetch_command(tmp_path):
    with pytest.raises(ConfigError, match=f"afd data fetch mnist5k --data-dir {tmp_path}$"):
        compose.check(["dataset=mnist5k", f"data_dir={tmp_path}"])


def test_sweep_validates_every_job():
    assert len(compose.expand_sweep(["strategy=fedavg,fd", "seed=0,1,2"])) == 6
    # digits: the one dataset `make test` fetches (the default mnist is absent from a fresh CI)
    with pytest.raises(ConfigError, match="strategy.rate=1.2"):
        for job in compose.expand_sweep(["dataset=digits", "strategy.rate=0.5,1.2"]):
            compose.check(job)


def test_a_joblib_sweep_runs_its_jobs_in_worker_processes(tmp_path):
    """The README's parallel sweep; `python -m afd_cli.cli` once failed to pickle its task."""
    p = subprocess.run(
        [*AFD, "run", "-m", *SMALL, "schedule.rounds=1", "seed=0,1", "hydra/launcher=joblib"]
        + ["hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 's'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted((tmp_path / "s").glob("*/metrics.csv"))
    assert [pd.read_csv(m)["seed"].tolist() for m in runs] == [[0], [1]]


@pytest.mark.parametrize("experiment", ["paper_mnist", "paper_shakespeare"])
def test_paper_experiments_warm_dgc_up_over_four_epochs(experiment):
    """Lin et al. warm up over 4 epochs; an epoch of the federation is K / (C * E) rounds."""
    cfg = compose.compose([f"experiment={experiment}", "compression=dgc"])
    s = cfg.schedule
    assert cfg.compression.warmup_rounds == 4 * s.num_clients / (
        s.clients_per_round * s.local_epochs
    )


def _run(tmp_path: Path, name: str, *extra: str) -> pd.DataFrame:
    out = tmp_path / name
    p = subprocess.run(
        [*AFD, "run", *SMALL, *extra, f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    return pd.read_csv(out / "metrics.csv")


def test_run_writes_metrics_with_exact_bytes_and_is_reproducible(tmp_path):
    a = _run(tmp_path, "a", "schedule.rounds=3")
    b = _run(tmp_path, "b", "schedule.rounds=3")
    assert list(a.columns) == COLUMNS and len(a) == 3
    keep = [c for c in COLUMNS if c not in TIMING_COLUMNS]
    pd.testing.assert_frame_equal(a[keep], b[keep])
    # bytes on the wire = clients x the encoded full model, both directions (dense fp32)
    m = models.build("mlp", (1, 8, 8), 10)
    size = len(encode_params({k: torch.zeros_like(v) for k, v in m.named_parameters()}))
    assert (a.bytes_down == 3 * size).all() and (a.bytes_up == 3 * size).all()
    assert a.cum_bytes.iloc[-1] == 2 * 3 * 3 * size
    assert a.test_acc.notna().all() and (a.keep_fraction == 1).all()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["total_bytes"] == a.cum_bytes.iloc[-1] and summary["rounds"] == 3
    assert (tmp_path / "a" / "partition.csv").exists()
    assert (tmp_path / "a" / ".hydra" / "config.yaml").exists()


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = _run(tmp_path, "s", "schedule.rounds=4")
    _run(tmp_path, "r", "schedule.rounds=2")
    p = subprocess.run(
        [*AFD, "resume", str(tmp_path / "r"), "schedule.rounds=4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    resumed = pd.read_csv(tmp_path / "r" / "metrics.csv")
    keep = [c for c in COLUMNS if c not in TIMING_COLUMNS]
    pd.testing.assert_frame_equal(straight[keep], resumed[keep])


def test_resume_of_a_precision_auto_run_continues(tmp_path):
    """The checkpoint stores ``auto`` resolved (bf16 or fp32 here); resuming the same launch
    compares like with like, not the resolved value against ``auto`` (which refused it)."""
    _run(tmp_path, "r", "schedule.rounds=1", "precision=auto")
    p = subprocess.run(
        [*AFD, "resume", str(tmp_path / "r"), "schedule.rounds=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert len(pd.read_csv(tmp_path / "r" / "metrics.csv")) == 2


def test_composed_defaults_are_the_schema_defaults():
    """The defaults list's options and the dataclass schema must not disagree (they did:
    schedule.rounds 10 in yaml, 20 in the dataclass): one default per key, whichever way a
    config is built (`afd run` composes yaml; the benchmark builds RootConfig())."""
    from dataclasses import asdict

    from afd_cli.config import RootConfig, validate

    composed, schema = asdict(validate(compose.compose([]))), asdict(RootConfig())
    composed.pop("data_dir"), schema.pop("data_dir")  # yaml reads $AFD_DATA_DIR
    assert composed == schema


CONF = Path(__file__).resolve().parents[1] / "conf"


def _leaves(node, prefix=""):
    """``{dotted key: value}`` of a yaml mapping (the ``defaults`` list aside)."""
    out = {}
    for k, v in (node or {}).items():
        if k == "defaults":
            continue
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(
    "path", sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name != "experiment"), ids=str
)
def test_config_files_set_only_what_differs_from_the_schema(path):
    """Defaults live once, in the schema: a group option (conf/<group>/<option>.yaml) that
    restated one could drift from it (strategy.explore was 0.2 in yaml and 0.0 in the
    dataclass). A plug-in's yaml is compared with its own options' defaults. Experiments are
    exempt: they spell a paper's setting out on purpose."""
    from dataclasses import asdict

    import yaml

    from afd_cli import registry
    from afd_cli.config import RootConfig, options_of

    text = path.read_text()
    node = yaml.safe_load(text) or {}
    if "@package _global_" not in text:
        node = {path.parent.name: node}
    defaults = asdict(RootConfig())
    for group in registry.GROUPS:  # each plug-in group at the option the file picks
        name = (node.get(group) or {}).get("name", defaults[group]["name"])
        defaults[group] = asdict(options_of(group, name))
    schema = {}
    for k, v in defaults.items():
        schema.update(_leaves({k: v}) if isinstance(v, dict) else {k: v})
    restated = [
        k for k, v in _leaves(node).items() if not k.endswith(".name") and schema.get(k) == v
    ]
    assert restated == [], f"{path.name} restates schema defaults: {restated}"


@pytest.mark.parametrize("group", ["strategy", "compression", "model", "dataset", "partition"])
def test_every_registered_name_has_a_config_and_an_implementation(group):
    """Names live once (afd_cli.registry): the yaml options of a group are exactly its
    registered names, each loads, and validation accepts exactly those."""
    from afd_cli import registry

    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options == sorted(registry.names(group))
    for name in registry.names(group):
        assert registry.load(group, name) is not None
    with pytest.raises(ValueError, match="choose one of"):
        registry.load(group, "no_such_option")
