"""Conditional variance of the denoising target per noise level on the digits data.

  python experiments/stf_digits/target_variance.py [--n 128,1024] [--out experiments/stf_digits]

For x = y_1 + sigma * n with y_1 a digit, the EDM target is y_1 itself and the
STF target is T(x) = sum_i w_i y_i over a reference set {y_1} + (n - 1) fresh
digits. Both are unbiased-ish estimates of E[y | x]; this measures how much
they scatter *given x*, E_x ||target - E[target | x]||^2 per pixel, exactly as
training sees it (docs/stf.md#testable-properties test 5):

  plain: Var(y_1 | x) = sum_j p_j ||y_j - mu(x)||^2, with p the exact posterior
         over the 1797 digits (the empirical data distribution is the data).
  STF:   Monte Carlo over K replicate reference sets for the same x: y_1 drawn
         from the exact posterior p(. | x), the other n - 1 uniformly from the
         digits; variance of T across replicates.

Writes target_variance.json and target_variance.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxdiff.data import builtin  # noqa: E402
from jaxdiff.objectives import stf  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--n", default="128,1024",
                 help="reference set sizes, comma-separated (digits_stf: 1024)")
  p.add_argument("--num_x", type=int, default=48, help="noisy points per noise level")
  p.add_argument("--replicates", type=int, default=32, help="reference sets per point")
  p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = p.parse_args(argv)
  sizes = [int(v) for v in args.n.split(",")]
  images, _ = builtin.load_digits_images()
  data = images.reshape(len(images), -1).astype(np.float32)      # [N, 64]
  num, d = data.shape
  sigmas = np.geomspace(0.002, 80.0, 17)
  rng = np.random.default_rng(0)
  stf_many = jax.jit(jax.vmap(stf.stf_target, in_axes=(None, None, 0)))  # K reference sets
  rows = []
  for sigma in sigmas:
    plain, stf_var = [], {n: [] for n in sizes}
    src = rng.integers(0, num, args.num_x)
    xs = data[src] + sigma * rng.standard_normal((args.num_x, d)).astype(np.float32)
    # Exact posterior over the whole (finite) dataset, in float64.
    with jax.enable_x64(True):
      logw = np.asarray(stf.stf_weights(jnp.asarray(xs, jnp.float64), sigma,
                                        jnp.asarray(data, jnp.float64)))
    post = np.exp(logw)
    post /= post.sum(1, keepdims=True)
    mu = post @ data.astype(np.float64)
    for j, x in enumerate(xs):
      sq = ((data - mu[j]) ** 2).sum(1)
      plain.append(float(post[j] @ sq) / d)
      y1 = rng.choice(num, size=args.replicates, p=post[j])
      for n in sizes:
        others = rng.integers(0, num, (args.replicates, n - 1))
        refs = np.concatenate([data[y1][:, None], data[others]], axis=1)   # [K, n, d]
        t = np.asarray(stf_many(jnp.asarray(x[None]), jnp.float32(sigma), jnp.asarray(refs)))[:, 0]
        stf_var[n].append(float(((t - t.mean(0)) ** 2).sum(1).mean()) * args.replicates
                          / (args.replicates - 1) / d)
    row = {"sigma": float(sigma), "plain_var": float(np.mean(plain))}
    for n in sizes:
      v = float(np.mean(stf_var[n]))
      row[f"stf_var_n{n}"] = v
      # Below ~1e-8 both are float rounding (the posterior is one-hot): no ratio.
      row[f"ratio_n{n}"] = v / row["plain_var"] if row["plain_var"] > 1e-8 else None
    rows.append(row)
    print(f"sigma {sigma:8.3f}  Var plain {row['plain_var']:.3e}  "
          + "  ".join(f"STF n={n} {row[f'stf_var_n{n}']:.3e}" for n in sizes), flush=True)
  result = {"n": sizes, "num_x": args.num_x, "replicates": args.replicates,
            "units": "per-pixel variance of the denoiser target given x (data in [-1, 1])",
            "data_var_per_pixel": float(data.var(0).sum() / d), "rows": rows}
  with open(os.path.join(args.out, "target_variance.json"), "w") as f:
    json.dump(result, f, indent=2)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  s = [r["sigma"] for r in rows]
  floor = 1e-8  # a log axis cannot show 0; below this both are float rounding
  ax.loglog(s, [max(r["plain_var"], floor) for r in rows], "o-", label="EDM target y (plain DSM)")
  for n, marker in zip(sizes, "s^dv"):
    ax.loglog(s, [max(r[f"stf_var_n{n}"], floor) for r in rows], marker + "-",
              label=f"STF target, n = {n}")
  ax.axhline(result["data_var_per_pixel"], color="gray", ls=":", lw=1, label="Var(data)")
  ax.set_xlabel("noise level sigma")
  ax.set_ylabel("E_x Var(target | x) per pixel (floor 1e-8)")
  ax.set_title("Digits: conditional variance of the denoising target")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "target_variance.png"), dpi=120)
  print("wrote", os.path.join(args.out, "target_variance.json"))


if __name__ == "__main__":
  main()
