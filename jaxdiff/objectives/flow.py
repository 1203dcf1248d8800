"""Flow matching with the linear interpolant, as SiT trains it (Ma et al. 2024, "SiT:
Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant
Transformers", arXiv 2401.08740; Lipman et al. 2023; docs/flow.md).

  x_t = (1 - t) x0 + t eps,  t ~ U(0, 1),  target v = eps - x0,
  loss = mean over the batch of the mean over pixels of (v_theta(x_t, t) - v)^2.

Time runs from data (t = 0) to noise (t = 1), so that curriculum cluster 0 is the lowest
noise as for every other objective; SiT writes the same path with t reversed. The network
receives `flow.time_scale * t` as its noise label (1 as SiT feeds DiT; a positional
embedding built for DDPM's 0..999 wants 1000). Samples: Euler or Heun from t = 1
(`jaxdiff.sampling.flow`), with classifier-free guidance v_u + w (v_c - v_u) when
`flow.guidance_scale` != 1 (the unconditional branch gets no label).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdiff.errors import ConfigError
from jaxdiff.objectives import base
from jaxdiff.objectives.formulations import UniformVariableSampler
from jaxdiff.objectives.registry import register
from jaxdiff.sampling.flow import SOLVERS, flow_sampler

CONFIG = {"flow": dict(
    time_scale=1.0,         # the network's noise label is time_scale * t
    solver="heun",          # euler | heun
    num_steps=50,           # sampling steps (Heun: 2 evaluations each)
    guidance_scale=1.0,     # classifier-free guidance weight w (1: off)
)}


@dataclasses.dataclass(frozen=True)
class UniformTimeSampler(UniformVariableSampler):
  """t ~ U(0, 1); its curriculum clusters are equal intervals of t."""
  description = ("flow matching's uniform time t ~ U(0, 1), whose curriculum clusters are "
                 "equal intervals of t")
  units = "t"
  log_units = False

  def sigma_of(self, u, xp):
    return u

  def u_of(self, t):
    return t


@register("flow")
class FlowMatching(base.Objective):
  config_keys = CONFIG

  def __init__(self, apply_fn, noise_sampler, *, num_classes=0, time_scale=1.0,
               solver="heun", num_steps=50, guidance_scale=1.0):
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.num_classes = int(num_classes)
    self.time_scale = float(time_scale)
    self.solver, self.num_steps = solver, int(num_steps)
    self.guidance_scale = float(guidance_scale)

  @classmethod
  def validate_config(cls, config, num_devices=None):
    f = config.flow
    if f.solver not in SOLVERS:
      raise ConfigError(f"config.flow.solver={f.solver!r} is not one of {SOLVERS}.")
    if int(f.num_steps) < 1:
      raise ConfigError(f"config.flow.num_steps={f.num_steps!r} must be >= 1.")
    if f.guidance_scale != 1.0 and not config.data.num_classes:
      raise ConfigError("config.flow.guidance_scale guides with class labels; set "
                        "config.data.num_classes (and model.label_dropout > 0) or leave it 1.")

  @classmethod
  def noise_sampler(cls, config):
    return UniformTimeSampler()

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    f = config.flow
    return cls(apply_fn, noise_sampler, num_classes=config.data.num_classes,
               time_scale=f.time_scale, solver=f.solver, num_steps=f.num_steps,
               guidance_scale=f.guidance_scale)

  def velocity(self, params, x, t, class_labels=None, train=False, dropout_key=None):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    out = self.apply_fn(params, x, self.time_scale * t, class_labels, None, train, dropout_key)
    return out.astype(x.dtype)

  def loss(self, params, aux, batch, key, step):
    x0 = batch["image"]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = self.noise_sampler(k_t, (x0.shape[0],), x0.dtype)
    eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = (1 - base.expand_to(t, x0)) * x0 + base.expand_to(t, x0) * eps
    labels = base.one_hot_labels(batch, self.num_classes, x0.dtype)
    v = self.velocity(params, x_t, t, labels, train=True, dropout_key=k_drop)
    per_sample = jnp.mean(jnp.reshape((v - (eps - x0)) ** 2, (x0.shape[0], -1)), axis=1)
    # "sigma" is what the trainer's loss buckets read: here the time t.
    return jnp.mean(per_sample), {"per_sample_loss": per_sample, "sigma": t}

  def probe_loss(self, params, x0, noise, level, labels=None):
    """The training loss at given eps = `noise` and time t = `level` [B]: the per-example
    mean over pixels of (v_theta(x_t, t) - (eps - x0))^2 (the contract in base.py)."""
    t = jnp.asarray(level, x0.dtype)
    x_t = (1 - base.expand_to(t, x0)) * x0 + base.expand_to(t, x0) * noise
    v = self.velocity(params, x_t, t, labels)
    return jnp.mean(jnp.reshape((v - (noise - x0)) ** 2, (x0.shape[0], -1)), axis=1)

  def velocity_fn(self, params, class_labels=None):
    """(x, t) -> v, guided when guidance_scale != 1 and labels are given."""
    w = self.guidance_scale

    def fn(x, t):
      v = self.velocity(params, x, t, class_labels)
      if w == 1.0 or class_labels is None:
        return v
      return v + (w - 1.0) * (v - self.velocity(params, x, t, None))
    return fn

  def sample(self, params, latents, labels, key, sample_config):
    return flow_sampler(self.velocity_fn(params, labels), latents, self.num_steps, self.solver)

