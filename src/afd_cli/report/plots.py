"""Report figures: one drawing function per figure, listed in ``FIGURES`` (file name -> function).

Adding a figure: write a function that draws on one matplotlib Axes from the ``Report`` and
add it to ``FIGURES``; ``afd report`` saves it as a PNG and links it from ``report.md``. A
figure listed in ``NEEDS`` is drawn only when the runs have that column (the time figure needs
the simulated clock's ``sim_time_s``).
Matplotlib is imported only when figures are drawn (it is slow to import).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import HOUR, MB, Report, constant_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Draw = Callable[[Report, "Axes"], None]

# one line style per compression variant (the compressor with its options), in order of first
# appearance; colours tell the rest of a configuration (the strategy and its options) apart
_LINESTYLES: list[Any] = [
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1)),
    (0, (1, 3)),
    (0, (8, 2)),
    (0, (3, 1, 1, 1, 1, 1)),
]


def _accuracy_vs(x: str, xlabel: str) -> Draw:
    """Test accuracy against ``x`` ("round", or "mb" / "hours" on a log scale): a line per
    configuration (x and accuracy averaged over seeds) with the min-max band over seeds, and
    the target accuracies."""

    def draw(report: Report, ax: Axes) -> None:
        from matplotlib import pyplot as plt
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        c = report.curves[report.curves["test_acc"].notna()].copy()
        c["cum_mb"] = (c["cum_bytes_up"] + c["cum_bytes_down"]) / MB
        c["sim_h"] = c["sim_time_s"] / HOUR if "sim_time_s" in c else np.nan
        agg = (
            c.groupby(["config", "round"], sort=False)
            .agg(
                acc=("test_acc", "mean"),
                lo=("test_acc", "min"),
                hi=("test_acc", "max"),
                mb=("cum_mb", "mean"),
                hours=("sim_h", "mean"),
            )
            .reset_index()
        )
        s = report.summary
        style_keys = [k for k in report.keys if k.startswith("compression")]
        colour_keys = [k for k in report.keys if k not in style_keys]
        colour_of: dict[tuple[str, ...], Any] = {}
        style_of: dict[tuple[str, ...], Any] = {}
        cmap = plt.get_cmap("tab10")
        for _, r in s.iterrows():
            ck = tuple(str(r[k]) for k in colour_keys)
            colour_of.setdefault(ck, cmap(len(colour_of) % 10))
            sk = tuple(str(r[k]) for k in style_keys)
            style_of.setdefault(sk, _LINESTYLES[len(style_of) % len(_LINESTYLES)])
        targets = sorted(set(np.round(s["target_acc"].dropna(), 6)))
        for _, r in s.iterrows():
            d = agg[agg["config"] == r["config"]].sort_values("round").dropna(subset=[x])
            if d.empty:
                continue
            colour = colour_of[tuple(str(r[k]) for k in colour_keys)]
            ls = style_of[tuple(str(r[k]) for k in style_keys)]
            label = f"{r['config']} (n={int(r['seeds'])})"
            ax.plot(d[x], d["acc"], color=colour, linestyle=ls, label=label, lw=1.6)
            if int(r["seeds"]) > 1:
                ax.fill_between(d[x], d["lo"], d["hi"], color=colour, alpha=0.12, lw=0)
        for t in targets:
            ax.axhline(t, color="grey", lw=0.8, ls=":", zorder=0)
            ax.annotate(
                f"target {100 * t:.1f}%",
                (0.005, t),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=7,
                color="grey",
            )
        if x in ("mb", "hours"):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        label = xlabel
        if x == "hours":
            profiles = sorted({str(r.config.get("network.name", "?")) for r in report.runs})
            label += f"; network={', '.join(profiles)}"
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        const = ", ".join(str(v) for v in constant_keys(report).values())
        ax.set_title(f"{const}: mean over seeds, band = min–max", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    return draw


def _plain_number(v: float, _pos: Any = None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.3g}"


def _minor_label(v: float, _pos: Any = None) -> str:
    """Label the 2x and 5x minor ticks of a log axis only (keeps short ranges readable)."""
    lead = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
    return _plain_number(v) if round(lead) in (2, 5) else ""


FIGURES: dict[str, Draw] = {
    "accuracy_vs_round.png": _accuracy_vs("round", "round"),
    "accuracy_vs_mb.png": _accuracy_vs("mb", "cumulative MB exchanged (up + down, log scale)"),
    "accuracy_vs_time.png": _accuracy_vs(
        "hours", "simulated hours (network + device clock, log scale)"
    ),
}
PLOTS = tuple(FIGURES)
NEEDS = {"accuracy_vs_time.png": "sim_time_s"}  # figure -> the column it cannot do without


def drawable(report: Report) -> list[str]:
    """The figures of ``FIGURES`` that the report's runs have data for."""
    c = report.curves
    return [
        f for f in FIGURES if f not in NEEDS or (NEEDS[f] in c and bool(c[NEEDS[f]].notna().any()))
    ]


def plot(report: Report, out_dir: Path) -> list[Path]:
    """Every figure in ``FIGURES`` as a PNG in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    for fname in drawable(report):
        draw = FIGURES[fname]
        fig, ax = plt.subplots(figsize=(9.5, 5), dpi=110)
        draw(report, ax)
        fig.tight_layout()
        path = out_dir / fname
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
