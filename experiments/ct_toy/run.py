"""Does consistency training from scratch learn? CT vs its EMA-free variant vs iCT vs EDM, 2-D toy.

  nice -n 19 python experiments/ct_toy/run.py --root=/tmp/ct_toy_exp > /tmp/ct_toy_exp.log 2>&1
  python experiments/ct_toy/run.py --root=/tmp/ct_toy_exp --report_only

Issue 5 left open the question whether CT trained from random weights learns at
all in jaxdiff (on digits it stayed at the mean image after 600 steps). This
experiment separates "CT is slow" from "the CT path is broken": every arm is
configs/toy2d_edm.py (8-mode Gaussian mixture, 4-layer MLP of 256 units, batch
256, Adam 1e-3, half-life EMA for sampling) with only the objective changed:

  edm       EDM denoising, Heun 18 steps (35 NFE): the reference
  ct        CT as openai/consistency_models_cifar10: Karras grid N(k) 2 -> 150
            (sqrt schedule over the run), EMA teacher mu(k) from mu0 = 0.9,
            L2 (mean over coordinates), uniform weight, CM boundary 0.002
  ct_mu0    the same with mu0 = 1e-6: mu(k) = exp(2 ln mu0 / N) <= 0.83, a teacher
            lag of a few steps (iCT's first change is mu = 0), nothing else
  ict       iCT: no EMA teacher, pseudo-Huber c = 0.00054 sqrt(d), 1/(t - r),
            discretised lognormal(-1.1, 2.0) pair index, N doubling 10 -> 1280
  ct_long   ct at `--long_factor` times the budget (schedule over the longer run)

Consistency arms are scored 1-step (f(80 z, 80)) and 2-step ((80, --mid)) on
the same latents; the figure is the sliced 2-Wasserstein distance to fresh
data (jaxdiff.evaluation.quality; two data draws are 0.01-0.02 apart).
Runs go one after another; a run whose summary.json exists is not retrained.
Results: results.json, results.md and samples.png next to this file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

ARMS = ("edm", "ct", "ct_mu0", "ict", "ct_long")
CONSISTENCY_ARMS = ("ct", "ct_mu0", "ict", "ct_long")
NUM_SAMPLES = 2048


def load_recipe():
  from jaxdiff import config as config_lib
  return config_lib.load_config(os.path.join(ROOT, "configs", "toy2d_edm.py"))


def arm_config(arm: str, seed: int, args):
  c = load_recipe()
  c.seed = seed
  steps = args.steps * (args.long_factor if arm == "ct_long" else 1)
  c.train.num_steps = steps
  c.train.log_every = max(steps // 10, 1)
  c.train.ckpt_every = steps
  c.eval.num_samples = NUM_SAMPLES
  if arm == "edm":
    return c
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0,)
  c.objective.name = "ict" if arm == "ict" else "ct"
  if arm == "ct_mu0":
    c.consistency.ct_mu0 = 1e-6
  return c


def workdir_of(args, arm, seed):
  return os.path.join(args.root, f"{arm}_s{seed}")


def run_all(args):
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.root, ".jax_cache"))
  from jaxdiff import console
  from jaxdiff.train import loop
  for seed in args.seeds:
    for arm in args.arms:
      workdir = workdir_of(args, arm, seed)
      if os.path.exists(os.path.join(workdir, "summary.json")):
        continue
      t0 = time.time()
      console.log(f"=== {arm} seed {seed} -> {workdir}")
      result = loop.train(arm_config(arm, seed, args), workdir)
      if isinstance(result, dict) and result.get("preempted"):
        console.log(f"stopped: {arm} seed {seed} was preempted at step {result.get('step')}")
        return
      with open(os.path.join(workdir, "wall_seconds.txt"), "w") as f:
        f.write(f"{time.time() - t0:.1f}\n")


def evaluate(arm: str, seed: int, args) -> dict:
  """W2 of the final EMA weights: 1- and 2-step for consistency arms, Heun-18 for EDM."""
  from jaxdiff.evaluation import quality
  from jaxdiff.commands import sample
  from jaxdiff.train import samples as samples_lib
  config = arm_config(arm, seed, args)
  workdir = workdir_of(args, arm, seed)
  exp, params, step = sample.load_run(config, workdir, use_ema=True)
  samplers = ({"1-step": (80.0,), "2-step": (80.0, args.mid)} if arm in CONSISTENCY_ARMS
              else {"heun-18": None})
  out = {"step": int(step), "w2": {}, "samples": {}}
  for name, sigmas in samplers.items():
    if sigmas is not None:
      exp.config.sample.consistency_sigmas = sigmas
    samples = samples_lib.generate(exp, params, NUM_SAMPLES, seed=0)
    out["w2"][name] = quality.toy2d_quality(samples, config.data.toy2d_distribution, seed=0)
    out["samples"][name] = samples
  with open(os.path.join(workdir, "wall_seconds.txt")) as f:
    out["wall_seconds"] = float(f.read())
  return out


def report(args):
  import numpy as np
  results = {"command": " ".join(sys.argv), "steps": args.steps,
             "long_factor": args.long_factor, "mid": args.mid, "runs": {}}
  samples = {}
  for arm in args.arms:
    for seed in args.seeds:
      if not os.path.exists(os.path.join(workdir_of(args, arm, seed), "summary.json")):
        continue
      r = evaluate(arm, seed, args)
      if seed == args.seeds[0]:
        samples[arm] = r.pop("samples")
      else:
        r.pop("samples")
      results["runs"][f"{arm}_s{seed}"] = {"arm": arm, "seed": seed, **r}
      print(arm, seed, r["w2"], flush=True)
  with open(os.path.join(HERE, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)

  lines = ["| arm | steps | seeds | sampler | sliced W2, mean ± std (per seed) |",
           "| --- | --- | --- | --- | --- |"]
  for arm in args.arms:
    runs = [v for v in results["runs"].values() if v["arm"] == arm]
    if not runs:
      continue
    for sampler in runs[0]["w2"]:
      vals = np.array([v["w2"][sampler] for v in runs])
      std = vals.std(ddof=1) if len(vals) > 1 else 0.0
      per_seed = ", ".join(f"{x:.3f}" for x in vals)
      lines.append(f"| {arm} | {runs[0]['step']} | {len(vals)} | {sampler} | "
                   f"{vals.mean():.3f} ± {std:.3f} ({per_seed}) |")
  with open(os.path.join(HERE, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from jaxdiff.data import builtin
  data = builtin.toy2d_sample("gaussian_mixture", NUM_SAMPLES, [0, 4242])
  arms = [a for a in args.arms if a in samples]
  fig, axes = plt.subplots(1, len(arms), figsize=(3 * len(arms), 3.6), squeeze=False)
  for ax, arm in zip(axes[0], arms):
    name = "1-step" if arm in CONSISTENCY_ARMS else "heun-18"
    pts = samples[arm][name]
    ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
    ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0")
    w2 = results["runs"][f"{arm}_s{args.seeds[0]}"]["w2"][name]
    ax.set_title(f"{arm} ({name})\nW2 {w2:.3f}", fontsize=9)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "samples.png"), dpi=110)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--root", default="/tmp/ct_toy_exp")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--long_factor", type=int, default=10)
  p.add_argument("--mid", type=float, default=0.821, help="2-step mid-point sigma")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
  p.add_argument("--report_only", action="store_true")
  args = p.parse_args()
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  if not args.report_only:
    run_all(args)
  report(args)


if __name__ == "__main__":
  main()
