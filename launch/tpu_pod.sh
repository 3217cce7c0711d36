#!/usr/bin/env bash
# Every worker of a Cloud TPU VM pod slice runs the same command; JAX finds its peers itself (--distributed).
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh CONFIG WORKDIR [overrides]
# The repository must be checked out (and `pip install -r requirements.txt` done) at ~/wpce_jax on every worker,
# and WORKDIR must be visible to all of them (a shared file system mount).
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]}; workdir=${2:?WORKDIR}; shift 2
: "${TPU:?TPU VM name}" "${ZONE:?zone}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd ~/wpce_jax && .venv/bin/python -m wpce_jax.main --distributed --config=$config --workdir=$workdir $*"
