"""`--mode=eval`: FID of one checkpoint, or the recipe's built-in quality figure.

  python -m jaxdiff.main --config=configs/cifar10_edm.py --workdir=runs/c10 --mode=eval \
      --config.eval.inception_weights=/path/pt_inception-2015-12-05-6726825d.pth \
      [--config.eval.reference_stats=/path/cifar10-32x32.npz] [--raw_weights] \
      [--config.eval.checkpoint_step=200000]

Without Inception weights (`config.eval.inception_weights=""`) it reports the
recipe's built-in quality figure instead (digits FID, sliced Wasserstein for toy
data), on `config.eval.num_samples` samples. The result goes to
`<workdir>/eval/step<N>_<weights>.json` (and FID to `fid.jsonl`; docs/evaluation.md).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from jaxdiff import console
from jaxdiff.commands.sample import load_run
from jaxdiff.evaluation import fid_evaluator, quality
from jaxdiff.train import fid as fid_lib
from jaxdiff.train import samples


def evaluate_workdir(config, workdir: str, use_ema: bool = True, mesh=None) -> dict:
  """Evaluates one checkpoint of `workdir` (latest, or config.eval.checkpoint_step).

  `mesh` defaults to the one config.mesh describes (a checkpoint restores onto any mesh).
  """
  exp, params, step = load_run(config, workdir, use_ema, int(config.eval.checkpoint_step), mesh)
  weights = "ema" if use_ema else "raw"
  out: dict[str, Any] = {"step": int(step), "weights": weights}
  if config.eval.inception_weights:
    record = fid_lib.make_evaluator(exp, workdir)(params, step, weights)
    record["mode"] = "eval"
    out.update(record)
    out["best"] = fid_evaluator.record_fid(workdir, record)["best"]
  else:
    out.update(_builtin_quality(exp, params, step, weights))
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"step{int(step)}_{weights}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=2)
    out["path"] = path
  return out


def _builtin_quality(exp, params, step: int, weights: str) -> dict:
  config = exp.config
  n = int(config.eval.num_samples)
  seed = int(config.eval.fid_seed)
  images = samples.generate(exp, params, n, seed=seed)
  name, value = quality.quality_figure(config, images)
  reference = quality.reference_description(config)
  console.log(f"{name} = {value:.4f} at step {step}: {weights} weights, {n} samples (latent "
              f"seed {seed}), reference {reference} (no Inception weights given: "
              "config.eval.inception_weights is empty)")
  return {"metric": name, "value": float(value), "num_samples": n, "seed": seed,
          "reference": reference}
