#!/usr/bin/env bash
# one queued run: NAME|OVERRIDES, from the pinned worktree; resumes if the dir holds a run
line="$1"; name="${line%%|*}"; ov="${line#*|}"
dir=/work/results/runs/$name
[ -f "$dir/status.json" ] && grep -q '"ok"' "$dir/status.json" && exit 0
export PYTHONPATH=/work/sweep-tree/src
cd /work/sweep-tree
start=$(date +%s)
if [ -f "$dir/checkpoint.pt" ]; then
  nice -n 19 /work/main/.venv/bin/python -m afd_cli.cli resume "$dir" threads=1 progress=plain > /work/results/logs/$name.log 2>&1
else
  nice -n 19 /work/main/.venv/bin/python -m afd_cli.cli run $ov threads=1 progress=plain checkpoint_every=5 hydra.run.dir=$dir > /work/results/logs/$name.log 2>&1
fi
echo "$name rc=$? $(( $(date +%s) - start ))s $(date +%H:%M)" >> /work/results/done.txt
