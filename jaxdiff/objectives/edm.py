"""EDM denoising score matching (Karras et al. 2022), spec §1.3.

ln sigma ~ N(P_mean, P_std^2); loss lambda(sigma) * ||D(y + sigma n; sigma) - y||^2
with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, summed over pixels
and averaged over the batch, as EDM's training loop does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.objectives import base


class EDMObjective(base.Objective):
  sampler_kind = "edm"

  def __init__(self, apply_fn: base.ApplyFn, noise_sampler: base.NoiseSampler,
               sigma_data: float = 0.5, num_classes: int = 0):
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.sigma_data = sigma_data
    self.num_classes = num_classes

  def denoise(self, params, x, sigma, class_labels=None, train=False, dropout_key=None):
    return diffusion.denoise(self.apply_fn, params, x, sigma, sigma_data=self.sigma_data,
                             class_labels=class_labels, train=train, dropout_key=dropout_key)

  def target(self, x_noisy, sigma, batch, aux, key):
    """The regression target of D; STF replaces this with a reference-batch average."""
    return batch["image"]

  def loss(self, params, aux, batch, key, step):
    y = batch["image"]
    k_sigma, k_noise, k_drop, k_target = jax.random.split(key, 4)
    sigma = self.noise_sampler(k_sigma, (y.shape[0],), y.dtype)
    noise = jax.random.normal(k_noise, y.shape, y.dtype)
    sigma_b = sigma.reshape((-1,) + (1,) * (y.ndim - 1))
    x_noisy = y + sigma_b * noise
    labels = base.one_hot_labels(batch, self.num_classes, y.dtype)
    target = jax.lax.stop_gradient(self.target(x_noisy, sigma, batch, aux, k_target))
    denoised = self.denoise(params, x_noisy, sigma, labels, train=True, dropout_key=k_drop)
    weight = diffusion.edm_loss_weight(sigma, self.sigma_data)
    per_sample = weight * base.per_sample_sum((denoised - target) ** 2)
    loss = jnp.mean(per_sample)
    return loss, {"per_sample_loss": per_sample, "sigma": sigma}

  def denoiser(self, params, class_labels=None):
    def fn(x, sigma):
      return self.denoise(params, x, sigma, class_labels)
    return fn
