#!/usr/bin/env bash
# One process driving every local accelerator (all GPUs of a host, the chips of a single-host TPU VM, or the CPU).
#   launch/setup.sh gpu     # once: .venv with the CUDA build of JAX (tpu on a TPU VM, cpu for the CPU)
#   launch/single_machine.sh configs/vitb16_cc12m.py /data/runs/wpce_b16 --config.data.train_dir=/data/cc12m ...
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]}; workdir=${2:?WORKDIR}; shift 2
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || { echo "$0: no .venv: run launch/setup.sh gpu|tpu|cpu first" >&2; exit 1; }
exec .venv/bin/python -m wpce_jax.main --config="$config" --workdir="$workdir" "$@"
