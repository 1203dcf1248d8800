#!/usr/bin/env bash
# Digits: CT vs ACT (Kong et al. 2024), same budget and generator, 3 seeds; 1-step digits FID
# of the mu(k) EMA teacher, parameter counts, and the step-time ratio of ACT vs CT.
#
#   nice -n 19 bash experiments/act_digits/run.sh                 # from the repo root
#   RUNS=/tmp/act_digits STEPS=300 CH=16 SEEDS="0 1 2" nice -n 19 bash experiments/act_digits/run.sh
#
# Arms (configs/digits_act.py, every override below applied to every arm alike):
#   act_s*      the recipe as is (lam0 = 0.3)
#   ct_s*       ACT's own CT: --config.act.lam0=0 (same N(k), same mu(k) EMA teacher, no
#               adversarial term; the discriminator step still runs, with a zero loss)
#   plainct_s0  jaxdiff's CT objective (objective.name=ct) on the same generator, optimiser and
#               batch: no discriminator at all. Only for the step-time ratio (one seed).
# Reduced budget for a shared, overloaded 2-core CPU (ours): one-level 16-channel generator and
# discriminator, 1 block, no attention (recipe: two levels, 32 channels, 2 blocks, attention
# at 4x4), 300 steps (recipe: 3000). A first attempt with the two-level 16-channel networks
# and 600 steps was abandoned after 25 min still compiling ACT's train step on this CPU. Run dirs go to $RUNS; results to experiments/act_digits.
# Sequential; a rerun skips finished runs and resumes the others.
set -euo pipefail
RUNS=${RUNS:-/tmp/act_digits}
STEPS=${STEPS:-300}
CH=${CH:-16}
SEEDS=${SEEDS:-"0 1 2"}
OUT=experiments/act_digits
mkdir -p "$RUNS"
common=(--config=configs/digits_act.py --config.train.num_steps="$STEPS"
        --config.train.ckpt_every="$STEPS" --config.train.log_every=50
        --config.model.model_channels="$CH" --config.act.disc_channels="$CH"
        --config.model.channel_mult="(1,)" --config.model.num_blocks=1
        --config.model.attn_resolutions="()" --config.act.disc_channel_mult="(1,)"
        --config.act.disc_num_blocks=1 --config.act.disc_attn_resolutions="()")

train() {  # train WORKDIR ARGS...
  local dir=$1; shift
  if [ -f "$dir/summary.json" ]; then echo "done: $dir"; return; fi
  echo "=== $(date +%T) $dir"
  python -m jaxdiff.main --workdir="$dir" "$@" 2>&1 \
    | grep --line-buffered -v -e "^WARNING:absl" -e "^[IW][0-9]" | tee -a "$RUNS/log.txt" \
    | grep --line-buffered -e "^step" -e "quality" -e "error" -e "param" || true
}

for seed in $SEEDS; do
  train "$RUNS/act_s$seed" "${common[@]}" --config.seed="$seed"
  train "$RUNS/ct_s$seed" "${common[@]}" --config.seed="$seed" --config.act.lam0=0
done
train "$RUNS/plainct_s0" "${common[@]}" --config.seed=0 --config.objective.name=ct
PYTHONPATH=. python "$OUT/collect.py" --runs="$RUNS" --out="$OUT"
