#!/usr/bin/env bash
# Downloads, here (where the package index is reachable), the wheels that
# benchmarks/device_check.sh installs on the GPU machine: what jaxdiff needs that its
# image lacks. Pure-Python wheels, for the machine's Python 3.12. .whl/ is git-ignored
# and travels with the run (`carry: [".whl"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  "ml-collections==1.1.0" "tensorboardX==2.6.5"
ls -l .whl
