"""`--mode=analyze`: the curriculum paper's difficulty study on the recipe's data.

  python -m jaxdiff.main --config=configs/digits_curriculum.py --workdir=DIR --mode=analyze

(1) the KL between the noisy distributions of consecutive DDPM timesteps, and
(2) per-cluster convergence of one probe model (the recipe's network, the
denoising loss, curriculum off) trained on all noise levels; the measurements
and reports are `jaxdiff.curriculum.study`'s, this module trains the probe model.
Everything goes to `DIR/analysis/` (report.md, tables, plots, summary.json).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import console, parallel
from jaxdiff.curriculum import study
from jaxdiff.data import pipeline
from jaxdiff.train.experiment import Experiment

# The study measures denoising difficulty, so its probe model trains with the
# plain denoising (EDM) loss whatever the recipe's method.
PROBE_OBJECTIVE = "edm"


def study_train_config(config):
  """The recipe with the curriculum off, the denoising loss and the study's budget."""
  c = copy.deepcopy(config)
  s = c.curriculum.study
  with c.unlocked():
    c.curriculum.enabled = False
    if c.objective.name != PROBE_OBJECTIVE:
      console.log(f"analyze: training the probe model with the {PROBE_OBJECTIVE} loss (not "
                  f"{c.objective.name!r}): the study measures denoising difficulty.")
      c.objective.name = PROBE_OBJECTIVE
    # Everything else as the recipe (loss buckets included), so the step is
    # the very program of the recipe's last curriculum stage: a persistent-
    # cache hit when the recipe was trained or smoke-tested before.
    c.train.num_steps = int(s.num_steps)
    if s.batch_size:
      c.data.batch_size = int(s.batch_size)
  return c


def convergence_study(config, out_dir: str, mesh=None) -> dict[str, Any]:
  """Per-cluster probe losses of one model trained on every noise level."""
  c = study_train_config(config)
  s = c.curriculum.study
  exp = Experiment(c, mesh=mesh)
  probe_x0, train_ds = study.split_probe(c, exp.dataset, int(s.probe_size))
  if train_ds is not None:
    # Train only on the non-probe examples, with the trainer's own batching.
    exp.batcher = pipeline.StepBatcher(
        dataset=train_ds, global_batch_size=c.data.batch_size, seed=c.seed,
        process_slice=exp.batcher.process_slice, random_flip=bool(c.data.random_flip))
  probe = jax.device_put(study.probe_set(c, probe_x0), parallel.replicated(exp.mesh))
  probe_losses = study.probe_loss_fn(exp.apply_fn, float(c.objective.sigma_data),
                                     int(c.curriculum.num_clusters))
  num_steps, every = int(s.num_steps), int(s.eval_every)
  console.log(f"analyze: training {exp.num_params:,} parameters for {num_steps} steps, probing "
              f"{c.curriculum.num_clusters} clusters x {len(probe_x0)} held-out examples every "
              f"{every} steps")
  state, steps, curves = exp.init_state(), [], []
  for step in sorted(set(range(0, num_steps, every)) | {num_steps}):
    state = exp.advance(state, steps[-1] if steps else 0, step)
    # Raw (not EMA) weights: the study is about how fast the optimisation fits each level.
    curves.append(np.asarray(jax.device_get(probe_losses(state.params, probe)), np.float64))
    steps.append(step)
    console.log(f"analyze: step {step}/{num_steps}")
  return study.convergence_report(c, steps, curves, len(probe_x0), out_dir)


def run(config, workdir: str, mesh=None) -> dict[str, Any]:
  """Both studies; returns (and writes) the summary."""
  config_lib.validate(config)  # the curriculum's, study keys included
  out_dir = os.path.join(workdir, "analysis")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  dataset, _ = pipeline.make_dataset(config.data)
  console.log("analyze: (1) KL between consecutive noisy distributions")
  kl = study.kl_study(config, dataset, out_dir)
  console.log("analyze: (2) per-cluster convergence")
  conv = convergence_study(config, out_dir, mesh=mesh)
  summary = {"kl": kl, "convergence": conv,
             "files": sorted(os.listdir(out_dir)) if jax.process_index() == 0 else []}
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(study.report(kl, conv, out_dir))
  console.log(f"analyze: wrote {out_dir}/report.md (tables, kl.png, convergence.png)")
  return summary
