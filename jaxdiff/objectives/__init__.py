"""Training objectives, one module per paper.

  edm.py          EDM denoising score matching (Karras et al. 2022)
  stf.py          Stable Target Field (Xu et al. 2023): reference-batch targets
  consistency.py  CT / iCT / ECT / SCT (Song et al. 2023; Song & Dhariwal 2023;
                  Geng et al. 2024; Wang et al. 2024)
  act.py          Adversarial Consistency Training (Kong et al. 2024)

`make_objective` builds the one a config names. The difficulty curriculum is not
an objective: it is the noise sampler every objective receives.
"""
from __future__ import annotations

from jaxdiff.objectives import base


def _edm(config, apply_fn, noise_sampler, example_shape):
  from jaxdiff.objectives.edm import EDMObjective
  return EDMObjective(apply_fn, noise_sampler, sigma_data=config.objective.sigma_data,
                      num_classes=config.data.num_classes)


# name -> factory(config, apply_fn, noise_sampler, example_shape). Methods register here.
REGISTRY = {"edm": _edm}


def make_objective(config, apply_fn: base.ApplyFn, noise_sampler: base.NoiseSampler,
                   example_shape) -> base.Objective:
  name = config.objective.name
  if name not in REGISTRY:
    raise ValueError(f"config.objective.name={name!r} is not available; choose one of "
                     f"{tuple(sorted(REGISTRY))}.")
  return REGISTRY[name](config, apply_fn, noise_sampler, example_shape)
