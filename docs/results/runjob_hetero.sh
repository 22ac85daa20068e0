#!/usr/bin/env bash
# One queued run of a jobs file (docs/results/jobs_*.txt): NAME|OVERRIDES, from a pinned copy of
# src/ and conf/ ($PIN, `git archive <commit> src conf`); resumes if the directory holds a run.
# A finished run's files (not its checkpoint or state) are copied to $KEEP/NAME, by default
# docs/results/runs/ beside this script, to be committed; a job found there is done, so a queue
# started again in a later session runs only what is missing.
#   grep _s0 docs/results/jobs_hetero.txt | xargs -d '\n' -P 2 -n 1 docs/results/runjob_hetero.sh
line="$1"; name="${line%%|*}"; ov="${line#*|}"
PIN=${PIN:-/tmp/hetero_pin}; OUT=${OUT:-/work/hetero_results}; PY=${PY:-/work/main/.venv/bin/python}
KEEP=${KEEP:-$(cd "$(dirname "$0")" && pwd)/runs}
ok() { [ -f "$1/status.json" ] && grep -q '"ok"' "$1/status.json"; }
dir=$OUT/runs/$name
ok "$KEEP/$name" && exit 0
mkdir -p "$OUT/logs"
if ! ok "$dir"; then
  export PYTHONPATH=$PIN/src
  cd "$PIN"
  start=$(date +%s)
  if [ -f "$dir/checkpoint.pt" ]; then
    "$PY" -m afd_cli.cli resume "$dir" threads=1 progress=plain > "$OUT/logs/$name.log" 2>&1
  else
    "$PY" -m afd_cli.cli run $ov threads=1 progress=plain checkpoint_every=5 hydra.run.dir="$dir" > "$OUT/logs/$name.log" 2>&1
  fi
  echo "$name rc=$? $(( $(date +%s) - start ))s $(date +%H:%M)" >> "$OUT/done.txt"
fi
if ok "$dir"; then
  mkdir -p "$KEEP/$name"
  for f in .hydra metrics.csv clients.csv widths.csv summary.json status.json; do
    [ -e "$dir/$f" ] && cp -r "$dir/$f" "$KEEP/$name/"
  done
fi
