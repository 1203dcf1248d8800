#!/usr/bin/env bash
# Digits: EDM vs EDM+STF (n = 1024 per device), same budget, 3 seeds, run one after another.
#   bash experiments/stf_digits/run.sh [STEPS] [RUN_ROOT] [CHANNELS] [BATCH]
# Defaults are a reduced budget for a shared 2-core CPU: 800 steps of a 16-channel DDPM++ at
# batch 64 (the recipes: 4000 steps, 32 channels, batch 128). Run dirs (checkpoints, samples)
# go under RUN_ROOT (default /tmp/stf_digits); results are collected into this folder by
# collect.py. Everything runs at nice 19; a rerun skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-800}
ROOT=${2:-/tmp/stf_digits}
CHANNELS=${3:-16}
BATCH=${4:-64}
mkdir -p "$ROOT"
for seed in 0 1 2; do
  for method in edm stf; do
    dir="$ROOT/${method}_s${seed}"
    if [ -f "$dir/summary.json" ]; then echo "done: $dir"; continue; fi
    echo "=== $method seed $seed ($STEPS steps) -> $dir"
    nice -n 19 python -m jaxdiff.main --config=configs/digits_${method}.py --workdir="$dir" \
      --config.seed=$seed --config.train.num_steps=$STEPS --config.train.ckpt_every=400 \
      --config.model.model_channels=$CHANNELS --config.data.batch_size=$BATCH \
      --config.train.sample_every=0 --config.train.log_every=100 > "$dir.log" 2>&1
  done
done
nice -n 19 python experiments/stf_digits/collect.py "$ROOT"
