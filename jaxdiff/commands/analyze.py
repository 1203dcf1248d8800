"""`--mode=analyze`: the curriculum paper's difficulty study on the recipe's data.

  python -m jaxdiff.main --config=configs/digits_curriculum.py --workdir=DIR --mode=analyze

(1) the KL between the noisy distributions of consecutive DDPM timesteps, and
(2) per-cluster convergence of one probe model (the recipe's network and its
denoising objective, curriculum off; EDM's for an objective without a
`probe_loss`) trained on all noise levels, measured on the clusters of that
objective's own noise sampler (DDPM timesteps, flow t, EDM sigma); the
measurements and reports are `jaxdiff.curriculum.study`'s, this module trains
the probe model.
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
from jaxdiff import console, objectives, parallel
from jaxdiff.curriculum import study
from jaxdiff.data import pipeline
from jaxdiff.train.experiment import Experiment

# The study measures denoising difficulty: an objective that cannot be probed at fixed noise
# (no `probe_loss`, objectives/base.py) is replaced by this one for the probe model.
FALLBACK_OBJECTIVE = "edm"


def study_train_config(config):
  """The recipe with the curriculum off, a probe-able objective and the study's budget.

  The recipe's own objective when it has a `probe_loss` (a denoising objective), else
  FALLBACK_OBJECTIVE's.
  """
  c = copy.deepcopy(config)
  s = c.curriculum.study
  with c.unlocked():
    c.curriculum.enabled = False
    if objectives.get(c.objective.name).probe_loss is None:
      console.log(f"analyze: training the probe model with the {FALLBACK_OBJECTIVE} loss (not "
                  f"{c.objective.name!r}, which has no probe_loss): the study measures "
                  "denoising difficulty.")
      c.objective.name = FALLBACK_OBJECTIVE
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
  # The objective's own sampler (curriculum off: the whole distribution), clustered by
  # `curriculum.kind` where it has that kind.
  sampler = exp.noise_sampler
  kind = study.cluster_kind(c, sampler)
  if kind != c.curriculum.kind:
    console.log(f"analyze: curriculum.kind={c.curriculum.kind!r} does not apply to "
                f"{sampler.description}; the study uses its {kind!r} clusters.")
  probe_x0, train_ds, probe_labels = study.split_probe(c, exp.dataset, int(s.probe_size))
  if train_ds is not None:
    # Train only on the non-probe examples, with the trainer's own batching.
    exp.batcher = pipeline.StepBatcher(
        dataset=train_ds, global_batch_size=c.data.batch_size, seed=c.seed,
        process_slice=exp.batcher.process_slice, random_flip=bool(c.data.random_flip))
  probe = jax.device_put(study.probe_set(c, probe_x0, sampler, probe_labels),
                         parallel.replicated(exp.mesh))
  probe_losses = study.probe_loss_fn(exp.objective, int(c.curriculum.num_clusters))
  num_steps, every = int(s.num_steps), int(s.eval_every)
  console.log(f"analyze: training {exp.num_params:,} parameters with the {c.objective.name} "
              f"objective for {num_steps} steps, probing {c.curriculum.num_clusters} {kind!r} "
              f"clusters ({sampler.units}) x {len(probe_x0)} held-out examples every "
              f"{every} steps")
  state, steps, curves = exp.init_state(), [], []
  for step in sorted(set(range(0, num_steps, every)) | {num_steps}):
    state = exp.advance(state, steps[-1] if steps else 0, step)
    # Raw (not EMA) weights: the study is about how fast the optimisation fits each level.
    curves.append(np.asarray(jax.device_get(probe_losses(state.params, probe)), np.float64))
    steps.append(step)
    console.log(f"analyze: step {step}/{num_steps}")
  return study.convergence_report(c, steps, curves, len(probe_x0), out_dir, sampler=sampler)


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
