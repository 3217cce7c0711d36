#!/usr/bin/env bash
# One process per GPU host; run this on every host with its own PROCESS_ID (0 .. NUM_PROCESSES-1).
#   launch/setup.sh gpu     # once on every host: .venv with the CUDA build of JAX (requirements-gpu.txt)
#   COORDINATOR=host0:1234 NUM_PROCESSES=4 PROCESS_ID=$i launch/multi_gpu_hosts.sh CONFIG WORKDIR [overrides]
# WORKDIR must be a directory every host sees (a shared file system): checkpoints are written by all processes.
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]}; workdir=${2:?WORKDIR}; shift 2
: "${COORDINATOR:?host:port of process 0}" "${NUM_PROCESSES:?}" "${PROCESS_ID:?}"
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || { echo "$0: no .venv: run launch/setup.sh gpu first" >&2; exit 1; }
exec .venv/bin/python -m wpce_jax.main --config="$config" --workdir="$workdir" \
  --coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES" --process_id="$PROCESS_ID" "$@"
