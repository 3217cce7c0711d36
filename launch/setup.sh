#!/usr/bin/env bash
# Creates .venv in the repository and installs the pinned stack with the JAX build for this host:
#   launch/setup.sh tpu   # Cloud TPU VM: requirements-tpu.txt (jax[tpu]: libtpu)
#   launch/setup.sh gpu   # NVIDIA GPU host: requirements-gpu.txt (jax[cuda12]: CUDA and cuDNN as pip wheels;
#                         #   needs only an NVIDIA driver that supports CUDA 12)
#   launch/setup.sh cpu   # requirements.txt (CPU-only JAX)
# PYTHON picks the interpreter for a new .venv (default python3; 3.11 or newer). An existing .venv is reused.
set -euo pipefail
kind=${1:-}
case "$kind" in
  tpu | gpu) requirements=requirements-$kind.txt ;;
  cpu) requirements=requirements.txt ;;
  *) echo "usage: $0 tpu|gpu|cpu" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python=${PYTHON:-python3}
  command -v "$python" > /dev/null || { echo "$0: no $python here (set PYTHON=...)" >&2; exit 1; }
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "$0: $python is $("$python" --version 2>&1); wpce_jax needs Python 3.11 or newer (set PYTHON=...)" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
.venv/bin/pip install -r "$requirements"
.venv/bin/pip list 2>/dev/null | grep -E '^(jax|jaxlib|libtpu|jax-cuda1[0-9]-(plugin|pjrt)) ' || true
if [[ $kind != tpu ]]; then  # on a TPU pod slice JAX starts only with every worker together: see tpu_pod.sh
  .venv/bin/python -c 'from wpce_jax.platform import describe; print(describe())'
fi
