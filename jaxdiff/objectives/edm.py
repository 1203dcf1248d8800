"""EDM denoising score matching (Karras et al. 2022, arXiv 2206.00364; docs/edm.md).

ln sigma ~ N(P_mean, P_std^2); loss lambda(sigma) * ||D(y + sigma n; sigma) - y||^2
with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, summed over pixels
and averaged over the batch, as EDM's training loop does. Samples come from EDM's
Heun sampler on the preconditioned denoiser D. `objective.formulation = vp | ve`
trains EDM's VP or VE baseline instead (objectives/formulations.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import diffusion, sampling
from jaxdiff.objectives import base, formulations
from jaxdiff.objectives.registry import register


@register("edm")
class EDMObjective(base.Objective):
  formulations = formulations.FORMULATIONS

  def __init__(self, apply_fn: base.ApplyFn, noise_sampler: base.NoiseSampler,
               sigma_data: float = 0.5, num_classes: int = 0, formulation: str = "edm"):
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.sigma_data = sigma_data
    self.num_classes = num_classes
    self.formulation = formulation

  @classmethod
  def noise_sampler(cls, config):
    return formulations.noise_sampler(config.objective.formulation,
                                      float(config.objective.p_mean),
                                      float(config.objective.p_std))

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    return cls(apply_fn, noise_sampler, sigma_data=config.objective.sigma_data,
               num_classes=config.data.num_classes, formulation=config.objective.formulation)

  def denoise(self, params, x, sigma, class_labels=None, train=False, dropout_key=None):
    return diffusion.denoise(self.apply_fn, params, x, sigma, sigma_data=self.sigma_data,
                             class_labels=class_labels, train=train, dropout_key=dropout_key,
                             precond=self.formulation)

  def target(self, x_noisy, sigma, batch, aux, key):
    """The regression target of D; STF replaces this with a reference-batch average."""
    return batch["image"]

  def loss(self, params, aux, batch, key, step):
    y = batch["image"]
    k_sigma, k_noise, k_drop, k_target = jax.random.split(key, 4)
    sigma = self.noise_sampler(k_sigma, (y.shape[0],), y.dtype)
    noise = jax.random.normal(k_noise, y.shape, y.dtype)
    x_noisy = y + base.expand_to(sigma, y) * noise
    labels = base.one_hot_labels(batch, self.num_classes, y.dtype)
    target = jax.lax.stop_gradient(self.target(x_noisy, sigma, batch, aux, k_target))
    denoised = self.denoise(params, x_noisy, sigma, labels, train=True, dropout_key=k_drop)
    weight = formulations.loss_weight(self.formulation, sigma, self.sigma_data)
    per_sample = weight * base.per_sample_sum((denoised - target) ** 2)
    loss = jnp.mean(per_sample)
    return loss, {"per_sample_loss": per_sample, "sigma": sigma}

  def denoiser(self, params, class_labels=None):
    """x, sigma -> D(x; sigma), the function EDM's sampler integrates."""
    def fn(x, sigma):
      return self.denoise(params, x, sigma, class_labels)
    return fn

  def sample(self, params, latents, labels, key, sample_config):
    s = sample_config
    return sampling.edm_sampler(self.denoiser(params, labels), latents, num_steps=s.num_steps,
                                sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)
