#!/usr/bin/env bash
# Digits: ECT vs SCT (both tuning one EDM run) vs CT from scratch, 3 seeds, same
# number of consistency steps; then 1-step and 2-step digits FID of every run.
#
#   nice -n 19 bash experiments/consistency_digits/run.sh            # from the repo root
#   RUNS=/tmp/consistency_digits STEPS=600 PRETRAIN=2000 nice -n 19 bash ...
#
# Run directories (checkpoints) go to $RUNS, results (JSON, PNG, markdown) to
# experiments/consistency_digits/. Sequential; a rerun resumes / skips finished runs.
#
# Reduced budget for a shared 2-core CPU (ours, applied to every run alike): a
# 16-channel UNet (digits recipes: 32), batch 64 (128), 2000 EDM steps (4000),
# 600 consistency steps (2000) in ECT's 8 stages, sampling EMA 0.99 (0.995).
set -euo pipefail
RUNS=${RUNS:-/tmp/consistency_digits}
STEPS=${STEPS:-600}          # consistency steps of every run (ECT/SCT tuning, CT from scratch)
PRETRAIN=${PRETRAIN:-2000}   # EDM pre-training steps shared by ECT and SCT
SEEDS=${SEEDS:-"0 1 2"}
STAGE=$((STEPS / 8))         # ECT's 8 stages over the run
OUT=experiments/consistency_digits
mkdir -p "$RUNS"
common=(--config.train.num_steps="$STEPS" --config.consistency.stage_steps="$STAGE"
        --config.train.ckpt_every=300 --config.train.log_every=50
        --config.model.model_channels=16 --config.data.batch_size=64 --config.ema.decay=0.99
        # The 2-block network these results were measured with (digits_ect now has digits_edm's 1).
        --config.model.num_blocks=2)

train() {  # train WORKDIR CONFIG ARGS...
  local dir=$1; shift
  if [ -f "$dir/summary.json" ]; then echo "done: $dir"; return; fi
  echo "=== $(date +%T) $dir"
  python -m jaxdiff.main --workdir="$dir" "$@" 2>&1 \
    | grep --line-buffered -v -e "^WARNING:absl" -e "^[IW][0-9]" | tee -a "$RUNS/log.txt" \
    | grep --line-buffered -e "^step" -e "quality" -e "error" || true
}

# ECT seed 0 pre-trains EDM itself (init_from empty); everything else starts from it.
PRE="$RUNS/ect_s0/pretrain"
for seed in $SEEDS; do
  if [ "$seed" = 0 ]; then init=(--config.consistency.pretrain_steps="$PRETRAIN");
  else init=(--config.init_from="$PRE"); fi
  train "$RUNS/ect_s$seed" --config=configs/digits_ect.py --config.seed="$seed" "${common[@]}" \
    "${init[@]}"
done
for seed in $SEEDS; do
  train "$RUNS/sct_s$seed" --config=configs/digits_sct.py --config.seed="$seed" "${common[@]}" \
    --config.init_from="$PRE"
done
# CT (Song et al. 2023) from random weights: N(k) from 2 to 151 and the EMA teacher
# mu(k) over the run, L2 metric (LPIPS needs VGG weights), uniform weighting, CM
# boundary at 0.002 in training and sampling; same network, optimiser and EMA.
for seed in $SEEDS; do
  train "$RUNS/ct_s$seed" --config=configs/digits_ect.py --config.seed="$seed" "${common[@]}" \
    --config.objective.name=ct --config.consistency.pretrain_steps=0 \
    --config.consistency.train_precond=auto --config.consistency.sample_sigma_min=0.0 \
    --config.consistency.metric=auto --config.consistency.weighting=auto \
    --config.consistency.huber_c=-1.0
done
python "$OUT/evaluate.py" --runs="$RUNS" --out="$OUT"
