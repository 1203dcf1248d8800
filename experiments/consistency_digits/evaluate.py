"""1-step and 2-step digits FID of every run of run.sh; writes results.json, results.md, figures.

  python experiments/consistency_digits/evaluate.py --runs=/tmp/consistency_digits \
      --out=experiments/consistency_digits

Every run is sampled from its final checkpoint (EMA weights) with the same
latents (seed 0) and the same number of samples, one step from sigma = 80 and
two steps at (80, 0.821) (ECT's CIFAR-10 mid-point; digits has no tuned one).
The EDM run both ECT and SCT start from is reported with its own sampler
(18-step Heun, 35 network calls) as the reference.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

# `python experiments/.../this.py` from the repo root: make the repo's jaxdiff importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

NUM_SAMPLES = 1024
SAMPLERS = {"1-step": (80.0,), "2-step": (80.0, 0.821)}
MID_SWEEP = (0.2, 0.4, 0.821, 1.5, 3.0)   # 2-step mid-points, seed-0 runs only


def evaluate_run(workdir: str, mids=()) -> dict:
  from jaxdiff import config as config_lib
  from jaxdiff.commands import sample
  from jaxdiff.evaluation import quality
  from jaxdiff.train import samples as samples_lib
  exp, params, step = sample.load_run(config_lib.workdir_config(workdir), workdir, use_ema=True)
  out = {"step": step, "fid": {}, "samples": {}}
  samplers = dict(SAMPLERS)
  samplers.update({f"2-step mid {m}": (80.0, m) for m in mids})
  for name, sigmas in samplers.items():
    exp.config.sample.consistency_sigmas = tuple(sigmas)
    samples = samples_lib.generate(exp, params, NUM_SAMPLES, seed=0)
    out["fid"][name] = float(quality.digits_quality(samples))
    if name in SAMPLERS:
      out["samples"][name] = samples[:64]
    print(f"{workdir}: {name} digits FID {out['fid'][name]:.2f}", flush=True)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", default="/tmp/consistency_digits")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  from jaxdiff import visualize

  results, grids = {}, {}
  for workdir in sorted(glob.glob(os.path.join(args.runs, "*_s[0-9]*"))):
    name = os.path.basename(workdir)
    method, seed = re.match(r"(\w+)_s(\d+)", name).groups()
    if not os.path.exists(os.path.join(workdir, "summary.json")):
      print(f"skipping unfinished {workdir}")
      continue
    r = evaluate_run(workdir, mids=MID_SWEEP if seed == "0" else ())
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    results[name] = {"method": method, "seed": int(seed), "step": r["step"], "fid": r["fid"],
                     "final_loss": summary.get("final_loss")}
    if seed == "0":
      grids[method] = r["samples"]
  pre = os.path.join(args.runs, "ect_s0", "pretrain", "summary.json")
  if os.path.exists(pre):
    with open(pre) as f:
      s = json.load(f)
    results["edm_pretrain"] = {"method": "edm", "step": s["step"],
                               "fid": {"heun-18 (35 NFE)": s["quality"]["value"]},
                               "num_samples": s["quality"]["num_samples"]}

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)

  lines = ["| method | steps | seeds | 1-step digits FID | 2-step digits FID (mid 0.821) |",
           "| --- | --- | --- | --- | --- |"]
  for method in ("ect", "sct", "ct"):
    runs = [v for v in results.values() if v["method"] == method]
    if not runs:
      continue
    cells = []
    for sampler in SAMPLERS:
      vals = np.array([v["fid"][sampler] for v in runs])
      per_seed = ", ".join(f"{x:.1f}" for x in vals)
      cells.append(f"{vals.mean():.1f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.1f} "
                   f"({per_seed})")
    lines.append(f"| {method.upper()} | {runs[0]['step']} | {len(runs)} | {cells[0]} | "
                 f"{cells[1]} |")
  if "edm_pretrain" in results:
    e = results["edm_pretrain"]
    lines.append(f"| EDM (the tuned start, Heun 18 steps = 35 NFE, {e['num_samples']} samples) | "
                 f"{e['step']} | 1 | {e['fid']['heun-18 (35 NFE)']:.1f} | |")
  sweep = ["", "2-step mid-point sweep (seed 0): " + "; ".join(
      f"{k.upper()} " + ", ".join(f"{m}: {v['fid'][f'2-step mid {m}']:.1f}" for m in MID_SWEEP)
      for k, v in results.items() if v.get("seed") == 0 and f"2-step mid {MID_SWEEP[0]}" in v["fid"])]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines + sweep) + "\n")
  print("\n".join(lines + sweep))

  # Figure: 1-step and 2-step samples of each method (seed 0), and FID per seed.
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = [m for m in ("ect", "sct", "ct") if m in grids]
  if methods:
    fig, axes = plt.subplots(len(methods), 2, figsize=(6, 3 * len(methods)), squeeze=False)
    for i, m in enumerate(methods):
      for j, sampler in enumerate(SAMPLERS):
        grid = visualize.image_grid(grids[m][sampler])
        axes[i, j].imshow(np.squeeze(grid), cmap="gray")
        fid = results[f"{m}_s0"]["fid"][sampler]
        axes[i, j].set_title(f"{m.upper()} {sampler}: FID {fid:.1f}", fontsize=9)
        axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "samples.png"), dpi=120)
    fig2, ax = plt.subplots(figsize=(5, 3.2))
    for k, sampler in enumerate(SAMPLERS):
      for i, m in enumerate(methods):
        vals = [v["fid"][sampler] for v in results.values() if v["method"] == m]
        ax.scatter([i + 0.15 * (2 * k - 1)] * len(vals), vals, marker="o" if k == 0 else "s",
                   color=f"C{k}", label=sampler if i == 0 else None)
    ax.set_xticks(range(len(methods)), [m.upper() for m in methods])
    ax.set_ylabel("digits FID (lower is better)")
    ax.set_yscale("log")
    ax.legend()
    fig2.tight_layout()
    fig2.savefig(os.path.join(args.out, "fid.png"), dpi=120)


if __name__ == "__main__":
  main()
