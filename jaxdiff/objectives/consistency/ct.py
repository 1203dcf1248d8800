"""CT: consistency training from data (Song, Dhariwal, Chen, Sutskever, ICML 2023,
arXiv 2303.01469; docs/ct.md). Official JAX code: openai/consistency_models_cifar10.

(t, r) are adjacent levels of a Karras grid of N(k) levels, the pair index
uniform; the teacher is an EMA of the weights with rate mu(k), kept in the train
state and updated after each step with the mu of that step (`jcm/losses.py`).
Both N(k) and mu(k) come from `ct_schedule`, traced values of the step, so one
compiled step serves the whole run. Under the difficulty curriculum the pair
index is restricted to pairs whose student level lies in an enabled cluster.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.errors import ConfigError
from jaxdiff.objectives.consistency.family import ConsistencyObjective
from jaxdiff.objectives.consistency.math import (ct_sample_pair, ct_schedule,
                                                 karras_grid_ascending)
from jaxdiff.objectives.consistency.settings import AutoDefaults
from jaxdiff.objectives.registry import register

CONFIG = {"consistency": dict(
    # N(k) from s0 to s1 + 1 levels and the teacher EMA mu(k) from mu0 over
    # consistency.schedule_steps (docs/ct.md#the-nk-and-muk-schedules).
    ct_s0=2,
    ct_s1=150,
    ct_mu0=0.9,
)}


@register("ct")
class CT(ConsistencyObjective):
  # CM boundary at sigma_min; the paper's LPIPS when consistency.lpips_weights is set, else
  # the L2 stand-in (docs/ct.md#defaults-in-jaxdiff); uniform weight.
  AUTO = AutoDefaults(train_precond="cm", sample_sigma_min=None, metric="lpips",
                      weighting="uniform", huber_c=0.0)
  config_keys = CONFIG

  def __init__(self, *args, s0: int = 2, s1: int = 150, mu0: float = 0.9, **kw):
    super().__init__(*args, **kw)
    self.s0, self.s1, self.mu0 = int(s0), int(s1), float(mu0)

  @classmethod
  def validate_config(cls, config, num_devices=None):
    super().validate_config(config, num_devices)
    mu0 = config.consistency.ct_mu0
    if not 0 < mu0 < 1:
      raise ConfigError(f"config.consistency.ct_mu0={mu0!r} must be in (0, 1).")

  @classmethod
  def method_kwargs(cls, config):
    c = config.consistency
    return dict(s0=c.ct_s0, s1=c.ct_s1, mu0=c.ct_mu0)

  def schedule(self, step):
    num_scales, target_ema = ct_schedule(step, self.settings.schedule_steps, self.s0, self.s1,
                                         self.mu0)
    return {"num_scales": num_scales, "target_ema": target_ema}

  def sample_times(self, key, batch, step, dtype):
    s = self.settings
    sched = self.schedule(step)
    mask = self.noise_sampler.mask
    if mask is None or all(mask):
      t, r = ct_sample_pair(key, (batch,), sched["num_scales"], s.sigma_min, s.sigma_max, s.rho,
                            dtype=dtype)
      return t, r, sched
    size = self.s1 + 1
    n = jnp.minimum(sched["num_scales"], size)
    grid = karras_grid_ascending(n, s.sigma_min, s.sigma_max, s.rho, size=size, dtype=dtype)
    uniform = jnp.where(jnp.arange(size - 1) < n - 1, 1.0, 0.0)
    t, r = self.restricted_pair(key, (batch,), grid, uniform / jnp.sum(uniform), dtype)
    return t, r, sched

  # The teacher: an EMA of the weights with rate mu(k), in the train state.

  def teacher_params(self, params, aux):
    return aux["teacher"]

  def init_aux(self, params):
    return {"teacher": jax.tree.map(jnp.copy, params), **super().init_aux(params)}

  def update_aux(self, aux, params, step):
    """teacher <- mu(k) teacher + (1 - mu(k)) theta_new, mu of the update's step (as
    jcm/losses.py); then the family's guidance snapshot."""
    mu = self.schedule(step)["target_ema"]
    teacher = jax.tree.map(lambda a, p: (a * mu + p * (1 - mu)).astype(a.dtype),
                           aux["teacher"], params)
    return super().update_aux(dict(aux, teacher=teacher), params, step)
