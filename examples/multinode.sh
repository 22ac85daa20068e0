#!/usr/bin/env bash
# One afd run over several machines (docs/distributed.md): start this on every machine with
# the same settings; the arguments are afd run's overrides. ENDPOINT: host:port of the c10d
# rendezvous, on one of the machines; RUN_ID: a name for the launch, the same everywhere;
# NODES: how many machines; PROCS: processes per machine (one per GPU); RUN_DIR: the run
# directory on a filesystem every machine sees (every process writes its clients' state
# there). tests/test_distributed.py runs this file with NODES=2 on one machine.
set -euo pipefail
exec torchrun --nnodes="${NODES:-2}" --nproc_per_node="${PROCS:-1}" \
    --rdzv-backend=c10d --rdzv-endpoint="$ENDPOINT" --rdzv-id="$RUN_ID" \
    --no-python afd run "$@" hydra.run.dir="$RUN_DIR"
