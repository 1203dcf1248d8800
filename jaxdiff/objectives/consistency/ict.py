"""iCT: improved consistency training (Song & Dhariwal, ICLR 2024, arXiv 2310.14189;
docs/ict.md). There is no official code; the settings follow the paper.

(t, r) are adjacent levels of a Karras grid whose size doubles on a fixed period
(10 to 1280 levels), the pair index drawn from the lognormal discretised on the
grid, lognormal(consistency.ict_p_mean, ict_p_std) = (-1.1, 2.0) by default: iCT's
own, not EDM's objective.p_mean/p_std, which iCT refuses to change); the teacher is the student's own
weights under stop-gradient; pseudo-Huber distance with c = 0.00054 sqrt(d) and
weight 1/(t - r).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.errors import ConfigError
from jaxdiff.objectives.base import LognormalSampler
from jaxdiff.objectives.consistency.family import ConsistencyObjective
from jaxdiff.objectives.consistency.math import (ict_index_probs, ict_num_scales,
                                                 ict_sample_pair, karras_grid_ascending)
from jaxdiff.objectives.consistency.settings import AutoDefaults
from jaxdiff.objectives.registry import register

CONFIG = {"consistency": dict(
    # The grid doubles from s0 to s1 levels over consistency.schedule_steps (docs/ict.md).
    ict_s0=10,
    ict_s1=1280,
    # iCT's lognormal over the pair index (Song & Dhariwal 2023, Sec. 3.5; docs/ict.md).
    ict_p_mean=-1.1,
    ict_p_std=2.0,
)}
# EDM's distribution, the base config's objective.p_mean / p_std, which iCT does not read.
_EDM_P_MEAN, _EDM_P_STD = -1.2, 1.2


@register("ict")
class ICT(ConsistencyObjective):
  AUTO = AutoDefaults(train_precond="cm", sample_sigma_min=None, metric="pseudo_huber",
                      weighting="ict", huber_c="ict")
  config_keys = CONFIG

  def __init__(self, *args, s0: int = 10, s1: int = 1280, **kw):
    super().__init__(*args, **kw)
    self.s0, self.s1 = int(s0), int(s1)

  @classmethod
  def validate_config(cls, config, num_devices=None):
    super().validate_config(config, num_devices)
    edm = (float(config.objective.p_mean), float(config.objective.p_std))
    if edm != (_EDM_P_MEAN, _EDM_P_STD):
      raise ConfigError(
          f"objective.p_mean/p_std = {edm} would be ignored: iCT draws its pairs from "
          f"consistency.ict_p_mean/ict_p_std (default -1.1, 2.0, the paper's); set those "
          f"instead and leave objective.p_mean/p_std at {_EDM_P_MEAN}, {_EDM_P_STD}")
    if not float(config.consistency.ict_p_std) > 0:
      raise ConfigError(f"consistency.ict_p_std={config.consistency.ict_p_std} must be > 0")

  @classmethod
  def noise_sampler(cls, config):
    return LognormalSampler(float(config.consistency.ict_p_mean),
                            float(config.consistency.ict_p_std))

  @classmethod
  def method_kwargs(cls, config):
    return dict(s0=config.consistency.ict_s0, s1=config.consistency.ict_s1)

  def schedule(self, step):
    return {"num_scales": ict_num_scales(step, self.settings.schedule_steps, self.s0, self.s1)}

  def sample_times(self, key, batch, step, dtype):
    s = self.settings
    sched = self.schedule(step)
    grid = karras_grid_ascending(sched["num_scales"], s.sigma_min, s.sigma_max, s.rho,
                                 size=self.s1 + 1, dtype=jnp.float32)
    p_mean, p_std = self.noise_sampler.p_mean, self.noise_sampler.p_std
    mask = self.noise_sampler.mask
    if mask is None or all(mask):
      t, r = ict_sample_pair(key, (batch,), grid, p_mean, p_std)
      return t.astype(dtype), r.astype(dtype), sched
    t, r = self.restricted_pair(key, (batch,), grid, ict_index_probs(grid, p_mean, p_std), dtype)
    return t, r, sched
