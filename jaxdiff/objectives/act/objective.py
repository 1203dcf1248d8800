"""ACT: Adversarial Consistency Training (Kong et al., CVPR 2024, arXiv 2311.14097).

Official code kong13661/ACT (`train_cifar10.py`, `train_imagenet64.py`,
`models/consistency_wrapper.py`); docs/act.md. Consistency training (the shared
consistency core on ACT's grid schedule, with an EMA teacher) plus a
time-conditioned discriminator:

  generator      (1 - lambda(t_j)) d(f(x + t_j z, t_j), clip(f_ema(x + t_{j-1} z, t_{j-1})))
                 + lambda(t_j) softplus(-D(A(f(x + t_j z, t_j)), t_j))
  discriminator  lam0 [ w(t_f) softplus(D(A(sg f(x_f + t_f z', t_f)), t_f))
                        + w(t_r) softplus(-D(A(x_r), t_r)) + R1 ]
  R1             (gamma/2) w(t_r) ||grad_{A(x_r)} D(A(x_r), t_r)||^2, only every
                 `r1_interval` steps (not multiplied by the interval)
  ADA            p moves with the EMA of R1 against a threshold (`ada_update`)
  teacher        theta_ema <- mu(k) theta_ema + (1 - mu(k)) theta; also the sampling model

j ~ U{1..N(k)-1} indexes the Karras grid of N(k) levels; the teacher sits one
grid step below. x_f, x_r and the generator's x are three different sets of
real images: the trainer's minibatch feeds the generator, and the objective
asks the pipeline for `batch_size` more (`reference_draws`), split in halves
for the fakes and the reals, as the official loader's doubled batch.

One jitted update holds everything: the trainer differentiates `loss` (the
generator; the discriminator's parameters are constants there), applies the
generator optimizer and EMA, then `after_update` runs the discriminator step
with its own optax optimizer, the ADA update and the teacher EMA. All of it
(discriminator parameters and optimizer state, p, the R1 EMA, the teacher)
lives in the train state's `aux`, so it is checkpointed and sharded with the
rest. The R1 step and the plain step are the objective's two static
`step_variants`: two compiled executables over a run, never more.

ACT composes the consistency core (`ACTConsistency`, the core with ACT's time
sampler) rather than being a consistency objective: its loss, its state and its
sampling weights are its own.

Deviations, all configurable: the consistency distance is the paper's LPIPS
only when the user supplies converted VGG16 weights (`consistency.metric=lpips`,
`consistency.lpips_weights`, see `objectives/lpips.py`); by default it is
pseudo-Huber with iCT's c (jaxdiff never downloads weights; a warning says so at
start); the generator is jaxdiff's SongUNet rather than diffusers' UNet2DModel. The
augmentation is StyleGAN2-ADA's bgc pipeline, as official (`augment.py`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import logging

from jaxdiff import optim, parallel
from jaxdiff.objectives import base
from jaxdiff.objectives.act import augment, settings as act_settings
from jaxdiff.objectives.act.math import act_schedule, act_time_weight, ada_update
from jaxdiff.objectives.consistency import settings as consistency_settings
from jaxdiff.objectives.consistency.core import ConsistencyCore
from jaxdiff.objectives.consistency.math import karras_grid_ascending
from jaxdiff.objectives.registry import register

# ACT's "auto" defaults of the shared consistency keys: CT's boundary and grid, uniform
# weight; pseudo-Huber with iCT's c stands in for LPIPS (weights must come from a file).
AUTO = consistency_settings.AutoDefaults(train_precond="cm", sample_sigma_min=None,
                                         metric="pseudo_huber", weighting="uniform",
                                         huber_c="ict")


def r1_penalty(grad_real: jax.Array, weight, gamma: float) -> jax.Array:
  """(gamma/2) mean_b(w_b ||grad_b||^2), the official `r1_panelty` (sum over pixels)."""
  sq = jnp.sum(jnp.square(grad_real.reshape(grad_real.shape[0], -1)), axis=1)
  return 0.5 * gamma * jnp.mean(weight * sq)


def discriminator_loss(fake_logits, real_logits, fake_weight, real_weight, r1, lam0: float):
  """lam0 (mean(w_f softplus(D_fake)) + mean(w_r softplus(-D_real)) + R1)."""
  fake = jnp.mean(fake_weight * jax.nn.softplus(fake_logits))
  real = jnp.mean(real_weight * jax.nn.softplus(-real_logits))
  return lam0 * (fake + real + r1), (fake, real)


def generator_loss(consistency, adversarial, lam):
  """Per sample (1 - lambda) L_CT + lambda L_G (the official `torch.lerp`)."""
  return consistency + lam * (adversarial - consistency)


class ACTConsistency(ConsistencyCore):
  """The consistency core on ACT's schedule: a Karras grid of N(k) bins, j ~ U{1..N-1}."""

  def __init__(self, settings, apply_fn, noise_sampler, *, n_min: int, n_max: int, mu0: float,
               noise_label: str, **kw):
    super().__init__(settings, apply_fn, noise_sampler, **kw)
    self.n_min, self.n_max, self.mu0 = int(n_min), int(n_max), float(mu0)
    self.noise_label = noise_label

  def schedule(self, step, offset: float = 0.0):
    """N(k) and mu(k) at progress (step + offset) / K.

    The official code reads both from Lightning's global_step, which counts the
    two optimizer steps of an iteration: the generator step of iteration k sees
    progress k/K (offset 0), the discriminator step (k + 1/2)/K (offset 0.5) and
    the EMA after the iteration (k + 1)/K (offset 1). The offsets reproduce that.
    """
    progress = (jnp.asarray(step, jnp.float32) + offset) / self.settings.schedule_steps
    num_bins, mu = act_schedule(jnp.minimum(progress, 1.0), self.n_min, self.n_max, self.mu0)
    return {"num_scales": num_bins, "target_ema": mu}

  def sample_index(self, key, batch: int, num_bins, dtype):
    """(j, t_j, t_{j-1}): j ~ U{1..N-1} (restricted to the curriculum's clusters)."""
    s = self.settings
    size = self.n_max
    grid = karras_grid_ascending(num_bins, s.sigma_min, s.sigma_max, s.rho, size=size,
                                 dtype=jnp.float32)
    valid = jnp.arange(size - 1) < num_bins - 1
    probs = jnp.where(valid, 1.0, 0.0) / (num_bins - 1).astype(jnp.float32)
    i = self.restricted_pair_index(key, (batch,), grid, probs)
    return i + 1, grid[i + 1].astype(dtype), grid[i].astype(dtype)

  def sample_times(self, key, batch, step, dtype):
    sched = self.schedule(step)
    j, t, r = self.sample_index(key, batch, sched["num_scales"], dtype)
    return t, r, dict(sched, index=j)


@register("act")
class ACTObjective(base.Objective):
  """CT with an adversarial term; see the module docstring."""

  sampler_draws_noise = True

  def __init__(self, settings, apply_fn, noise_sampler, *, act_config, discriminator,
               example_shape, seed: int, rng_impl: str, sigma_data: float = 0.5,
               num_classes: int = 0, batch_size: int = 1):
    a = act_config
    self.consistency = ACTConsistency(
        settings, apply_fn, noise_sampler, n_min=a.n_min, n_max=a.n_max, mu0=a.mu0,
        noise_label=a.noise_label, example_shape=example_shape, sigma_data=sigma_data,
        num_classes=num_classes)
    # ACT's time sampler and schedule, and the generator's training form.
    self.schedule = self.consistency.schedule
    self.sample_index = self.consistency.sample_index
    self.sample_times = self.consistency.sample_times
    self.training_fn = self.consistency.training_fn
    self.noise_sampler = noise_sampler
    self.example_shape = tuple(example_shape)
    self.num_classes = int(num_classes)
    self.batch_size = int(batch_size)
    self.noise_label = a.noise_label
    self.lam0, self.w_mid = float(a.lam0), float(a.w_mid)
    self.r1_gamma, self.r1_interval = float(a.r1_gamma), int(a.r1_interval)
    self.ada_threshold, self.ada_length = float(a.ada_threshold), float(a.ada_length)
    self.ada_ema = float(a.ada_ema)
    self.augmentations = tuple(a.augment)
    self.sample_with = a.sample_with
    self.disc = discriminator
    self.d_tx = optax.radam(float(a.d_lr), b1=float(a.d_b1), b2=float(a.d_b2))
    self.seed = int(seed)
    self.rng_impl = rng_impl
    # The R1 step and the plain step: two static variants, one compilation each.
    self.step_variants = (False, True) if self.r1_gamma > 0 else (False,)

  # ---------------------------------------------------------------- config

  # The consistency core's shared keys (grid, distance, weighting) and ACT's own.
  config_keys = {**consistency_settings.CONFIG, **act_settings.CONFIG}

  @classmethod
  def validate_config(cls, config, num_devices=None):
    consistency_settings.resolve_settings(config, consistency_settings.example_shape_of(config),
                                          AUTO)
    consistency_settings.refuse_phases(config, cls.name)
    act_settings.validate_act_config(config, num_devices)

  @classmethod
  def from_config(cls, config, apply_fn, example_shape, noise_sampler, mesh=None):
    from jaxdiff.models.discriminator import build_discriminator
    settings = consistency_settings.resolve_settings(config, example_shape, AUTO)
    if settings.metric != "lpips":
      logging.warning("ACT: consistency distance %s (c=%g) instead of the paper's LPIPS, which "
                      "needs VGG weights jaxdiff does not download (a deviation).",
                      settings.metric, settings.huber_c)
    disc = build_discriminator(config.act, image_shape=example_shape,
                               num_classes=config.data.num_classes, dtype=config.model.dtype)
    return cls(settings, apply_fn, noise_sampler, act_config=config.act, discriminator=disc,
               example_shape=example_shape, seed=config.seed, rng_impl=config.rng_impl,
               sigma_data=config.objective.sigma_data, num_classes=config.data.num_classes,
               batch_size=config.data.batch_size)

  # The discriminator's real and fake images: `batch_size` more examples a step.
  @property
  def reference_draws(self) -> int:
    return self.batch_size

  def variant_for_step(self, step: int) -> bool:
    return self.r1_gamma > 0 and step % self.r1_interval == 0

  def gan_weight(self, j, num_bins):
    """w(t_j): 1 (w_mid = 0, CIFAR-10) or ACT's power law over the bin index."""
    if self.w_mid <= 0:
      return jnp.ones(jnp.shape(j), jnp.float32)
    return act_time_weight(j, num_bins, self.lam0, self.w_mid).astype(jnp.float32)

  # ---------------------------------------------------------------- networks

  def discriminate(self, disc_params, x, t, labels=None):
    time = t if self.noise_label == "sigma" else jnp.log(t) / 4
    return self.disc.apply({"params": disc_params}, x, time, labels).astype(jnp.float32)

  def augment(self, key, x, p):
    return augment.augment(key, x, p, self.augmentations)

  # ---------------------------------------------------------------- generator

  def loss(self, params, aux, batch, key, step):
    out = self.consistency.terms(params, aux["teacher"], batch, key, step)
    t, j, num_bins = out["sigma"], out["index"], out["num_scales"]
    student = out["student"]
    # Only the teacher's output is clipped to the data range (official).
    target = jnp.clip(out["target"], -1.0, 1.0)
    consistency = self.consistency.per_sample_distance(student, target).astype(jnp.float32)
    metrics = {"act/consistency": jnp.mean(consistency), "act/num_bins": num_bins,
               "act/ema_decay": out["target_ema"], "act/aug_p": aux["p"],
               "act/r1_ema": aux["r1_ema"]}
    if self.lam0 == 0:
      # The official code skips the discriminator when gan_ratio = 0: plain CT.
      per_sample = consistency
    else:
      lam = self.lam0 * self.gan_weight(j, num_bins)
      labels = base.one_hot_labels(batch, self.num_classes, student.dtype)
      fake = self.augment(jax.random.fold_in(key, 1), student, aux["p"])
      adversarial = jax.nn.softplus(-self.discriminate(aux["disc"], fake, t, labels))
      per_sample = generator_loss(consistency, adversarial, lam)
      metrics.update({"act/g_adversarial": jnp.mean(adversarial), "act/lambda": jnp.mean(lam)})
    metrics.update({"per_sample_loss": per_sample, "sigma": t})
    return jnp.mean(per_sample), metrics

  # ---------------------------------------------------------------- aux state

  def init_aux(self, params):
    key = jax.random.fold_in(jax.random.key(self.seed, impl=self.rng_impl), 3)
    h, w, c = self.example_shape
    labels = jnp.zeros((1, self.num_classes), jnp.float32) if self.num_classes else None
    variables = self.disc.init(key, jnp.zeros((1, h, w, c), jnp.float32), jnp.ones((1,)), labels)
    disc = nn.meta.unbox(variables["params"])
    return {"teacher": jax.tree.map(jnp.copy, params), "disc": disc,
            "disc_opt": self.d_tx.init(disc), "p": jnp.zeros((), jnp.float32),
            "r1_ema": jnp.asarray(self.ada_threshold, jnp.float32),
            "r1_last": jnp.zeros((), jnp.float32)}

  def after_update(self, aux, params, batch, key, step, variant=None):
    """Discriminator step (R1 and ADA when `variant`), then the teacher EMA."""
    aux = dict(aux)
    mu = self.schedule(step, 1.0)["target_ema"]
    teacher = jax.tree.map(lambda a, p: (a * mu + p * (1 - mu)).astype(a.dtype),
                           aux["teacher"], params)
    if self.lam0 == 0:
      # The discriminator's loss is lam0 * (...) = 0: its gradients are zero and RAdam
      # leaves it unchanged, as in the official code, so the step is skipped.
      return dict(aux, teacher=teacher), {}
    aux, metrics = self.discriminator_step(aux, params, batch, key, step, with_r1=bool(variant))
    aux["teacher"] = teacher
    return aux, metrics

  def _discriminator_inputs(self, params, aux, batch, key, num_bins):
    """Augmented fakes (from the updated generator, no gradient) and reals, their labels,
    noise levels and GAN weights: the official loader's doubled batch, split in halves."""
    reals = batch["reference"]
    half = reals.shape[0] // 2
    x_fake_src, x_real = reals[:half], reals[half:]
    labels = base.one_hot_labels({"label": batch["reference_label"]}, self.num_classes,
                                 reals.dtype) if "reference_label" in batch else None
    labels_fake = labels[:half] if labels is not None else None
    labels_real = labels[half:] if labels is not None else None
    if self.mesh is not None:
      # Keep both halves spread over every device (the slice would otherwise sit on half).
      shard = parallel.batch_sharding(self.mesh, reals.ndim)
      x_fake_src = jax.lax.with_sharding_constraint(x_fake_src, shard)
      x_real = jax.lax.with_sharding_constraint(x_real, shard)
    k_tf, k_tr, k_noise, k_drop, k_aug_f, k_aug_r = jax.random.split(key, 6)
    j_f, t_f, _ = self.sample_index(k_tf, half, num_bins, reals.dtype)
    j_r, t_r, _ = self.sample_index(k_tr, reals.shape[0] - half, num_bins, reals.dtype)
    z = jax.random.normal(k_noise, x_fake_src.shape, reals.dtype)
    x_t = x_fake_src + t_f.reshape(-1, 1, 1, 1) * z
    # Fakes from the online generator after its update, under no gradient (official).
    fake = jax.lax.stop_gradient(self.training_fn(params, x_t, t_f, labels_fake, k_drop))
    fake = jax.lax.stop_gradient(self.augment(k_aug_f, fake, aux["p"]))
    real = self.augment(k_aug_r, x_real, aux["p"])  # R1 differentiates w.r.t. this input
    w_f, w_r = self.gan_weight(j_f, num_bins), self.gan_weight(j_r, num_bins)
    return (fake, t_f, labels_fake, w_f), (real, t_r, labels_real, w_r)

  def discriminator_step(self, aux, params, batch, key, step, with_r1: bool):
    num_bins = self.schedule(step, 0.5)["num_scales"]
    (fake, t_f, labels_fake, w_f), (real, t_r, labels_real, w_r) = self._discriminator_inputs(
        params, aux, batch, key, num_bins)

    def d_loss(disc_params):
      fake_logits = self.discriminate(disc_params, fake, t_f, labels_fake)
      if with_r1:
        real_logits, pullback = jax.vjp(
            lambda x: self.discriminate(disc_params, x, t_r, labels_real), real)
        (grad_real,) = pullback(jnp.ones_like(real_logits))
        r1 = r1_penalty(grad_real, w_r, self.r1_gamma)
      else:
        real_logits = self.discriminate(disc_params, real, t_r, labels_real)
        r1 = jnp.zeros((), jnp.float32)
      total, (fake_term, real_term) = discriminator_loss(fake_logits, real_logits, w_f, w_r,
                                                         r1, self.lam0)
      return total, {"act/d_loss": total, "act/d_fake": fake_term, "act/d_real": real_term,
                     "act/r1": r1, "act/d_real_logit": jnp.mean(real_logits),
                     "act/d_fake_logit": jnp.mean(fake_logits)}

    (_, metrics), grads = jax.value_and_grad(d_loss, has_aux=True)(aux["disc"])
    finite = optim.all_finite(grads)

    def d_update():
      updates, disc_opt = self.d_tx.update(grads, aux["disc_opt"], aux["disc"])
      return (optax.apply_updates(aux["disc"], updates), disc_opt), {}

    (aux["disc"], aux["disc_opt"]), _ = optim.update_if(finite, d_update,
                                                        (aux["disc"], aux["disc_opt"]))
    metrics["act/d_nonfinite"] = (~finite).astype(jnp.int32)
    # R1 exists only on its steps; log the latest value every step (0 before the first).
    metrics["act/r1"] = metrics["act/r1"] if with_r1 else aux["r1_last"]
    if with_r1:
      aux["r1_last"] = jnp.where(finite, metrics["act/r1"], aux["r1_last"])
      p, r1_ema = ada_update(aux["p"], aux["r1_ema"], metrics["act/r1"], self.ada_threshold,
                             2 * self.batch_size, self.r1_interval, self.ada_length, self.ada_ema)
      aux["p"], aux["r1_ema"] = jnp.where(finite, p, aux["p"]), jnp.where(finite, r1_ema,
                                                                           aux["r1_ema"])
    return aux, metrics

  # ---------------------------------------------------------------- sampling

  def sampling_params(self, params, aux):
    """The mu(k) EMA teacher (official: the same EMA teaches and samples), or the trainer's."""
    if self.sample_with == "teacher" and aux and "teacher" in aux:
      return aux["teacher"]
    return params

  def sample(self, params, latents, labels, key, sample_config):
    return self.consistency.sample(params, latents, labels, key, sample_config)
