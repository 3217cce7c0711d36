#!/usr/bin/env bash
# One process per GPU host; run this on every host with its own PROCESS_ID (0 .. NUM_PROCESSES-1).
#   COORDINATOR=host0:1234 NUM_PROCESSES=4 PROCESS_ID=$i launch/multi_gpu_hosts.sh CONFIG WORKDIR [overrides]
# WORKDIR must be a directory every host sees (a shared file system): checkpoints are written by all processes.
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]}; workdir=${2:?WORKDIR}; shift 2
: "${COORDINATOR:?host:port of process 0}" "${NUM_PROCESSES:?}" "${PROCESS_ID:?}"
cd "$(dirname "$0")/.."
exec .venv/bin/python -m wpce_jax.main --config="$config" --workdir="$workdir" \
  --coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES" --process_id="$PROCESS_ID" "$@"
