#!/usr/bin/env bash
# Digits: CT vs ACT (Kong et al. 2024), same budget and generator, 3 seeds; 1-step digits FID
# of the mu(k) EMA teacher, parameter counts, and the step-time ratio of ACT vs CT.
#
#   nice -n 19 bash experiments/act_digits/run.sh                 # from the repo root
#   RUNS=/tmp/act_digits STEPS=3000 CH=16 SEEDS="0 1 2" nice -n 19 bash experiments/act_digits/run.sh
#
# Arms (configs/digits_act.py, every override below applied to every arm alike):
#   act_s*      the recipe as is (lam0 = 0.3)
#   ct_s*       ACT's own CT: --config.act.lam0=0 (same N(k), same mu(k) EMA teacher, no
#               adversarial term; the discriminator step is skipped, as its loss is 0)
#   actmu0_s*, ctmu0_s*  the two arms above with a short teacher EMA, --config.act.mu0=1e-6
#               (mu(k) = exp(2 ln mu0 / (N - 1)) <= 0.83 instead of 0.81 -> 0.9986): the official
#               EMA teacher keeps CT from scratch at the mean image for thousands of steps
#               (experiments/ct_toy), so these arms ask whether ACT helps once CT itself learns
#   plainct_s0  jaxdiff's CT objective (objective.name=ct) on the same generator, optimiser and
#               batch: no discriminator at all. Only for the step-time ratio (one seed).
# Budget: the recipe's 3000 steps and its network layout (two levels, 2 blocks, attention at
# 4x4 for both generator and discriminator) at 16 channels instead of 32 (ours: a 2-core CPU;
# the 32-channel ACT step runs ~1 s per step there). Run dirs go to $RUNS; results to
# experiments/act_digits. Sequential; a rerun skips finished runs and resumes the others.
set -euo pipefail
RUNS=${RUNS:-/tmp/act_digits}
STEPS=${STEPS:-3000}
CH=${CH:-16}
SEEDS=${SEEDS:-"0 1 2"}
ARMS=${ARMS:-"official short plain"}  # which groups of arms below to run
OUT=experiments/act_digits
mkdir -p "$RUNS"
common=(--config=configs/digits_act.py --config.train.num_steps="$STEPS"
        --config.train.ckpt_every="$STEPS" --config.train.log_every=100
        --config.model.model_channels="$CH" --config.act.disc_channels="$CH")

train() {  # train WORKDIR ARGS...
  local dir=$1; shift
  if [ -f "$dir/summary.json" ]; then echo "done: $dir"; return; fi
  echo "=== $(date +%T) $dir"
  python -m jaxdiff.main --workdir="$dir" "$@" 2>&1 \
    | grep --line-buffered -v -e "^WARNING:absl" -e "^[IW][0-9]" | tee -a "$RUNS/log.txt" \
    | grep --line-buffered -e "^step" -e "quality" -e "error" -e "param" || true
}

has() { [[ " $ARMS " == *" $1 "* ]]; }
has official && for seed in $SEEDS; do
  train "$RUNS/act_s$seed" "${common[@]}" --config.seed="$seed"
  train "$RUNS/ct_s$seed" "${common[@]}" --config.seed="$seed" --config.act.lam0=0
done
has short && for seed in $SEEDS; do
  train "$RUNS/actmu0_s$seed" "${common[@]}" --config.seed="$seed" --config.act.mu0=1e-6
  train "$RUNS/ctmu0_s$seed" "${common[@]}" --config.seed="$seed" --config.act.lam0=0 \
    --config.act.mu0=1e-6
done
has plain && train "$RUNS/plainct_s0" "${common[@]}" --config.seed=0 --config.objective.name=ct
PYTHONPATH=. python "$OUT/collect.py" --runs="$RUNS" --out="$OUT"
