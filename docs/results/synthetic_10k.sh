#!/usr/bin/env bash
# docs/results/cross-device-scale.md, second table: Synthetic(1,1) at 10,000 clients, mlp,
# fedavg / fd / single x dgc / hadamard, seed 0, one run at a time; peak RSS from GNU time.
#   bash docs/results/synthetic_10k.sh [OUT_DIR]   (PYTHON=... to pick the interpreter)
set -euo pipefail
out=${1:-outputs/synthetic_10k}
py=${PYTHON:-python}
common="dataset=synthetic schedule.num_clients=10000 dataset.max_samples=1000 model=mlp
  schedule.rounds=20 threads=1 progress=none seed=0"
mkdir -p "$out"
for s in fedavg fd single; do
  for c in dgc hadamard; do
    d="$out/${s}_${c}"
    [ -f "$d/summary.json" ] && continue
    /usr/bin/time -f "%M" -o "$out/${s}_${c}.rss_kb" \
      "$py" -m afd_cli.cli run $common strategy=$s compression=$c hydra.run.dir="$d"
  done
done
"$py" - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
print("| strategy | compression | final acc % | best acc % | majority % | MB up+down | s / round | peak RSS MB |")
print("|---|---|--:|--:|--:|--:|--:|--:|")
for s in ("fedavg", "fd", "single"):
    for c in ("dgc", "hadamard"):
        d = out / f"{s}_{c}"
        summ = json.loads((d / "summary.json").read_text())
        m = pd.read_csv(d / "metrics.csv")
        rss = int((out / f"{s}_{c}.rss_kb").read_text().split()[-1]) / 1024
        print(
            f"| {s} | {c} | {100 * summ['final_acc']:.2f} | {100 * summ['best_acc']:.2f} | "
            f"{100 * summ['majority_baseline']:.2f} | {summ['total_bytes'] / 1e6:,.1f} | "
            f"{statistics.median(m['wall_s'][1:]):.2f} | {rss:,.0f} |"
        )
PY
