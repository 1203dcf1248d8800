"""The loss core every consistency method shares (docs/consistency.md).

A pair of noise levels t > r and one shared noise direction give a student point
x_t and a teacher point x_r; the loss is

    lambda(t, r) * d(f_theta(x_t, t), stopgrad f_teacher(x_r, r)),

with the student and teacher calls under the *same dropout key*
(docs/implementation.md#shared-dropout-key). What a method supplies is small and is a
hook here: how it draws (t, r) (`sample_times`, with its schedule), whose
weights teach, and three refinements of ECT/SCT:

  clean_boundary   at r = 0 (or at the phase's lower edge) the teacher call is
                   replaced by the boundary point itself (ECT: the clean image);
  x0_hat           SCT's posterior-mean estimate, which moves the teacher point
                   to one Euler step of the PF-ODE;
  phase_edge       SCT's phased training: the student maps to its phase's edge.

Parameterisation (docs/consistency.md#parameterisation-and-boundary-condition): training uses
`settings.train_precond` (the CM boundary at sigma_min, or EDM's coefficients);
sampling always uses the CM boundary form at `settings.sample_sigma_min`.

Numerics: with r = t and the shared dropout key the student and teacher calls
are the same function of the same inputs, so executed op by op their
difference is exactly 0 (tested). Inside one jitted step XLA may fuse the two
calls differently (FMA contraction), which leaves differences of a few ulps.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from jaxdiff import diffusion, sampling
from jaxdiff.objectives import base
from jaxdiff.objectives.consistency.math import consistency_weight, pseudo_huber
from jaxdiff.objectives.consistency.settings import Settings


@flax.struct.dataclass
class GuidedParams:
  """Sampling parameters with a weaker model for guidance (an earlier EMA snapshot)."""
  model: Any
  guide: Any


class ConsistencyCore:
  """Student/teacher points, distance, weighting and sampling forms of the family."""

  # What the network's noise embedding gets (diffusion.denoise): ln(sigma)/4; ACT may
  # feed the raw sigma.
  noise_label = "log"
  # ECT/SCT: the teacher at r <= its floor (0, or the phase edge) is the boundary point.
  clean_boundary = False

  def __init__(self, settings: Settings, apply_fn: base.ApplyFn,
               noise_sampler: base.NoiseSampler, *, example_shape, sigma_data: float = 0.5,
               num_classes: int = 0, lpips_params=None):
    self.settings = settings
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.example_shape = tuple(example_shape)
    self.sigma_data = float(sigma_data)
    self.num_classes = int(num_classes)
    # LPIPS-VGG16 weights (metric 'lpips'), loaded once; constants of the jitted step.
    self.lpips_params = None
    if settings.metric == "lpips":
      if lpips_params is None:
        from jaxdiff.objectives import lpips as lpips_lib
        lpips_params = lpips_lib.load_params(settings.lpips_weights)
      self.lpips_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), lpips_params)

  # ---------------------------------------------------------------- method hooks

  def sample_times(self, key, batch: int, step, dtype):
    """(t, r, schedule values) of a step: student and teacher noise levels, both [batch]."""
    raise NotImplementedError

  def x0_hat(self, x_t, t, batch, key=None):
    """The clean-image estimate the teacher point is built from; None: the clean image."""
    return None

  def phase_edge(self, t):
    """The lower edge of t's phase (phased training); None: one phase down to the data."""
    return None

  def boundary_target(self, x0, eps, t, floor, x_r):
    """The target where r reaches its floor (with `clean_boundary`): the teacher point."""
    return x_r

  # ---------------------------------------------------------------- networks

  def training_fn(self, params, x, t, labels=None, dropout_key=None, edge=None, train=True):
    """f in training form: the train-precond denoiser, mapped to `edge` if phased.

    Phased (docs/sct.md#phased-training): f(x, t) = D + (s/t)(x - D), the
    DDIM/Euler jump to the phase's lower edge s with the network's x0 prediction D.
    """
    d = diffusion.denoise(self.apply_fn, params, x, t, sigma_data=self.sigma_data,
                          class_labels=labels, train=train, dropout_key=dropout_key,
                          precond=self.settings.train_precond, sigma_min=self.settings.sigma_min,
                          noise_label=self.noise_label)
    if edge is None:
      return d
    ratio = base.expand_to(edge / t, x)
    return d + ratio * (x - d)

  def consistency_fn(self, params, class_labels=None):
    """x, sigma -> f(x, sigma) in sampling form (CM boundary at sample_sigma_min)."""
    s = self.settings

    def f(x, sigma):
      return diffusion.denoise(self.apply_fn, params, x, sigma, sigma_data=self.sigma_data,
                               class_labels=class_labels, precond="cm",
                               sigma_min=s.sample_sigma_min, noise_label=self.noise_label)
    return f

  # ---------------------------------------------------------------- grid pairs

  def restricted_pair_index(self, key, shape, grid, probs):
    """Pair index i ~ probs over an ascending grid, restricted to pairs whose upper level
    lies in an enabled curriculum cluster of the noise sampler."""
    if self.noise_sampler.mask is not None and not all(self.noise_sampler.mask):
      masked = jnp.where(self.noise_sampler.in_enabled_clusters(grid[1:]), probs, 0)
      # Early in CT/iCT the grid is coarse: with no pair inside the enabled clusters,
      # fall back to all pairs rather than dividing by zero.
      probs = jnp.where(jnp.sum(masked) > 0, masked, probs)
    return jax.random.categorical(key, jnp.log(probs), shape=shape)

  def restricted_pair(self, key, shape, grid, probs, dtype):
    """(t, r) = (grid[i+1], grid[i]) with i from `restricted_pair_index`."""
    index = self.restricted_pair_index(key, shape, grid, probs)
    return grid[index + 1].astype(dtype), grid[index].astype(dtype)

  # ---------------------------------------------------------------- the loss core

  @staticmethod
  def teacher_point(x0, eps, t, r, x0_hat=None):
    """x_r: ECT's x0 + r eps, or SCT's Euler step x0_hat + r (eps + (x0 - x0_hat)/t).

    The SCT form equals x0_hat + r (x_t - x0_hat)/t with x_t = x0 + t eps, and is
    exactly ECT's point when x0_hat == x0.
    """
    if x0_hat is None:
      return x0 + base.expand_to(r, x0) * eps
    eps_hat = eps + (x0 - x0_hat) / base.expand_to(t, x0)
    return x0_hat + base.expand_to(r, x0) * eps_hat

  def distance(self, delta):
    """Per-sample d(.) of a metric of the difference alone (l1, l2, pseudo_huber), [B]."""
    m = self.settings.metric
    if m == "lpips":
      raise ValueError("LPIPS needs both images: use per_sample_distance(student, target).")
    flat = delta.reshape(delta.shape[0], -1)
    if m == "l1":
      return jnp.mean(jnp.abs(flat), axis=-1)
    if m == "l2":
      return jnp.mean(jnp.square(flat), axis=-1)
    return pseudo_huber(delta, self.settings.huber_c)

  def per_sample_distance(self, student, target):
    """d(student, target) of the configured metric, per sample ([B]).

    LPIPS (CT, ACT): both images, NHWC in [-1, 1], bilinearly resized to
    `lpips_resolution`, through LPIPS-VGG16 v0.1 in float32 (objectives/lpips.py).
    """
    s = self.settings
    if s.metric == "lpips":
      from jaxdiff.objectives import lpips as lpips_lib
      return lpips_lib.lpips_distance(self.lpips_params, student, target,
                                      resize=s.lpips_resolution or None)
    return self.distance(student - target)

  def terms(self, params, teacher_params, batch, key, step, teacher_dropout_key=None):
    """Everything of one step's loss, per sample; `loss` averages `per_sample_loss`.

    `teacher_params` are the teacher's weights (the student's own, or an EMA);
    the teacher output is under stop_gradient, so no gradient reaches them.
    `teacher_dropout_key` (tests only) overrides the shared dropout key of the
    teacher call.
    """
    x0 = batch["image"]
    dtype = x0.dtype
    k_time, k_noise, k_drop, k_ref = jax.random.split(key, 4)
    t, r, sched = self.sample_times(k_time, x0.shape[0], step, dtype)
    eps = jax.random.normal(k_noise, x0.shape, dtype)
    x_t = x0 + base.expand_to(t, x0) * eps
    labels = base.one_hot_labels(batch, self.num_classes, dtype)
    x_r = self.teacher_point(x0, eps, t, r, self.x0_hat(x_t, t, batch, k_ref))
    edge = self.phase_edge(t)
    student = self.training_fn(params, x_t, t, labels, k_drop, edge=edge)
    teacher_key = k_drop if teacher_dropout_key is None else teacher_dropout_key
    if self.clean_boundary:
      # Never call the teacher at sigma <= its floor (ln 0 in c_noise at r = 0);
      # there the target is the boundary point itself.
      floor = edge if edge is not None else jnp.zeros_like(r)
      at_boundary = r <= floor
      r_safe = jnp.where(at_boundary, jnp.ones_like(r), r)
      f_r = self.training_fn(teacher_params, x_r, r_safe, labels, teacher_key, edge=edge)
      f_r = jnp.nan_to_num(jax.lax.stop_gradient(f_r))
      target = jnp.where(base.expand_to(at_boundary, x0) > 0,
                         self.boundary_target(x0, eps, t, floor, x_r), f_r)
    else:
      target = jax.lax.stop_gradient(
          self.training_fn(teacher_params, x_r, r, labels, teacher_key))
    target = jax.lax.stop_gradient(target)
    dist = self.per_sample_distance(student, target)
    weight = consistency_weight(t, r, self.settings.weighting, self.sigma_data).astype(dtype)
    out = {"per_sample_loss": dist * weight, "sigma": t, "r": r, "x_t": x_t, "x_r": x_r,
           "delta": student - target, "student": student, "target": target, "eps": eps}
    out.update(sched)
    return out

  # ---------------------------------------------------------------- sampling

  sampler_draws_noise = True

  def guided_fn(self, params, make_fn: Callable, labels):
    """make_fn(params, labels) -> g(x, t); returns g guided by the weaker model if configured."""
    s = self.settings
    guide, model = None, params
    if isinstance(params, GuidedParams):
      model, guide = params.model, params.guide
    good = make_fn(model, labels)
    w = s.guidance_scale
    if s.guidance == "none" or w == 1.0:
      return good
    if s.guidance == "uncond":
      bad = make_fn(model, None)  # zero labels: the label-dropout branch
    else:
      if guide is None:
        raise ValueError("guidance='ema_snapshot' needs the snapshot: sample through "
                         "`sampling_params(params, state.aux)`.")
      bad = make_fn(guide, labels)

    def g(x, t):
      fb = bad(x, t)
      return fb + w * (good(x, t) - fb)
    return g

  def sample(self, params, latents, labels, key, sample_config):
    """One- or multistep consistency sampling at `sample_config.consistency_sigmas`."""
    sigmas = jnp.asarray(tuple(float(v) for v in sample_config.consistency_sigmas),
                         latents.dtype)
    fn = self.guided_fn(params, self.consistency_fn, labels)
    return sampling.consistency_sampler(fn, latents, sigmas, key=key)
