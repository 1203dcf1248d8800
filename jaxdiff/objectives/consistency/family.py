"""The consistency family as an `Objective`: what CT, iCT, ECT and SCT have in common.

`ConsistencyObjective` joins the shared core (core.py) to the objective contract:
it resolves the shared settings from the config, averages the core's per-sample
loss, keeps the guidance snapshot in the train state and hands the sampler its
weights. A method module (ct.py, ict.py, ect.py, sct.py) subclasses it with its
time sampler, its schedule, its config keys and its "auto" defaults.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from jaxdiff import optim
from jaxdiff.objectives import base
from jaxdiff.objectives.consistency import settings as settings_lib
from jaxdiff.objectives.consistency.core import ConsistencyCore, GuidedParams


class ConsistencyObjective(ConsistencyCore, base.Objective):
  """A consistency method; subclasses set `AUTO` and implement the time sampler."""

  AUTO: settings_lib.AutoDefaults
  config_keys = settings_lib.CONFIG
  # Whether the method trains phased models (SCT); the phase keys are refused otherwise.
  supports_phases = False

  def __init__(self, settings, apply_fn, noise_sampler, *, example_shape, sigma_data=0.5,
               num_classes=0, ema_config=None, batch_size=1, lpips_params=None):
    super().__init__(settings, apply_fn, noise_sampler, example_shape=example_shape,
                     sigma_data=sigma_data, num_classes=num_classes, lpips_params=lpips_params)
    self.ema_config = ema_config
    self.batch_size = int(batch_size)

  # ---------------------------------------------------------------- config

  @classmethod
  def validate_config(cls, config, num_devices=None):
    cls.resolve(config, settings_lib.example_shape_of(config))
    if not cls.supports_phases:
      settings_lib.refuse_phases(config, cls.name)

  @classmethod
  def resolve(cls, config, example_shape) -> settings_lib.Settings:
    return settings_lib.resolve_settings(config, example_shape, cls.AUTO)

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None, **extra):
    settings = cls.resolve(config, example_shape)
    logging.info("consistency objective %s: %s", cls.name, settings)
    return cls(settings, apply_fn, noise_sampler, example_shape=example_shape,
               sigma_data=config.objective.sigma_data, num_classes=config.data.num_classes,
               ema_config=config.ema, batch_size=config.data.batch_size,
               **cls.method_kwargs(config), **extra)

  @classmethod
  def method_kwargs(cls, config) -> dict:
    """The method's own constructor arguments from its config keys."""
    return {}

  # ---------------------------------------------------------------- training

  def schedule(self, step) -> dict:
    """Traced schedule values of `step` (logged as consistency/<name>)."""
    return {}

  def teacher_params(self, params, aux):
    """The teacher's weights: the student's own (under stop-gradient in the core)."""
    return params

  def loss(self, params, aux, batch, key, step):
    out = self.terms(params, self.teacher_params(params, aux), batch, key, step)
    per_sample = out["per_sample_loss"]
    t, r = out["sigma"], out["r"]
    metrics = {"per_sample_loss": per_sample, "sigma": t,
               "consistency/r_over_t": jnp.mean(r / t)}
    for name in ("stage", "num_scales", "target_ema"):
      if name in out:
        metrics[f"consistency/{name}"] = jnp.asarray(out[name], jnp.float32)
    return jnp.mean(per_sample), metrics

  def init_aux(self, params):
    if self.settings.guidance == "ema_snapshot":
      return {"guide": jax.tree.map(jnp.copy, params)}
    return {}

  def update_aux(self, aux, params, step):
    """Guidance snapshot: the trainer's EMA replayed until the snapshot step, then frozen."""
    aux = dict(aux)
    if "guide" in aux:
      decay = optim.ema_decay(step, self.ema_config, self.batch_size)
      updated = optim.ema_update(aux["guide"], params, decay)
      before = step < self.settings.snapshot_step
      aux["guide"] = jax.tree.map(lambda u, g: jnp.where(before, u, g), updated, aux["guide"])
    return aux

  def after_update(self, aux, params, batch, key, step, variant=None):
    return self.update_aux(aux, params, step), {}

  # ---------------------------------------------------------------- sampling

  def sampling_params(self, params, aux):
    """The weights, plus the guide snapshot when guiding with one."""
    if self.settings.guidance == "ema_snapshot" and aux and "guide" in aux:
      return GuidedParams(model=params, guide=aux["guide"])
    return params
