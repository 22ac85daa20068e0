"""The committed results re-make their committed table.

docs/results/paper-setting.md (and the README) say that

    afd report docs/results/runs/paper_* --network cellular_3g,lte,wifi -o outputs/reports/paper

re-makes ``docs/results/time_by_network_s012.md`` from the raw runs committed under
``docs/results/runs/``, without retraining. This runs that command (into tmp_path) and compares
the table it writes with the committed one, byte for byte, so a change to the report, the
clock or the run files that would change the published numbers fails here.
"""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
from pathlib import Path

import pytest
from helpers import AFD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results" / "paper-setting.md"  # where the table and its command are
COMMAND = "afd report docs/results/runs/paper_* --network cellular_3g,lte,wifi -o "


def test_the_results_page_names_the_command_this_test_runs():
    assert COMMAND in PAGE.read_text() and COMMAND in (ROOT / "README.md").read_text()
    assert "time_by_network_s012.md" in PAGE.read_text()


@pytest.mark.slow
def test_paper_runs_remake_the_committed_time_by_network_table(tmp_path):
    runs = sorted(RESULTS.glob("runs/paper_*"))  # the shell's glob, in its (sorted) order
    assert len(runs) == 57  # the page's "57 runs"
    out = tmp_path / "paper"
    p = subprocess.run(
        [*AFD, "report", *map(str, runs), "--network", "cellular_3g,lte,wifi", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    made = (out / "time_by_network.md").read_text()
    committed = (RESULTS / "time_by_network_s012.md").read_text()
    diff = difflib.unified_diff(
        committed.splitlines(), made.splitlines(), "committed", "re-made", lineterm=""
    )
    assert made == committed, "\n".join(diff)  # byte for byte (measured: identical)


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every table of ``markdown``, as rows of cells (header and alignment rows included)."""
    tables: list[list[list[str]]] = []
    prev = False
    for line in markdown.splitlines():
        row = line.startswith("|")
        if row:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not prev:
                tables.append([])
            tables[-1].append(cells)
        prev = row
    return tables


def _rows(table: list[list[str]], drop: set[str]) -> list[str]:
    """A table's data rows as the page writes them, without the columns named in ``drop``."""
    keep = [i for i, h in enumerate(table[0]) if h not in drop]
    return ["| " + " | ".join(r[i] for i in keep) + " |" for r in table[2:]]


def _report_md(runs: list[Path], out: Path) -> str:
    """``afd report RUNS -o OUT`` (exit 0 asserted); its report.md."""
    p = subprocess.run(
        [*AFD, "report", *map(str, runs), "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return (out / "report.md").read_text()


def _assert_on_page(rows: list[str], page: str) -> None:
    """Every re-made row appears verbatim on the page (the ones that do not, listed)."""
    missing = [r for r in rows if r not in page]
    assert not missing, "\n".join(missing)


HETERO = RESULTS / "hetero-widths.md"
# the columns the page leaves out: the same on every row, or split into "MB to target"
HETERO_DROP = {"dataset", "model", "partition", "rounds", "target %", "MB up", "MB down"}


@pytest.mark.slow
def test_hetero_runs_remake_the_rows_of_the_hetero_page(tmp_path):
    """docs/results/hetero-widths.md's two MNIST tables come from ``afd report`` over the
    committed ``hetero_*`` runs (42: 14 configurations x 3 seeds), row for row."""
    runs = sorted(RESULTS.glob("runs/hetero_*_s*"))
    assert len(runs) == 42
    page = HETERO.read_text()
    assert "afd report docs/results/runs/hetero_*_s* -o " in page
    main, widths = _tables(_report_md(runs, tmp_path / "hetero"))[:2]
    made = _rows(main, HETERO_DROP) + _rows(widths, set())
    assert len(made) == 28
    _assert_on_page(made, page)


CODECS = RESULTS / "codecs.md"
# the codec runs (all of jobs_codecs.txt): the page's "N codec runs" says it
CODEC_RUNS = 54
CODEC_BASELINES = ("paper_fedavg_none_s*", "paper_fd_none_s*", "afd_rule_multi_paper_s*")
CODEC_DROP = {"dataset", "model", "partition", "rounds", "target %"}
CODEC_TARGET = "0.978351"  # afd report's target there: 99% of fedavg + none's best


@pytest.mark.slow
def test_codec_runs_remake_the_rows_of_the_codec_page(tmp_path):
    """docs/results/codecs.md's table comes from ``afd report`` over the committed
    ``codecs_*`` runs and the uncompressed paper-setting runs they are compared with."""
    runs = sorted(RESULTS.glob("runs/codecs_*_s*"))
    assert len(runs) == CODEC_RUNS
    base = [p for pattern in CODEC_BASELINES for p in sorted(RESULTS.glob(f"runs/{pattern}"))]
    assert len(base) == 9  # three configurations x seeds 0-2
    page = CODECS.read_text()
    assert f"**{CODEC_RUNS} codec runs**" in page
    assert "afd report docs/results/runs/codecs_*_s* docs/results/runs/paper_fedavg_none_s*" in page
    made = _rows(_tables(_report_md(runs + base, tmp_path / "codecs"))[0], CODEC_DROP)
    assert len(made) == 3 + len({r.name.rsplit("_s", 1)[0] for r in runs})
    _assert_on_page(made, page)


@pytest.mark.slow
def test_powersgd_rank_runs_remake_the_rank_rows_of_the_codec_page(tmp_path):
    """The codec page's PowerSGD-rank table: ``afd report`` over the rank 4 and 8 runs, every
    rank-2 codec run and dense FedAvg's, so the target is the main table's."""
    runs = sorted(RESULTS.glob("runs/powersgd_rank*_s*"))
    # fedavg on both link settings at rank 4 (seed 0) and 8 (seeds 0-2); fd, multi: 8, both links
    assert len(runs) == 14
    base = sorted(RESULTS.glob("runs/codecs_*_powersgd_*_s*"))
    base += sorted(RESULTS.glob("runs/paper_fedavg_none_s*"))
    page = CODECS.read_text()
    command = (
        "afd report docs/results/runs/powersgd_rank*_s* "
        "docs/results/runs/codecs_*_powersgd_*_s* docs/results/runs/paper_fedavg_none_s*"
    )
    assert command in page
    made = _rows(_tables(_report_md(runs + base, tmp_path / "rank"))[0], CODEC_DROP)
    assert len(made) == 13  # dense FedAvg; rank 2: 6; rank 4: 2; rank 8: 4
    _assert_on_page(made, page)


def test_the_codec_page_splits_the_bytes_as_its_script_does():
    """The page's "where the bytes go" tables are ``docs/results/codec_bytes.py`` over the codec
    runs and over the PowerSGD-rank runs."""
    spec = importlib.util.spec_from_file_location("codec_bytes", RESULTS / "codec_bytes.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = CODECS.read_text()
    for runs, groups in (("codecs_*_s*", 18), ("powersgd_rank*_s*", 6)):
        assert f"python docs/results/codec_bytes.py {CODEC_TARGET} docs/results/runs/{runs}" in page
        rows = script.main(float(CODEC_TARGET), sorted(RESULTS.glob(f"runs/{runs}"))).splitlines()
        assert len(rows) == 2 + groups
        _assert_on_page(rows[2:], page)
