#!/usr/bin/env bash
# The accelerator check in one command (benchmarks/README.md, "On the GPU machine").
#
#   bash benchmarks/device_check.sh [args of benchmarks/device_check.py]
#
# Run from the repository root. The GPU machine has jax, flax, optax, orbax-checkpoint, chex
# and PyTorch preinstalled and no network: the packages jaxdiff needs beyond those travel as
# wheels in .whl/ (made here by benchmarks/fetch_wheels.sh) and are installed into
# /tmp/jaxdiff-site, outside the system's site-packages. jaxdiff itself runs from the source
# tree (PYTHONPATH), so nothing is built there. Results go to $OUT (or benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=/tmp/jaxdiff-site
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
# One process holds the card; the tests' subprocesses allocate on demand.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.8}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c "import jaxdiff, ml_collections, tensorboardX, jax; print('jaxdiff imports; jax', jax.__version__, jax.devices())"
exec "$PY" -m benchmarks.device_check "$@"
