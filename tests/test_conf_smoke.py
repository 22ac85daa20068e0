"""Every option of every config group -- each yaml under conf/, each registered plug-in, and
each experiment preset -- composes, validates and runs one tiny round.

Generated from conf/ and the registry, so a new plug-in or preset is covered without a test
of its own. digits/mlp wherever the option allows; an option that needs another input (text,
natural clients, generated clients) gets the first dataset, model and partition that fit it.
Options whose dataset is not cached here skip (``data`` marker): CI fetches digits only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from afd_cli import compose, data, registry
from afd_cli.config import CONF_DIR, validate
from afd_cli.data.cache import default_data_dir
from afd_cli.run.loop import run

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
TINY = [
    "schedule.rounds=1",
    "schedule.num_clients=6",
    "schedule.clients_per_round=2",
    "schedule.eval_batch_size=512",
    "dataset.max_test_samples=200",
    "progress=none",
    "threads=1",
    "compression.warmup_rounds=0",
]
# what a text dataset needs to stay tiny: short windows, a small LSTM, few samples per client
TEXT = [
    "dataset.seq_len=20",
    "dataset.stride=40",
    "model.lstm_hidden=16",
    "model.lstm_layers=1",
    "partition.min_samples=50",
    "partition.max_samples=50",
]


def _options() -> list[tuple[str, str]]:
    seen = set()
    for group in GROUPS:
        seen |= {(group, p.stem) for p in (CONF_DIR / group).glob("*.yaml")}
        if group in registry.FAMILIES:
            seen |= {(group, name) for name in registry.names(group)}
    return sorted(seen)


def _fit(group: str, name: str) -> list[str]:
    """The dataset, model and partition that go with ``group=name``, digits/mlp/iid first."""
    if group == "experiment":
        return []
    chosen = {"dataset": "digits", "model": "mlp", "partition": "iid", group: name}
    text = any(
        registry.get(g, chosen[g]).input == "text" for g in ("dataset", "model") if g in chosen
    ) or getattr(registry.get("partition", chosen["partition"]).obj, "needs_groups", False)
    if text:
        pick = {
            "dataset": next(n for n, p in registry.plugins("dataset").items() if p.obj.groups),
            "model": next(n for n, p in registry.plugins("model").items() if p.input == "text"),
            "partition": next(
                n
                for n, p in registry.plugins("partition").items()
                if getattr(p.obj, "needs_groups", False)
            ),
        }
        chosen = {**pick, group: name}
    generated = registry.get("dataset", chosen["dataset"]).obj.generated or getattr(
        registry.get("partition", chosen["partition"]).obj, "needs_clients", False
    )
    if generated:  # a dataset that makes its clients, and the partition that takes them
        pick = {
            "dataset": next(n for n, p in registry.plugins("dataset").items() if p.obj.generated),
            "partition": next(
                n
                for n, p in registry.plugins("partition").items()
                if getattr(p.obj, "needs_clients", False)
            ),
        }
        chosen = {**chosen, **pick, group: name}
    out = [f"{g}={v}" for g, v in chosen.items() if g != group]
    return out + (TEXT if text else [])


def _params() -> list:
    """Options whose run needs a dataset ``make test`` does not fetch are marked ``data``."""
    out = []
    for group, name in _options():
        fit = dict(o.split("=", 1) for o in _fit(group, name))
        dataset = name if group == "dataset" else fit.get("dataset", "")
        bundled = registry.get("dataset", dataset).obj.bundled_path is not None if dataset else 0
        marks = [pytest.mark.data] if dataset != "digits" and not bundled else []
        marks += [pytest.mark.slow] if group == "experiment" else []  # a paper's full setting
        out.append(pytest.param((group, name), marks=marks, id=f"{group}={name}"))
    return out


@pytest.mark.parametrize("option", _params())
def test_option_composes_and_runs_one_round(option: tuple[str, str], tmp_path: Path) -> None:
    group, name = option
    overrides = [*_fit(group, name), f"{group}={name}", *TINY]
    cfg = validate(compose.compose(overrides))
    if not data.is_fetched(cfg.dataset.name, default_data_dir()):
        pytest.skip(f"needs dataset {cfg.dataset.name} (afd data fetch {cfg.dataset.name})")
    if hasattr(getattr(cfg, group, None), "name"):
        assert getattr(cfg, group).name == name
    summary = run(cfg, tmp_path)
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rows["round"]) == [1] and summary["rounds"] == 1
    assert rows["bytes_down"].iloc[0] > 0 and rows["bytes_up"].iloc[0] > 0
    assert math.isfinite(rows["train_loss"].iloc[0]) and 0 <= rows["test_acc"].iloc[0] <= 1


def test_every_yaml_under_conf_is_covered() -> None:
    """A yaml in a new folder is a new group: it must reach the parametrisation above."""
    covered = {f"{g}/{n}.yaml" for g, n in _options()}
    on_disk = {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.glob("*/*.yaml")}
    assert on_disk <= covered
