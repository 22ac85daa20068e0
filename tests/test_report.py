"""`afd report`: grouping over seeds, MB to target, reduction, errors, plots (no training)."""

import json
import math
import subprocess

import pandas as pd
import pytest
from helpers import AFD

from afd_cli import report as rep
from afd_cli.metrics import COLUMNS

MB = 1_000_000


def fake_run(
    root,
    name,
    *,
    strategy="fedavg",
    compression="none",
    seed=0,
    accs,
    mb_round,
    dataset="digits",
    extra=None,
    summary=True,
    sim_round=None,
    clock=True,
):
    """A run dir with metrics.csv (accs per round, mb_round MB up and down each round, and
    sim_round simulated seconds per round: by default one per MB; none without a clock)."""
    sim_round = mb_round if sim_round is None else sim_round
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    rows = []
    for i, acc in enumerate(accs, start=1):
        half = mb_round * MB // 2
        rows.append(
            {
                "round": i,
                "dataset": dataset,
                "model": "mlp",
                "partition": "iid",
                "strategy": strategy,
                "compression": compression,
                "seed": seed,
                "clients": 5,
                "bytes_down": half,
                "bytes_up": half,
                "cum_bytes_down": half * i,
                "cum_bytes_up": half * i,
                "cum_bytes": 2 * half * i,
                "train_loss": 1.0,
                "test_loss": 1.0,
                "test_acc": acc,
                "keep_fraction": 1.0,
                "sparsity": 0.0,
                "sim_round_s": sim_round if clock else None,
                "sim_time_s": sim_round * i if clock else None,
                "wall_s": 0.1,
                "train_s": 0.1,
            }
        )
    pd.DataFrame(rows, columns=COLUMNS).to_csv(d / "metrics.csv", index=False)
    config = {
        "dataset": {"name": dataset},
        "model": {"name": "mlp", "hidden": 200},
        "partition": {"name": "iid"},
        "strategy": {"name": strategy, "rate": 0.0 if strategy == "fedavg" else 0.25},
        "compression": {"name": compression},
        "schedule": {"rounds": len(accs), "lr": 0.05},
        "seed": seed,
        "device": "cpu",
    }
    for key, value in (extra or {}).items():
        group, _, leaf = key.partition(".")
        config.setdefault(group, {})[leaf] = value
    if summary:
        (d / "summary.json").write_text(json.dumps({"config": config}))
    else:
        import yaml

        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return d


@pytest.fixture
def sweep(tmp_path):
    """fedavg+none (10 MB/round) and single+dgc (2 MB/round), three seeds each."""
    root = tmp_path / "sweep"
    base = [[0.5, 0.8, 0.90, 0.95], [0.5, 0.8, 0.95, 0.93], [0.5, 0.7, 0.88, 0.94]]
    small = [[0.4, 0.6, 0.85, 0.90], [0.4, 0.7, 0.80, 0.935], [0.4, 0.6, 0.70, 0.80]]
    for s in range(3):
        fake_run(root, f"f{s}", seed=s, accs=base[s], mb_round=10, summary=s != 2)
        fake_run(
            root, f"s{s}", strategy="single", compression="dgc", seed=s, accs=small[s], mb_round=2
        )
    return root


def row(summary, strategy, compression):
    s = summary[(summary.strategy == strategy) & (summary.compression == compression)]
    assert len(s) == 1
    return s.iloc[0]


def test_groups_over_seeds_with_mean_and_std(sweep):
    r = rep.build([sweep])
    s = r.summary
    assert len(s) == 2 and list(s.seeds) == [3, 3]
    assert r.keys == list(rep.CORE_KEYS)  # strategy.rate differs only across strategies
    f = row(s, "fedavg", "none")
    assert f.final_acc_mean == pytest.approx(0.94)
    assert f.final_acc_std == pytest.approx(0.01)
    assert f.best_acc_mean == pytest.approx((0.95 + 0.95 + 0.94) / 3)
    assert f.mb_up_mean == pytest.approx(20) and f.mb_down_mean == pytest.approx(20)
    assert f.seed_list == "0 1 2"


def test_target_is_99_percent_of_fedavg_best_and_mb_to_target(sweep):
    s = rep.build([sweep]).summary
    f, d = row(s, "fedavg", "none"), row(s, "single", "dgc")
    # best of the seed-averaged fedavg curve: round 4, (0.95 + 0.93 + 0.94) / 3 = 0.94
    assert f.target_acc == pytest.approx(0.99 * 0.94)  # 0.9306
    assert d.target_acc == f.target_acc
    # fedavg reaches 0.9306 at rounds 4, 3, 4 -> 40, 30, 40 MB
    assert f.reached == 3
    assert f.rounds_to_target_mean == pytest.approx(11 / 3)
    assert f.mb_to_target_mean == pytest.approx(110 / 3)
    # single+dgc: only seed 1 reaches it (round 4, 8 MB)
    assert d.reached == 1 and d.mb_to_target_mean == pytest.approx(8)


def test_reduction_factor_against_fedavg_none(sweep, tmp_path):
    s = rep.build([sweep]).summary
    assert row(s, "fedavg", "none").reduction == pytest.approx(1.0)
    d = row(s, "single", "dgc")  # not every seed reached the target: total MB, 40 / 8
    assert d.reduction == pytest.approx(5.0) and d.reduction_basis == "total"
    s = rep.build([sweep], target=0.8).summary  # every seed reaches 0.8
    f, d = row(s, "fedavg", "none"), row(s, "single", "dgc")
    assert f.mb_to_target_mean == pytest.approx((20 + 20 + 30) / 3)
    assert d.mb_to_target_mean == pytest.approx((6 + 6 + 8) / 3)
    assert d.reduction == pytest.approx(f.mb_to_target_mean / d.mb_to_target_mean)
    assert d.reduction_basis == "to target"


def test_not_reached_is_shown(sweep):
    r = rep.build([sweep], target=0.99)
    header, rows = rep.table_rows(r)
    col = header.index("MB to target")
    assert all(line[col] == "not reached" for line in rows)
    assert "not reached" in rep.markdown(r)


def test_extra_differing_key_becomes_a_group(tmp_path):
    root = tmp_path / "rates"
    for s in range(2):
        fake_run(root, f"f{s}", seed=s, accs=[0.5, 0.9], mb_round=10)
        for rate in (0.25, 0.5):
            fake_run(
                root,
                f"r{rate}_{s}",
                strategy="fd",
                seed=s,
                accs=[0.4, 0.8],
                mb_round=5,
                extra={"strategy.rate": rate},
            )
    r = rep.build([root])
    assert r.keys == [*rep.CORE_KEYS, "strategy.rate"]
    assert len(r.summary) == 3
    fd = r.summary[r.summary.strategy == "fd"]
    assert sorted(fd["strategy.rate"]) == [0.25, 0.5]
    assert set(fd.reduction) == {2.0}  # matched to the one fedavg+none baseline


def test_dense_codecs_ignore_compression_options(tmp_path):
    """`compression=none,dgc compression.sparsity=0.99,0.999`: one none group, no sparsity."""
    root = tmp_path / "sparsity"
    for seed, sp in enumerate((0.99, 0.999)):
        extra = {"compression.sparsity": sp}
        fake_run(root, f"n{sp}", seed=seed, accs=[0.5, 0.9], mb_round=10, extra=extra)
        fake_run(root, f"d{sp}", compression="dgc", accs=[0.4, 0.8], mb_round=1, extra=extra)
    r = rep.build([root])
    assert r.keys == [*rep.CORE_KEYS, "compression.sparsity"]
    assert len(r.summary) == 3
    none = r.summary[r.summary.compression == "none"]
    assert int(none.seeds.iloc[0]) == 2 and list(none["compression.sparsity"]) == ["null"]
    assert sorted(r.summary.config) == ["dgc+sparsity=0.99", "dgc+sparsity=0.999", "none"]
    assert sorted(r.summary[r.summary.compression == "dgc"]["compression.sparsity"]) == [
        0.99,
        0.999,
    ]


def test_runs_recorded_before_a_key_existed_group_with_its_old_value(tmp_path):
    """A key added later (network.compute, strategy.assign, DGC's dense_rule) is read as the
    value that reproduces the older runs: old and new runs of one setting share a group, and a
    new default that changed behaviour keeps its runs apart, labelled with what each ran."""
    root = tmp_path / "ages"
    new = {"network.compute": True, "strategy.assign": "fixed", "state.fsync": True}
    fake_run(root, "f_old", seed=0, accs=[0.5, 0.9], mb_round=10)
    fake_run(root, "f_new", seed=1, accs=[0.5, 0.9], mb_round=10, extra=new)
    fake_run(root, "d_old", compression="dgc", accs=[0.4, 0.8], mb_round=1)
    rule = {"compression.dense_rule": "ndim"}
    fake_run(root, "d_new", compression="dgc", accs=[0.4, 0.8], mb_round=1, extra=rule)
    r = rep.build([root])
    none = r.summary[r.summary.compression == "none"]
    assert len(none) == 1 and int(none.seeds.iloc[0]) == 2
    dgc = r.summary[r.summary.compression == "dgc"]
    assert sorted(dgc["compression.dense_rule"]) == ["ndim", "size"]
    assert "state.fsync" not in r.keys and "network.compute" not in r.keys


def test_writes_csv_markdown_and_plots(sweep, tmp_path):
    out = tmp_path / "out"
    files = rep.write(rep.build([sweep]), out)
    for name in ("summary.csv", "report.md", "all_metrics.csv", *rep.PLOTS):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_mb.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| fedavg | none |" in md.replace("| digits | mlp | iid ", "")
    assert "accuracy_vs_round.png" in md
    assert len(pd.read_csv(files["summary"])) == 2


def test_a_figure_is_one_entry_in_figures(sweep, tmp_path, monkeypatch):
    """Adding a report figure is a drawing function plus its entry in plots.FIGURES."""
    from afd_cli.report import plots

    monkeypatch.setitem(plots.FIGURES, "extra.png", lambda report, ax: ax.plot([0, 1]))
    files = rep.write(rep.build([sweep]), tmp_path / "out")
    assert files["extra"].read_bytes()[:4] == b"\x89PNG"
    assert "![extra.png](extra.png)" in files["markdown"].read_text()


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(rep.ReportError, match="no runs"):
        rep.build([tmp_path])


def test_truncated_csv_is_skipped_with_a_warning_or_an_error_alone(sweep):
    bad = sweep / "s2" / "metrics.csv"
    bad.write_bytes(bad.read_bytes()[:-25])
    warned = []
    r = rep.build([sweep], warn=warned.append)
    assert len(r.runs) == 5
    assert any(str(bad) in w and "truncated" in w for w in warned)
    with pytest.raises(rep.ReportError, match="no usable metrics.csv.*s2.*truncated"):
        rep.build([sweep / "s2"])


def test_corrupt_values_are_reported(tmp_path):
    d = fake_run(tmp_path, "a", accs=[0.5, 0.6], mb_round=1)
    text = (d / "metrics.csv").read_text().replace("0.6", "zz")
    (d / "metrics.csv").write_text(text)
    with pytest.raises(rep.ReportError, match="non-number 'zz'"):
        rep.build([d])


def test_mixed_datasets_are_an_error_naming_them(tmp_path):
    fake_run(tmp_path, "a", accs=[0.5], mb_round=1)
    fake_run(tmp_path, "b", accs=[0.5], mb_round=1, dataset="mnist")
    with pytest.raises(rep.ReportError, match=r"mix datasets: digits \(1 run\), mnist \(1 run\)"):
        rep.build([tmp_path / "a", tmp_path / "b"])


def test_rounds_compares_runs_as_of_that_round(sweep, tmp_path):
    # fedavg seed 0: 0.5 0.8 0.90 0.95 -> as of round 3 its final is 0.90 and its bytes 3 rounds'
    fake_run(sweep, "short", seed=7, accs=[0.5, 0.6], mb_round=10)  # stops before round 3
    warned = []
    r = rep.build([sweep], rounds=3, warn=warned.append)
    f = row(r.summary, "fedavg", "none")
    assert f.final_acc_mean == pytest.approx((0.90 + 0.95 + 0.88 + 0.6) / 4)
    assert f.mb_up_mean == pytest.approx((15 + 15 + 15 + 10) / 4)
    assert r.curves["round"].max() == 3
    assert "cut at round 3" in r.target_note
    assert [w for w in warned if "short" in w and "has 2 rounds" in w]
    assert row(rep.build([sweep]).summary, "single", "dgc").final_acc_mean != pytest.approx(
        row(r.summary, "single", "dgc").final_acc_mean
    )


def test_rounds_out_of_range_is_a_cli_error(sweep):
    p = subprocess.run(
        [*AFD, "report", str(sweep), "--rounds", "0"], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: --rounds=0 is out of range") and "Traceback" not in p.stderr


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([*AFD, "report", str(tmp_path / "empty")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: no runs") and "Traceback" not in p.stderr


def test_cli_writes_into_the_single_directory(sweep):
    p = subprocess.run([*AFD, "report", str(sweep)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (sweep / "summary.csv").exists() and (sweep / "accuracy_vs_round.png").exists()
    assert "fedavg" in p.stdout and not math.isnan(
        pd.read_csv(sweep / "summary.csv").final_acc_mean.iloc[0]
    )


def test_time_to_target_and_time_reduction(tmp_path):
    """fedavg: 100 simulated s per round; single+dgc: 40 s (less to send, smaller model)."""
    root = tmp_path / "time"
    for s in range(2):
        fake_run(root, f"f{s}", seed=s, accs=[0.5, 0.8, 0.9], mb_round=10, sim_round=100)
        fake_run(
            root,
            f"s{s}",
            strategy="single",
            compression="dgc",
            seed=s,
            accs=[0.5, 0.7, 0.9, 0.95],
            mb_round=2,
            sim_round=40,
        )
    r = rep.build([root])
    f, d = row(r.summary, "fedavg", "none"), row(r.summary, "single", "dgc")
    # target 0.99 * 0.9 = 0.891: fedavg at round 3 (300 s), single+dgc at round 3 (120 s)
    assert f.hours_to_target_mean == pytest.approx(300 / 3600)
    assert d.hours_to_target_mean == pytest.approx(120 / 3600)
    assert d.time_reduction == pytest.approx(2.5) and d.time_reduction_basis == "to target"
    assert d.reduction == pytest.approx(30 / 6)  # bytes: 30 MB against 6 MB to target
    header, rows = rep.table_rows(r)
    assert "hours to target" in header and len(rows) == 2
    line = next(x for x in rows if "single" in x)
    assert line[header.index("time ×")] == "2.50" and line[header.index("reduction ×")] == "5.00"
    assert line[header.index("hours to target")] == "0.0333 ± 0"
    # not reached by every seed: the ratio of total simulated time
    r = rep.build([root], target=0.94)
    d = row(r.summary, "single", "dgc")
    assert d.time_reduction == pytest.approx(300 / 160) and d.time_reduction_basis == "total"


def test_runs_without_a_clock_have_no_time_columns_or_figure(tmp_path):
    root = tmp_path / "noclock"
    fake_run(root, "f", accs=[0.5, 0.9], mb_round=10, clock=False)
    fake_run(root, "s", strategy="single", accs=[0.5, 0.9], mb_round=5, clock=False)
    r = rep.build([root])
    header, _ = rep.table_rows(r)
    assert "hours to target" not in header and "time ×" not in header
    assert (
        row(r.summary, "single", "none").time_reduction
        != row(r.summary, "single", "none").time_reduction
    )  # NaN
    files = rep.write(r, tmp_path / "out")
    assert (
        "accuracy_vs_time" not in files and not (tmp_path / "out" / "accuracy_vs_time.png").exists()
    )
    assert "accuracy_vs_time.png" not in files["markdown"].read_text()


def test_rows_lead_with_the_baseline_whatever_the_compression_options(tmp_path):
    """compression.downlink=true|false of dgc must not sort dgc rows before fedavg + none."""
    root = tmp_path / "down"
    fake_run(root, "f", accs=[0.5, 0.9], mb_round=10)
    fake_run(root, "s", strategy="single", accs=[0.5, 0.9], mb_round=5)
    for flag in (False, True):
        for strategy in ("single", "fedavg"):
            extra = {"compression.downlink": flag}
            fake_run(root, f"{strategy}{flag}", strategy=strategy, compression="dgc",
                     accs=[0.4, 0.8], mb_round=1, extra=extra)  # fmt: skip
    s = rep.build([root]).summary
    got = list(zip(s.compression, s["compression.downlink"].astype(str), s.strategy, strict=True))
    assert got == [
        ("none", "null", "fedavg"),
        ("none", "null", "single"),
        ("dgc", "False", "fedavg"),
        ("dgc", "False", "single"),
        ("dgc", "True", "fedavg"),
        ("dgc", "True", "single"),
    ]


def test_figures_colour_the_strategy_and_style_each_compression_variant(tmp_path):
    """A compressor's options (here the downlink) get their own line style, so configurations
    that differ only there stay apart; a strategy keeps its colour across compressions."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from afd_cli.report import plots

    root = tmp_path / "s"
    down = {"compression.downlink": True}
    fake_run(root, "a", accs=[0.5, 0.9], mb_round=10)
    fake_run(root, "b", compression="dgc", accs=[0.4, 0.8], mb_round=1)
    fake_run(root, "c", compression="dgc", accs=[0.4, 0.7], mb_round=1, extra=down)
    fake_run(root, "d", strategy="fd", compression="dgc", accs=[0.4, 0.7], mb_round=1, extra=down)
    fig, ax = plt.subplots()
    plots.FIGURES["accuracy_vs_round.png"](rep.build([root]), ax)
    lines = {line.get_label().split(" (n=")[0]: line for line in ax.get_lines()}
    plt.close(fig)
    fedavg = [v for k, v in lines.items() if k.startswith("fedavg")]
    fd = lines["fd+dgc+downlink=True"]
    assert len(fedavg) == 3 and len({str(v.get_color()) for v in fedavg}) == 1
    assert len({str(v.get_linestyle()) for v in fedavg}) == 3
    assert fd.get_color() != fedavg[0].get_color()
    assert fd.get_linestyle() == lines["fedavg+dgc+downlink=True"].get_linestyle()
