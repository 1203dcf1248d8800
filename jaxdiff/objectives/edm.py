"""EDM denoising score matching (Karras et al. 2022, arXiv 2206.00364; docs/edm.md).

ln sigma ~ N(P_mean, P_std^2); loss lambda(sigma) * ||D(y + sigma n; sigma) - y||^2
with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, summed over pixels
and averaged over the batch, as EDM's training loop does. Samples come from EDM's
Heun sampler on the preconditioned denoiser D. `objective.formulation = vp | ve`
trains EDM's VP or VE baseline instead (objectives/formulations.py).

With `augment.p > 0` the clean batch goes through EDM's non-leaky augmentation pipeline
first (jaxdiff/augment, docs/augment.md): noise is added to the augmented image, the
loss regresses onto it, and the network sees the augmentation labels (`model.augment_dim`
inputs); sampling passes none, so the augmentations do not leak into the samples.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import augment as augment_lib
from jaxdiff import diffusion, models, sampling
from jaxdiff.errors import ConfigError
from jaxdiff.objectives import base, formulations
from jaxdiff.objectives.registry import register


# The `augment` config section: NVlabs/edm train.py's AugmentPipe multipliers (each
# transform eligible with probability multiplier * p) and p, 0 = off (docs/augment.md).
CONFIG = {
    # EDM2's loss (docs/edm2.md#loss): each pixel's weighted error divided by exp(u(sigma)),
    # plus u(sigma), u the network's learned log variance (Karras et al. 2024, Eq. 21).
    "objective": dict(learned_uncertainty=False),
    "augment": dict(
    p=0.0,               # EDM's CIFAR-10 recipe: 0.12 (--augment)
    xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0, aniso=1.0, translate_frac=1.0,
    margin="batch",      # "batch": the official batch-wide padding margin; "max": per image
)}


def augment_config(config) -> augment_lib.AugmentConfig | None:
  """The pipeline of `config.augment`, None when p = 0."""
  a = config.augment
  if not a.p:
    return None
  return augment_lib.AugmentConfig(
      p=float(a.p), xflip=float(a.xflip), yflip=float(a.yflip), scale=float(a.scale),
      rotate_frac=float(a.rotate_frac), aniso=float(a.aniso),
      translate_frac=float(a.translate_frac), margin=str(a.margin))


@register("edm")
class EDMObjective(base.Objective):
  formulations = formulations.FORMULATIONS
  config_keys = CONFIG
  augments = True

  def __init__(self, apply_fn: base.ApplyFn, noise_sampler: base.NoiseSampler,
               sigma_data: float = 0.5, num_classes: int = 0, formulation: str = "edm",
               augment: augment_lib.AugmentConfig | None = None,
               learned_uncertainty: bool = False):
    if learned_uncertainty and getattr(apply_fn, "log_variance", None) is None:
      raise ConfigError("config.objective.learned_uncertainty=True needs a network with a "
                        f"log-variance head (model.name in {models.LOSS_UNCERTAINTY_MODELS}); "
                        "set --config.objective.learned_uncertainty=False.")
    self.learned_uncertainty = learned_uncertainty
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.sigma_data = sigma_data
    self.num_classes = num_classes
    self.formulation = formulation
    self.augment = augment

  @classmethod
  def validate_config(cls, config, num_devices=None):
    try:
      pipe = augment_config(config)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.augment: {e}") from None
    dim = pipe.label_dim if pipe else 0
    if pipe and int(config.model.augment_dim) != dim:
      raise ConfigError(
          f"config.augment.p={config.augment.p} feeds {dim} augmentation labels to the network, "
          f"but config.model.augment_dim={config.model.augment_dim}; set "
          f"--config.model.augment_dim={dim} (EDM's CIFAR-10: 9) or --config.augment.p=0.")
    if config.objective.learned_uncertainty:
      if config.model.name not in models.LOSS_UNCERTAINTY_MODELS:
        raise ConfigError(
            f"config.objective.learned_uncertainty=True needs a network with a log-variance "
            f"head (model.name in {models.LOSS_UNCERTAINTY_MODELS}), not "
            f"model.name={config.model.name!r}; set "
            "--config.objective.learned_uncertainty=False.")
      if config.objective.formulation != "edm":
        raise ConfigError(
            "config.objective.learned_uncertainty=True weights EDM's loss (EDM2); set "
            f"--config.objective.formulation=edm (got {config.objective.formulation!r}).")

  @classmethod
  def noise_sampler(cls, config):
    return formulations.noise_sampler(config.objective.formulation,
                                      float(config.objective.p_mean),
                                      float(config.objective.p_std))

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    return cls(apply_fn, noise_sampler, sigma_data=config.objective.sigma_data,
               num_classes=config.data.num_classes, formulation=config.objective.formulation,
               augment=augment_config(config),
               learned_uncertainty=bool(config.objective.learned_uncertainty))

  def augment_batch(self, key, batch):
    """(batch with augmented images, their labels). Reference draws, where an objective has
    them (STF), are augmented independently, as the official STF code does
    (docs/stf.md#reference-set-construction); their labels are not used."""
    k_image, k_reference = jax.random.split(key)
    out = dict(batch)
    draws = augment_lib.sample_augment_params(k_image, batch["image"].shape[0], self.augment)
    out["image"], labels = augment_lib.apply_augment(batch["image"], draws)
    if "reference" in batch:
      draws = augment_lib.sample_augment_params(k_reference, batch["reference"].shape[0],
                                                self.augment)
      out["reference"], _ = augment_lib.apply_augment(batch["reference"], draws)
    return out, labels

  def denoise(self, params, x, sigma, class_labels=None, train=False, dropout_key=None,
              augment_labels=None):
    return diffusion.denoise(self.apply_fn, params, x, sigma, sigma_data=self.sigma_data,
                             class_labels=class_labels, augment_labels=augment_labels,
                             train=train, dropout_key=dropout_key, precond=self.formulation)

  def target(self, x_noisy, sigma, batch, aux, key):
    """The regression target of D; STF replaces this with a reference-batch average."""
    return batch["image"]

  def loss(self, params, aux, batch, key, step):
    k_sigma, k_noise, k_drop, k_target = jax.random.split(key, 4)
    augment_labels = None
    if self.augment is not None:  # static; its own key keeps the other draws unchanged
      batch, augment_labels = self.augment_batch(jax.random.fold_in(key, 0xA06), batch)
    y = batch["image"]
    sigma = self.noise_sampler(k_sigma, (y.shape[0],), y.dtype)
    noise = jax.random.normal(k_noise, y.shape, y.dtype)
    x_noisy = y + base.expand_to(sigma, y) * noise
    labels = base.one_hot_labels(batch, self.num_classes, y.dtype)
    target = jax.lax.stop_gradient(self.target(x_noisy, sigma, batch, aux, k_target))
    denoised = self.denoise(params, x_noisy, sigma, labels, train=True, dropout_key=k_drop,
                            augment_labels=augment_labels)
    weight = formulations.loss_weight(self.formulation, sigma, self.sigma_data)
    per_sample = weight * base.per_sample_sum((denoised - target) ** 2)
    metrics = {"per_sample_loss": per_sample, "sigma": sigma}
    if self.learned_uncertainty:  # EDM2 Eq. 21, summed over pixels as its training loop does
      logvar = self.apply_fn.log_variance(params, diffusion.edm_precond(sigma)[3])
      pixels = y[0].size
      objective = per_sample / jnp.exp(logvar) + pixels * logvar
      metrics["logvar"] = jnp.mean(logvar)
      return jnp.mean(objective), metrics
    return jnp.mean(per_sample), metrics

  def probe_loss(self, params, x0, noise, level, labels=None):
    """The weighted denoising loss at given noise and sigma = `level` [B]: lambda(sigma)
    ||D(x0 + sigma n; sigma) - x0||^2 summed over pixels (the contract in base.py; with
    `learned_uncertainty`, the weighted error without the uncertainty terms)."""
    sigma = jnp.asarray(level, x0.dtype)
    denoised = self.denoise(params, x0 + base.expand_to(sigma, x0) * noise, sigma, labels)
    weight = formulations.loss_weight(self.formulation, sigma, self.sigma_data)
    # Squared after the reshape, as the study's EDM probe always was: the same program, so
    # the same float32 values (the order of these ops moves results by an ulp).
    return weight * jnp.sum((denoised - x0).reshape(x0.shape[0], -1) ** 2, axis=1)

  def __init_subclass__(cls, **kwargs):
    # A method that regresses onto another target (STF's reference-batch average) does not
    # train with `probe_loss`'s loss: it has none unless it defines its own.
    super().__init_subclass__(**kwargs)
    if "target" in vars(cls) and "probe_loss" not in vars(cls):
      cls.probe_loss = None

  def denoiser(self, params, class_labels=None):
    """x, sigma -> D(x; sigma), the function EDM's sampler integrates."""
    def fn(x, sigma):
      return self.denoise(params, x, sigma, class_labels)
    return fn

  def sample(self, params, latents, labels, key, sample_config):
    s = sample_config
    return sampling.edm_sampler(self.denoiser(params, labels), latents, num_steps=s.num_steps,
                                sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)
