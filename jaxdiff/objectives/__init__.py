"""Training objectives, one module per paper.

  edm.py          EDM denoising score matching (Karras et al. 2022)
  stf.py          Stable Target Field (Xu et al. 2023): reference-batch targets
  stf_objective.py  the STF objective: EDM loss with the STF target, per-device or
                  global reference sets
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


def _stf(config, apply_fn, noise_sampler, example_shape):
  from jaxdiff.objectives.stf_objective import STFObjective
  return STFObjective.from_config(config, apply_fn, noise_sampler)


def _consistency(config, apply_fn, noise_sampler, example_shape):
  from jaxdiff.objectives.consistency import ConsistencyObjective
  return ConsistencyObjective.from_config(config, apply_fn, noise_sampler, example_shape)


def _act(config, apply_fn, noise_sampler, example_shape):
  from jaxdiff.objectives.act import ACTObjective
  return ACTObjective.from_config(config, apply_fn, noise_sampler, example_shape)


# name -> factory(config, apply_fn, noise_sampler, example_shape). Methods register here.
REGISTRY = {"edm": _edm, "stf": _stf, "ct": _consistency, "ict": _consistency,
            "ect": _consistency, "sct": _consistency, "act": _act}


def make_objective(config, apply_fn: base.ApplyFn, noise_sampler: base.NoiseSampler,
                   example_shape, mesh=None) -> base.Objective:
  name = config.objective.name
  if name not in REGISTRY:
    raise ValueError(f"config.objective.name={name!r} is not available; choose one of "
                     f"{tuple(sorted(REGISTRY))}.")
  objective = REGISTRY[name](config, apply_fn, noise_sampler, example_shape)
  if mesh is not None:
    objective.mesh = mesh
  return objective
