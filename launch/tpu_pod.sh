#!/usr/bin/env bash
# Every worker of a Cloud TPU VM pod slice runs the same command; JAX finds its peers itself (--distributed).
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup                       # once: .venv with libtpu
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh CONFIG WORKDIR [overrides]  # train
# The repository must be checked out at ~/wpce_jax on every worker (REPO=path to change that); `setup` runs
# launch/setup.sh tpu there (pip install -r requirements-tpu.txt into .venv; PYTHON=python3.11 if the image's
# python3 is older than 3.11). WORKDIR must be visible to all workers (a shared file system mount).
set -euo pipefail
: "${TPU:?TPU VM name}" "${ZONE:?zone}"
repo=${REPO:-wpce_jax}
on_all_workers() { gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "$1"; }
if [[ ${1:-} == setup ]]; then
  on_all_workers "cd $repo && PYTHON=${PYTHON:-python3} launch/setup.sh tpu"
  exit
fi
config=${1:?usage: $0 setup | $0 CONFIG WORKDIR [--config.KEY=VALUE ...]}; workdir=${2:?WORKDIR}; shift 2
args=$(printf ' %q' --distributed --config="$config" --workdir="$workdir" "$@")
on_all_workers "cd $repo && .venv/bin/python -m wpce_jax.main$args"
