#!/usr/bin/env bash
# One queued run of docs/results/jobs_hetero.txt: NAME|OVERRIDES, from a pinned copy of src/ and
# conf/ ($PIN, `git archive <commit> src conf`); resumes if the directory holds a run.
#   grep _s0 docs/results/jobs_hetero.txt | xargs -d '\n' -P 2 -n 1 docs/results/runjob_hetero.sh
line="$1"; name="${line%%|*}"; ov="${line#*|}"
PIN=${PIN:-/tmp/hetero_pin}; OUT=${OUT:-/work/hetero_results}; PY=${PY:-/work/wt-hetero/.venv/bin/python}
dir=$OUT/runs/$name
[ -f "$dir/status.json" ] && grep -q '"ok"' "$dir/status.json" && exit 0
export PYTHONPATH=$PIN/src
cd "$PIN"
start=$(date +%s)
if [ -f "$dir/checkpoint.pt" ]; then
  "$PY" -m afd_cli.cli resume "$dir" threads=1 progress=plain > "$OUT/logs/$name.log" 2>&1
else
  "$PY" -m afd_cli.cli run $ov threads=1 progress=plain checkpoint_every=5 hydra.run.dir="$dir" > "$OUT/logs/$name.log" 2>&1
fi
echo "$name rc=$? $(( $(date +%s) - start ))s $(date +%H:%M)" >> "$OUT/done.txt"
