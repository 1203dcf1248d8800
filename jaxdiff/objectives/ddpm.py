"""Discrete-time diffusion as DiT trains it (Ho et al. 2020; Nichol & Dhariwal 2021; Peebles
& Xie 2023; docs/ddpm.md), the setting of the difficulty curriculum's main experiments.

  t ~ U{0, ..., T-1},  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  the network predicts eps
  (and, with `model.learn_sigma`, DiT's variance interpolation v);
  loss = mean over pixels of (eps_theta - eps)^2  [+ the variational bound through v only].

The network's noise label is the integer timestep t, as DiT's. Samples: ancestral steps on a
respaced schedule (`ddpm.sample_steps`, DiT: "250") or DDIM, with classifier-free guidance on
eps (`ddpm.guidance_scale`; the unconditional branch gets no label). Curriculum clusters are
contiguous timestep intervals: equal width ("uniform", the paper's) or ANT's SNR / log-SNR
clusters ("snr", "logsnr"); a stage draws t uniformly from its enabled intervals.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.curriculum import clusters
from jaxdiff.diffusion import ddpm, ddpm_loss
from jaxdiff.errors import ConfigError
from jaxdiff.objectives import base
from jaxdiff.objectives.registry import register
from jaxdiff.sampling import ddpm as ddpm_sampling

CONFIG = {"ddpm": dict(
    num_timesteps=1000,
    beta_schedule="linear",      # linear | cosine (DiT: linear)
    sampler="ancestral",         # ancestral | ddim
    sample_steps="250",          # DiT's respacing spec: "250", "ddim50", "10,15,20", ...
    ddim_eta=0.0,
    guidance_scale=1.0,          # classifier-free guidance on eps (1: off; DiT uses 1.5, 4.0)
)}
SAMPLERS = ("ancestral", "ddim")
DISCRETE_KINDS = ("uniform", "snr", "logsnr")


@functools.lru_cache(maxsize=32)
def _cluster_of_timestep(num_timesteps: int, schedule: str, kind: str, num_clusters: int):
  """[T] the cluster of every timestep (ANT's clustering runs once per setting)."""
  # Host constants even when first asked inside a jit trace (the train step's sampler):
  # without this, JAX would stage the edge computation and the numpy below would fail.
  with jax.ensure_compile_time_eval():
    betas = ddpm.ddpm_betas(num_timesteps, schedule)
    edges = np.asarray(clusters.cluster_edges(num_clusters, kind, num_timesteps=num_timesteps,
                                              betas=betas))
  return np.searchsorted(edges, np.arange(num_timesteps), side="right")


@dataclasses.dataclass(frozen=True)
class DiscreteTimeSampler:
  """t ~ U{0..T-1}, or uniform over the timesteps of the enabled clusters of `kind`."""
  num_timesteps: int = 1000
  schedule: str = "linear"
  kind: str = "uniform"
  mask: tuple[bool, ...] | None = None

  cluster_kinds = DISCRETE_KINDS
  description = ("DDPM's integer timesteps t ~ U{0..T-1}, whose curriculum clusters are "
                 "contiguous timestep intervals (equal width, or ANT's SNR clusters)")
  units = "timestep"
  log_units = False

  @property
  def restricted(self) -> bool:
    return self.mask is not None and not all(self.mask)

  def cluster_of_timestep(self, num_clusters: int | None = None) -> np.ndarray:
    """[T] the cluster of every timestep, for `num_clusters` (default: the mask's)."""
    n = len(self.mask) if num_clusters is None else int(num_clusters)
    return _cluster_of_timestep(self.num_timesteps, self.schedule, self.kind, n)

  def _cluster_timesteps(self, num_clusters):
    of = self.cluster_of_timestep(num_clusters)
    out = [np.flatnonzero(of == i) for i in range(int(num_clusters))]
    if empty := [i for i, ts in enumerate(out) if not len(ts)]:
      raise ValueError(f"{num_clusters} {self.kind!r} clusters of {self.num_timesteps} "
                       f"timesteps leave clusters {empty} empty; use fewer clusters.")
    return out

  def probe_levels(self, num_clusters, per_cluster):
    """[N, M] integer timesteps spread evenly over each cluster's interval (the timestep at
    relative position (m + 0.5) / M; repeated where a cluster has fewer than M)."""
    m = (np.arange(int(per_cluster)) + 0.5) / per_cluster
    return np.stack([ts[np.floor(m * len(ts)).astype(np.int64)]
                     for ts in self._cluster_timesteps(num_clusters)])

  def cluster_ranges(self, num_clusters):
    return [(int(ts[0]), int(ts[-1]) + 1) for ts in self._cluster_timesteps(num_clusters)]

  def allowed(self) -> np.ndarray:
    if not self.restricted:
      return np.arange(self.num_timesteps)
    return np.flatnonzero(np.asarray(self.mask)[self.cluster_of_timestep()])

  def __call__(self, key, shape, dtype=jnp.float32):
    allowed = self.allowed()
    pick = jax.random.randint(key, shape, 0, len(allowed))
    return jnp.asarray(allowed, jnp.int32)[pick].astype(dtype)

  def restrict(self, mask):
    return dataclasses.replace(self, mask=None if mask is None else tuple(mask))

  def quantiles(self, q):
    return np.floor(np.asarray(q, np.float64) * self.num_timesteps)

  def in_enabled_clusters(self, t):
    if not self.restricted:
      return jnp.ones(jnp.shape(t), bool)
    inside = np.asarray(self.mask)[self.cluster_of_timestep()]
    return jnp.asarray(inside)[jnp.asarray(t).astype(jnp.int32)]


@register("ddpm")
class DDPM(base.Objective):
  config_keys = CONFIG

  def __init__(self, apply_fn, noise_sampler, *, num_classes=0, num_timesteps=1000,
               beta_schedule="linear", learn_sigma=False, sampler="ancestral",
               sample_steps="250", ddim_eta=0.0, guidance_scale=1.0):
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.num_classes = int(num_classes)
    self.schedule = ddpm.DiscreteSchedule.named(int(num_timesteps), beta_schedule)
    self.learn_sigma = bool(learn_sigma)
    self.sampler, self.sample_steps = sampler, sample_steps
    self.ddim_eta, self.guidance_scale = float(ddim_eta), float(guidance_scale)

  @classmethod
  def validate_config(cls, config, num_devices=None):
    d = config.ddpm
    if d.beta_schedule not in ddpm.SCHEDULES:
      raise ConfigError(f"config.ddpm.beta_schedule={d.beta_schedule!r} is not one of "
                        f"{ddpm.SCHEDULES}.")
    if d.sampler not in SAMPLERS:
      raise ConfigError(f"config.ddpm.sampler={d.sampler!r} is not one of {SAMPLERS}.")
    try:
      ddpm_sampling.space_timesteps(int(d.num_timesteps), d.sample_steps)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.ddpm.sample_steps={d.sample_steps!r}: {e}") from None
    if d.guidance_scale != 1.0 and not config.data.num_classes:
      raise ConfigError("config.ddpm.guidance_scale guides with class labels; set "
                        "config.data.num_classes (and model.label_dropout > 0) or leave it 1.")

  @classmethod
  def noise_sampler(cls, config):
    kind = config.curriculum.kind if config.curriculum.kind in DISCRETE_KINDS else "uniform"
    return DiscreteTimeSampler(int(config.ddpm.num_timesteps), config.ddpm.beta_schedule, kind)

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    d = config.ddpm
    return cls(apply_fn, noise_sampler, num_classes=config.data.num_classes,
               num_timesteps=d.num_timesteps, beta_schedule=d.beta_schedule,
               learn_sigma=bool(config.model.learn_sigma), sampler=d.sampler,
               sample_steps=d.sample_steps, ddim_eta=d.ddim_eta,
               guidance_scale=d.guidance_scale)

  def model_output(self, params, x, t, labels=None, train=False, dropout_key=None):
    out = self.apply_fn(params, x, t.astype(x.dtype), labels, None, train, dropout_key)
    return out.astype(x.dtype)

  def loss(self, params, aux, batch, key, step):
    x0 = batch["image"]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = self.noise_sampler(k_t, (x0.shape[0],), jnp.float32).astype(jnp.int32)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = ddpm.q_sample(self.schedule, x0, t, noise)
    labels = base.one_hot_labels(batch, self.num_classes, x0.dtype)
    out = self.model_output(params, x_t, t, labels, train=True, dropout_key=k_drop)
    terms = ddpm_loss.training_losses(self.schedule, out, x0, x_t, t, noise,
                                      learn_sigma=self.learn_sigma)
    per_sample = terms["loss"]
    return jnp.mean(per_sample), {"per_sample_loss": per_sample, "sigma": t.astype(x0.dtype)}

  def probe_loss(self, params, x0, noise, level, labels=None):
    """The simple loss at given eps = `noise` and timestep t = `level` [B]: the per-example
    mean over pixels of (eps_theta(x_t, t) - eps)^2 (with learned sigma, the eps part of
    the output only: the MSE term of the hybrid loss; the contract in base.py)."""
    t = jnp.asarray(level).astype(jnp.int32)
    x_t = ddpm.q_sample(self.schedule, x0, t, noise)
    out = self.model_output(params, x_t, t, labels)
    return ddpm_loss.training_losses(self.schedule, out, x0, x_t, t, noise,
                                     learn_sigma=self.learn_sigma)["mse"]

  def denoise_fn(self, params, labels=None):
    """(x_t, t) -> model output, eps guided when guidance_scale != 1 and labels are given."""
    w = self.guidance_scale

    def fn(x, t):
      out = self.model_output(params, x, t, labels)
      if w == 1.0 or labels is None:
        return out
      uncond = self.model_output(params, x, t, None)
      c = x.shape[-1]
      eps = ddpm_sampling.cfg_eps(out[..., :c], uncond[..., :c], w)
      return jnp.concatenate([eps, out[..., c:]], axis=-1)
    return fn

  def sample(self, params, latents, labels, key, sample_config):
    kw = dict(learn_sigma=self.learn_sigma, use_timesteps=self.sample_steps, noise=latents,
              dtype=latents.dtype)
    if self.sampler == "ddim":
      return ddpm_sampling.ddim_sample(key, self.schedule, self.denoise_fn(params, labels),
                                       latents.shape, eta=self.ddim_eta, **kw)
    return ddpm_sampling.ancestral_sample(key, self.schedule, self.denoise_fn(params, labels),
                                          latents.shape, **kw)
