"""Diagnostic: 1-step digits FID of the *raw* generator weights (not the mu(k) teacher).

  python experiments/act_digits/raw_eval.py --runs=/tmp/act_digits --out=experiments/act_digits

The quality figure of run.sh samples ACT's mu(k) EMA teacher (the official choice). At a
few hundred steps that teacher still carries a large share of its initial weights, so this
script also samples the trained weights themselves, one step from sigma = 80, 1024 samples,
latents seed 0 (the same for every run). Writes raw_eval.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", default="/tmp/act_digits")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument("--only", default="", help="comma-separated run names")
  args = parser.parse_args()
  from jaxdiff import config as config_lib
  from jaxdiff.commands import sample
  from jaxdiff.evaluation import quality
  from jaxdiff.train import samples as samples_lib
  path = os.path.join(args.out, "raw_eval.json")
  out = json.load(open(path)) if os.path.exists(path) else {}
  only = set(filter(None, args.only.split(",")))
  for workdir in sorted(glob.glob(os.path.join(args.runs, "*_s[0-9]*"))):
    name = os.path.basename(workdir)
    if (only and name not in only) or name in out or not os.path.exists(
        os.path.join(workdir, "summary.json")):
      continue
    config = config_lib.workdir_config(workdir)
    config.act.sample_with = "trainer_ema"   # the hook then returns the weights it is given
    exp, params, step = sample.load_run(config, workdir, use_ema=False)
    samples = samples_lib.generate(exp, params, 1024, seed=0)
    out[name] = {"step": step, "raw_weights_1step_digits_fid": float(quality.digits_quality(samples)),
                 "sample_min": float(samples.min()), "sample_max": float(samples.max()),
                 "sample_std": float(samples.std())}
    print(name, out[name], flush=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=1, sort_keys=True)


if __name__ == "__main__":
  main()
