"""EDM's three formulations of denoising score matching: EDM, VP and VE.

Karras et al. 2022 (arXiv 2206.00364), Table 1, re-derive the VP (DDPM++) and VE (NCSN++)
models of Song et al. 2021 in EDM's frame; NVlabs/edm trains each with `--precond=vp|ve|edm`,
and STF (Xu et al. 2023) reports its target on all three. A formulation fixes three things
(docs/edm.md#vp-and-ve):

  =========  ==========================  =================  ====================
  name       noise levels in training    loss weight        preconditioning
  =========  ==========================  =================  ====================
  edm        ln sigma ~ N(P_mean, P_std)  (s^2+sd^2)/(s sd)^2  `edm_precond`
  vp         sigma = vp_sigma(t),         1 / sigma^2        `vp_precond`
             t ~ U(epsilon_t, 1)
  ve         ln sigma ~ U(ln 0.02,        1 / sigma^2        `ve_precond`
             ln 100)
  =========  ==========================  =================  ====================

The VP and VE samplers are uniform in a variable u in (0, 1) (t for VP, the position in
[ln sigma_min, ln sigma_max] for VE), so their curriculum clusters are equal intervals of u
(`curriculum.kind = "uniform"`): equal probability, like the lognormal's quantile clusters.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.diffusion.precond import VE_DEFAULTS, VP_DEFAULTS

FORMULATIONS = ("edm", "vp", "ve")


@dataclasses.dataclass(frozen=True)
class UniformVariableSampler:
  """sigma = sigma_of(u), u ~ U(0, 1), or u uniform over the enabled equal-width clusters."""
  mask: tuple[bool, ...] | None = None

  cluster_kinds = ("uniform",)
  # What sigma_of returns (reports of the difficulty study); flow's time overrides them.
  units = "sigma"
  log_units = True

  @property
  def restricted(self) -> bool:
    return self.mask is not None and not all(self.mask)

  def __call__(self, key, shape, dtype=jnp.float32):
    k_cluster, k_within = jax.random.split(key)
    u = jax.random.uniform(k_within, shape, jnp.float32)
    if self.restricted:
      enabled = jnp.asarray(np.flatnonzero(self.mask), jnp.float32)
      pick = jax.random.randint(k_cluster, shape, 0, len(enabled))
      u = (enabled[pick] + u) / len(self.mask)
    return self.sigma_of(u, jnp).astype(dtype)

  def restrict(self, mask):
    return dataclasses.replace(self, mask=None if mask is None else tuple(mask))

  def quantiles(self, q):
    return self.sigma_of(np.asarray(q, np.float64), np)

  def in_enabled_clusters(self, sigma):
    if not self.restricted:
      return jnp.ones(jnp.shape(sigma), bool)
    n = len(self.mask)
    index = jnp.clip(jnp.floor(self.u_of(jnp.asarray(sigma, jnp.float32)) * n), 0, n - 1)
    return jnp.asarray(self.mask)[index.astype(jnp.int32)]

  def probe_levels(self, num_clusters, per_cluster):
    """sigma_of(u) at u = (i + (m + 0.5) / M) / N: M levels evenly inside each u-interval."""
    from jaxdiff.objectives.base import probe_quantiles
    return self.sigma_of(probe_quantiles(int(num_clusters), int(per_cluster)), np)

  def cluster_ranges(self, num_clusters):
    edges = self.sigma_of(np.arange(int(num_clusters) + 1, dtype=np.float64) / num_clusters, np)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass(frozen=True)
class VPSampler(UniformVariableSampler):
  """EDM's `VPLoss`: t = 1 + u (epsilon_t - 1), sigma = vp_sigma(t). Cluster 0 is the lowest
  noise (small t)."""
  beta_d: float = VP_DEFAULTS["beta_d"]
  beta_min: float = VP_DEFAULTS["beta_min"]
  epsilon_t: float = VP_DEFAULTS["epsilon_t"]

  description = ("VP's uniform time t ~ U(epsilon_t, 1), sigma = sqrt(exp(beta_d t^2 / 2 + "
                 "beta_min t) - 1), whose curriculum clusters are equal intervals of t")

  def sigma_of(self, u, xp):
    t = self.epsilon_t + u * (1 - self.epsilon_t)
    return xp.sqrt(xp.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

  def u_of(self, sigma):
    t = diffusion.vp_sigma_inv(sigma, self.beta_d, self.beta_min)
    return (t - self.epsilon_t) / (1 - self.epsilon_t)


@dataclasses.dataclass(frozen=True)
class VESampler(UniformVariableSampler):
  """EDM's `VELoss`: sigma = sigma_min (sigma_max / sigma_min)^u."""
  sigma_min: float = VE_DEFAULTS["sigma_min"]
  sigma_max: float = VE_DEFAULTS["sigma_max"]

  description = ("VE's log-uniform sigma between sigma_min and sigma_max, whose curriculum "
                 "clusters are equal intervals of ln sigma")

  def sigma_of(self, u, xp):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

  def u_of(self, sigma):
    return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


def noise_sampler(formulation: str, p_mean: float, p_std: float):
  """The training noise distribution of a formulation."""
  from jaxdiff.objectives.base import LognormalSampler
  if formulation == "vp":
    return VPSampler()
  if formulation == "ve":
    return VESampler()
  return LognormalSampler(p_mean, p_std)


def loss_weight(formulation: str, sigma, sigma_data: float):
  if formulation == "edm":
    return diffusion.edm_loss_weight(sigma, sigma_data)
  return diffusion.vp_ve_loss_weight(sigma)
