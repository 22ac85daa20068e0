"""Where the bytes to the target go, per configuration of committed runs (docs/results/codecs.md).

    python docs/results/codec_bytes.py 0.9784 docs/results/runs/codecs_*_both_s*

For each run, up to the first round whose test accuracy reaches the target: the upload, the
download split into first copies (a client's first download of the run, dense q8 with
``first_copy=q8``) and later downloads (the codec's code of ``current - copy``), and how many
distinct clients had been sent a first copy. Runs are grouped by their name without ``_s<seed>``;
each figure is the mean over the group's runs that reached the target.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def split(run: Path, target: float) -> dict[str, float] | None:
    """The bytes of ``run`` to the first round at ``target``, or None if it never got there."""
    m = pd.read_csv(run / "metrics.csv")
    hit = m.loc[m["test_acc"] >= target, "round"]
    if hit.empty:
        return None
    last = int(hit.iloc[0])
    c = pd.read_csv(run / "clients.csv")
    c = c[c["round"] <= last]
    first = ~c["client"].duplicated()  # rows are in round order: a client's first download
    return {
        "rounds": last,
        "up": c["bytes_up"].sum() / 1e6,
        "first": c.loc[first, "bytes_down"].sum() / 1e6,
        "later": c.loc[~first, "bytes_down"].sum() / 1e6,
        "clients": int(first.sum()),
    }


def main(target: float, runs: list[Path]) -> str:
    groups: dict[str, list[dict[str, float]]] = {}
    for run in sorted(runs):
        got = split(run, target)
        groups.setdefault(run.name.rsplit("_s", 1)[0], [])
        if got is not None:
            groups[run.name.rsplit("_s", 1)[0]].append(got)
    lines = [
        "| runs | reached | rounds | MB up | MB down, first copies | MB down, later |"
        " first copies % of all | clients with a copy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, got in groups.items():
        if not got:
            lines.append(f"| `{name}` | 0 | not reached | | | | | |")
            continue
        d = pd.DataFrame(got).mean()
        share = 100 * d["first"] / (d["up"] + d["first"] + d["later"])
        lines.append(
            f"| `{name}` | {len(got)} | {d['rounds']:.1f} | {d['up']:.1f} | {d['first']:.1f} |"
            f" {d['later']:.1f} | {share:.0f} | {d['clients']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(float(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
