"""Collects the runs of run.sh into results.json / results.md and a figure.

  python experiments/act_digits/collect.py --runs=/tmp/act_digits --out=experiments/act_digits

Per run: the quality figure of the run itself (summary.json: 1-step digits FID of the
mu(k) EMA teacher from sigma = 80, 1024 samples, seed + 12345 latents), the generator's
parameter count (summary.json), the discriminator's (built from the run's config), the
steady-state step rate, and a health summary of the act/* metrics.

Steady-state rate: metrics.jsonl's steps_per_sec is cumulative since the start of the
run (compilation included), so step / steps_per_sec is the elapsed time at that step;
the rate is (s2 - s1) / (elapsed(s2) - elapsed(s1)) between step 200 and the last
training log line (after both of ACT's step variants are compiled).
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

RATE_FROM = 200


def read_metrics(workdir):
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      line = line.strip()
      if line:
        rows.append(json.loads(line))
  return rows


def steady_rate(rows):
  pts = [(r["step"], r["step"] / r["steps_per_sec"]) for r in rows
         if r.get("steps_per_sec") and r["step"] >= RATE_FROM]
  if len(pts) < 2:
    return None
  (s1, e1), (s2, e2) = pts[0], pts[-1]
  return (s2 - s1) / (e2 - e1)


def act_health(rows):
  """min/max/last of the act/* scalars and whether every logged value is finite."""
  out = {}
  keys = sorted({k for r in rows for k in r if k.startswith("act/") or k in ("loss", "grad_norm")})
  for k in keys:
    vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
    out[k] = {"first": float(vals[0]), "last": float(vals[-1]), "min": float(vals.min()),
              "max": float(vals.max()), "all_finite": bool(np.all(np.isfinite(vals)))}
  nonfinite = [r.get("nonfinite_steps", 0) for r in rows if "nonfinite_steps" in r]
  out["nonfinite_steps_last"] = float(nonfinite[-1]) if nonfinite else None
  return out


def disc_params(workdir):
  from jaxdiff.config import base_config
  import jax
  import jax.numpy as jnp
  import ml_collections
  from jaxdiff.models.discriminator import build_discriminator
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  c = base_config().to_dict()
  c["act"].update(saved["act"])
  act = ml_collections.ConfigDict(c["act"])
  d = saved["data"]
  shape = (d["image_size"], d["image_size"], d["channels"])
  disc = build_discriminator(act, image_shape=shape, num_classes=d.get("num_classes", 0) or 0)
  variables = jax.eval_shape(lambda: disc.init(jax.random.key(0), jnp.zeros((1,) + shape),
                                               jnp.ones((1,)), None))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", default="/tmp/act_digits")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  # Runs collected earlier whose run dirs are gone (e.g. /tmp cleared between sessions) are
  # kept from the previous results.json; runs found under --runs replace them.
  results = {}
  previous = os.path.join(args.out, "results.json")
  if os.path.exists(previous):
    with open(previous) as f:
      results = json.load(f)
  for workdir in sorted(glob.glob(os.path.join(args.runs, "*_s[0-9]*"))):
    name = os.path.basename(workdir)
    arm, seed = re.match(r"(\w+?)_s(\d+)$", name).groups()
    if not os.path.exists(os.path.join(workdir, "summary.json")):
      print(f"skipping unfinished {workdir}")
      continue
    with open(os.path.join(workdir, "summary.json")) as f:
      s = json.load(f)
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    results[name] = {
        "arm": arm, "seed": int(seed), "step": s["step"],
        "digits_fid_1step": s["quality"]["value"], "num_samples": s["quality"]["num_samples"],
        "generator_params": s.get("num_params"),
        "discriminator_params": disc_params(workdir) if arm != "plainct" else 0,
        "steady_steps_per_sec": steady_rate(train_rows),
        "overall_steps_per_sec": train_rows[-1]["steps_per_sec"] if train_rows else None,
        "compilations": s.get("compilations"),
        "final_loss": s.get("final_loss"),
        "health": act_health(train_rows),
    }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)

  labels = {"ct": "CT (ACT with lam0 = 0)", "act": "ACT (lam0 = 0.3)",
            "ctmu0": "CT, short teacher EMA (lam0 = 0, mu0 = 1e-6)",
            "actmu0": "ACT, short teacher EMA (lam0 = 0.3, mu0 = 1e-6)",
            "plainct": "plain CT (objective.name=ct, no discriminator)"}
  lines = ["| arm | steps | seeds | 1-step digits FID, mean ± std (per seed) | generator params | "
           "discriminator params | steady steps/s (per seed) |", "| --- | --- | --- | --- | --- | --- | --- |"]
  rate = {}
  for arm in labels:
    runs = sorted((v for v in results.values() if v["arm"] == arm), key=lambda v: v["seed"])
    if not runs:
      continue
    fid = np.array([v["digits_fid_1step"] for v in runs])
    sd = fid.std(ddof=1) if len(fid) > 1 else 0.0
    rates = [v["steady_steps_per_sec"] for v in runs]
    rate[arm] = float(np.mean(rates))
    lines.append(f"| {labels[arm]} | {runs[0]['step']} | {len(runs)} | {fid.mean():.2f} ± {sd:.2f} "
                 f"({', '.join(f'{x:.2f}' for x in fid)}) | {runs[0]['generator_params']:,} | "
                 f"{runs[0]['discriminator_params']:,} | {rate[arm]:.2f} "
                 f"({', '.join(f'{x:.2f}' for x in rates)}) |")
  lines.append("")
  if "act" in rate and "ct" in rate:
    lines.append(f"Step-time ratio ACT / CT(lam0=0) = {rate['ct'] / rate['act']:.2f}")
  if "actmu0" in rate and "ctmu0" in rate:
    lines.append(f"Step-time ratio ACT / CT(lam0=0), short teacher EMA = "
                 f"{rate['ctmu0'] / rate['actmu0']:.2f}")
  if "act" in rate and "plainct" in rate:
    lines.append(f"Step-time ratio ACT / plain CT = {rate['plainct'] / rate['act']:.2f}")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  # Figure: 1-step samples of seed 0 per arm (the run's own final grid) and FID per seed.
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms = [a for a in labels if a != "plainct" and f"{a}_s0" in results]
  # Sample grids (the last one of seed 0) only of arms whose run dir is still there.
  last_grid = {}
  for a in arms:
    grids = sorted(glob.glob(os.path.join(args.runs, f"{a}_s0", "samples", "*.npz")))
    if grids:
      last_grid[a] = grids[-1]
  if arms:
    fig, axes = plt.subplots(1, len(last_grid) + 1, figsize=(3.2 * (len(last_grid) + 1), 3.2),
                             squeeze=False)
    axes = axes[0]
    for i, (a, npz) in enumerate(last_grid.items()):
      from jaxdiff import visualize
      x = np.load(npz)
      x = x[x.files[0]][:64]
      axes[i].imshow(np.squeeze(visualize.image_grid(x)), cmap="gray")
      axes[i].set_title(f"{a} seed 0: FID {results[f'{a}_s0']['digits_fid_1step']:.1f}",
                        fontsize=9)
      axes[i].axis("off")
    ax = axes[-1]
    for i, a in enumerate(arms):
      vals = [v["digits_fid_1step"] for v in results.values() if v["arm"] == a]
      ax.scatter([i] * len(vals), vals, color=f"C{i}")
      ax.errorbar([i + 0.15], [np.mean(vals)], yerr=[np.std(vals, ddof=1) if len(vals) > 1 else 0],
                  fmt="_", color="k", capsize=4)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.set_ylabel("1-step digits FID (lower is better)")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "fid.png"), dpi=110)


if __name__ == "__main__":
  main()
