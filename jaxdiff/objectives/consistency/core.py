"""Consistency training from data: CT, iCT, ECT and SCT (spec §1.5, §2, §4).

* CT   Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023; official
       JAX code openai/consistency_models_cifar10 (`jcm/losses.py`).
* iCT  Song & Dhariwal, "Improved Techniques for Training Consistency Models",
       ICLR 2024 (no official code; spec §2.2).
* ECT  Geng, Pokle, Luo, Lin, Kolter, "Consistency Models Made Easy", ICLR 2025;
       official code locuslab/ect (`training/loss.py`, `training/networks.py`).
* SCT  Wang, Geng, Li, "Stable Consistency Tuning", arXiv 2410.18958; code
       unreleased: everything beyond the variance-reduced target is a documented
       option here (spec §4, "which defaults are the paper's" in the README).

All four share one loss core. A pair of noise levels t > r and a shared noise
direction give a student point x_t and a teacher point x_r; the loss is

    lambda(t, r) * d(f_theta(x_t, t), stopgrad f_teacher(x_r, r)),

evaluated with the *same dropout key* for student and teacher (spec §7.1):

  method  (t, r)                                   x_r                  teacher
  ct      Karras grid, N(k) from `ct_schedule`,    x0 + r z             EMA of theta with
          pair index uniform                                            rate mu(k) (in aux)
  ict     Karras grid, doubling N(k), discretised  x0 + r z             stopgrad(theta)
          lognormal pair index
  ect     t ~ the objective's noise sampler        x0 + r eps           stopgrad(theta)
          (lognormal), r = ect_r(t, stage)
  sct     as ect                                   x0_hat + r eps_hat   stopgrad(theta)

SCT's teacher point is one Euler step of the PF-ODE with the STF posterior mean
x0_hat = sum_i w_i y_i over a reference set containing the sample (spec §4.1):
x_r = x0_hat + r (x_t - x0_hat)/t. It is computed here as
x_r = x0_hat + r * (eps + (x0 - x0_hat)/t), the same number in exact arithmetic,
written so that a one-element reference set (x0_hat == x0 bitwise) gives ECT's
x0 + r eps bit for bit. The reference set is the STF engineer's: the `stf`
config block (`reference_size`, `mode`, `restrict_labels`) and the pipeline's
`reference` draws; same-class restriction for labelled data comes with it.

Parameterisation (spec §1.5). CT/iCT use the boundary-conditioned CM
coefficients (sigma_min 0.002) in training and sampling. ECT/SCT train with
EDM's coefficients (boundary at 0; the r = 0 teacher is replaced by the clean
target) and sample with the CM boundary form at sigma_min = 0.003, as
locuslab/ect `ECMPrecond` switches on `self.training`.

Schedules that change during training are traced values of the step (ECT's
stage, CT's N(k) and mu(k), iCT's doubling N on a grid padded to a static
size), so one compiled step serves a whole run; the difficulty curriculum
composes through the noise sampler (ECT/SCT) or by restricting the grid pairs
to the enabled clusters of the student's noise level (CT/iCT).

Config: the `consistency` block of `base_config()`; "auto" values resolve per
method to the official defaults (see `resolve_settings`).

Numerics: with r = t and the shared dropout key the student and teacher calls
are the same function of the same inputs, so executed op by op their
difference is exactly 0 (tested). Inside one jitted step XLA may fuse the two
calls differently (FMA contraction), which leaves differences of a few ulps.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxdiff import diffusion
from jaxdiff.objectives import base
# The public pure math of api.md, re-exported here (jaxdiff.objectives.consistency.ect_r, ...).
from jaxdiff.objectives.consistency_math import (  # noqa: F401  (re-exports)
    CONSISTENCY_WEIGHTINGS, consistency_weight, ct_sample_pair, ct_schedule, ect_r, ect_stage,
    ict_huber_c, ict_num_scales, ict_sample_pair, karras_grid_ascending, pseudo_huber)
from jaxdiff.objectives.consistency_math import ict_index_probs

METHODS = ("ct", "ict", "ect", "sct", "act")  # act: objectives/act.py builds on this core
METRICS = ("l1", "l2", "pseudo_huber", "lpips")
PRECONDS = ("cm", "edm")
R0_TARGETS = ("x0_hat", "x0")
GUIDANCE = ("none", "ema_snapshot", "uncond")
MAPPINGS = ("sigmoid", "const")

# Per-method defaults of the "auto" keys (spec §2.1-§2.3, §4.2).
_AUTO = {
    #        train_precond  sample_sigma_min  metric          weighting   huber_c
    "ct": ("cm", None, "l2", "uniform", 0.0),
    "ict": ("cm", None, "pseudo_huber", "ict", "ict"),
    "ect": ("edm", 0.003, "pseudo_huber", "ect", 0.0),
    "sct": ("edm", 0.003, "pseudo_huber", "ect", 0.0),
    # ACT's LPIPS needs VGG weights jaxdiff cannot download: pseudo-Huber with iCT's c is
    # the stand-in (a documented deviation, logged by objectives/act.py) unless the user
    # sets metric='lpips' with lpips_weights.
    "act": ("cm", None, "pseudo_huber", "uniform", "ict"),
}


# ------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """The resolved (no "auto") settings of one consistency objective."""
  method: str
  sigma_min: float
  sigma_max: float
  rho: float
  train_precond: str
  sample_sigma_min: float
  metric: str
  huber_c: float
  weighting: str
  schedule_steps: int
  ct_s0: int
  ct_s1: int
  ct_mu0: float
  ict_s0: int
  ict_s1: int
  stage_steps: int
  smooth_stage: bool
  q: float
  k: float
  b: float
  mapping: str
  r0_target: str
  phase_edges: tuple[float, ...]
  edge_skip_eta: float
  guidance: str
  guidance_scale: float
  snapshot_step: int
  # metric == "lpips": the converter's .npz (objectives/lpips.py) and the side both images
  # are bilinearly resized to first (CT/ACT: 224; 0: no resize).
  lpips_weights: str = ""
  lpips_resolution: int = 224


def _config_error(msg: str):
  from jaxdiff.config import ConfigError
  return ConfigError(msg)


def resolve_settings(config, example_shape) -> Settings:
  """Settings of config.objective.name with "auto" values resolved; raises ConfigError."""
  method = config.objective.name
  if method not in METHODS:
    raise _config_error(f"config.objective.name={method!r} is not a consistency method "
                        f"{METHODS}.")
  c = config.consistency
  auto_precond, auto_smin, auto_metric, auto_weighting, auto_c = _AUTO[method]
  train_precond = auto_precond if c.train_precond == "auto" else c.train_precond
  if train_precond not in PRECONDS:
    raise _config_error(f"config.consistency.train_precond={c.train_precond!r} is not allowed; "
                        f"choose one of {('auto',) + PRECONDS}.")
  metric = auto_metric if c.metric == "auto" else c.metric
  if metric not in METRICS:
    raise _config_error(f"config.consistency.metric={c.metric!r} is not allowed; choose one "
                        f"of {('auto',) + METRICS}.")
  lpips_resolution = int(c.get("lpips_resolution", 224))
  if metric == "lpips":
    from jaxdiff.objectives import lpips as lpips_lib
    if not c.lpips_weights:
      raise _config_error(
          "config.consistency.metric='lpips' needs VGG16 LPIPS weights from a file "
          "(config.consistency.lpips_weights=/path/to/lpips_vgg.npz, made with "
          f"`{lpips_lib.CONVERT_COMMAND}`); jaxdiff never downloads weights. Or use "
          "metric='pseudo_huber' (iCT/ECT) or 'l2'.")
    if not os.path.isfile(c.lpips_weights):
      raise _config_error(
          f"config.consistency.lpips_weights={c.lpips_weights!r} does not exist. Expected "
          f"{lpips_lib.EXPECTED_FORMAT}.")
    if len(example_shape) != 3 or example_shape[-1] not in (1, 3):
      raise _config_error(
          f"config.consistency.metric='lpips' compares images (NHWC, 1 or 3 channels); the data "
          f"examples have shape {tuple(example_shape)}. Use metric='pseudo_huber' or 'l2'.")
    side = lpips_resolution or min(example_shape[:2])
    if lpips_resolution < 0 or side < lpips_lib.MIN_RESOLUTION:
      raise _config_error(
          f"config.consistency.lpips_resolution={lpips_resolution} gives {side}x{side} LPIPS "
          f"inputs; VGG16 needs at least {lpips_lib.MIN_RESOLUTION} (CT/ACT: 224; 0 keeps the "
          "data's size).")
  weighting = auto_weighting if c.weighting == "auto" else c.weighting
  if weighting not in CONSISTENCY_WEIGHTINGS:
    raise _config_error(f"config.consistency.weighting={c.weighting!r} is not allowed; choose "
                        f"one of {('auto',) + CONSISTENCY_WEIGHTINGS}.")
  if c.huber_c < 0:
    huber_c = ict_huber_c(int(np.prod(example_shape))) if auto_c == "ict" else float(auto_c)
  else:
    huber_c = float(c.huber_c)
  sample_sigma_min = float(c.sample_sigma_min) or (
      float(c.sigma_min) if auto_smin is None else auto_smin)
  if c.mapping not in MAPPINGS:
    raise _config_error(f"config.consistency.mapping={c.mapping!r} is not allowed; choose one "
                        f"of {MAPPINGS}.")
  if c.r0_target not in R0_TARGETS:
    raise _config_error(f"config.consistency.r0_target={c.r0_target!r} is not allowed; choose "
                        f"one of {R0_TARGETS}.")
  if c.guidance not in GUIDANCE:
    raise _config_error(f"config.consistency.guidance={c.guidance!r} is not allowed; choose "
                        f"one of {GUIDANCE}.")
  if c.guidance == "uncond" and not config.data.num_classes:
    raise _config_error(
        "config.consistency.guidance='uncond' guides with the unconditional branch, which needs "
        "a class-conditional model: set config.data.num_classes (and model.label_dropout > 0 so "
        "the branch is trained), or use guidance='ema_snapshot'.")
  if not 0.0 < c.guidance_snapshot_fraction <= 1.0:
    raise _config_error(f"config.consistency.guidance_snapshot_fraction="
                        f"{c.guidance_snapshot_fraction!r} must be in (0, 1].")
  edges = tuple(float(e) for e in c.phase_edges)
  if edges:
    if method != "sct":
      raise _config_error(f"config.consistency.phase_edges={edges} (phased training) is an SCT "
                          f"option; objective.name={method!r}. Use objective.name='sct' or "
                          "phase_edges=().")
    if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
      raise _config_error(f"config.consistency.phase_edges={edges} must be positive and strictly "
                          "ascending (the inner edges s_1 < ... < s_{M-1}; s_0 = 0).")
  if not 0.0 <= c.edge_skip_eta < 1.0:
    raise _config_error(f"config.consistency.edge_skip_eta={c.edge_skip_eta!r} must be in [0, 1).")
  if method in ("ect", "sct") and int(c.stage_steps) < 1:
    raise _config_error(f"config.consistency.stage_steps={c.stage_steps!r} must be an integer "
                        ">= 1 (CIFAR-10 ECT: 25000).")
  if method == "ct" and not 0 < c.ct_mu0 < 1:
    raise _config_error(f"config.consistency.ct_mu0={c.ct_mu0!r} must be in (0, 1).")
  if not 0 < c.sigma_min < c.sigma_max:
    raise _config_error(f"config.consistency.sigma_min={c.sigma_min!r} must be > 0 and below "
                        f"sigma_max={c.sigma_max!r}.")
  schedule_steps = int(c.schedule_steps) or int(config.train.num_steps)
  return Settings(
      method=method, sigma_min=float(c.sigma_min), sigma_max=float(c.sigma_max),
      rho=float(c.rho), train_precond=train_precond, sample_sigma_min=sample_sigma_min,
      metric=metric, huber_c=float(huber_c), weighting=weighting, schedule_steps=schedule_steps,
      ct_s0=int(c.ct_s0), ct_s1=int(c.ct_s1), ct_mu0=float(c.ct_mu0), ict_s0=int(c.ict_s0),
      ict_s1=int(c.ict_s1), stage_steps=int(c.stage_steps), smooth_stage=bool(c.smooth_stage),
      q=float(c.q), k=float(c.k), b=float(c.b), mapping=c.mapping, r0_target=c.r0_target,
      phase_edges=edges, edge_skip_eta=float(c.edge_skip_eta), guidance=c.guidance,
      guidance_scale=float(c.guidance_scale),
      snapshot_step=max(int(round(c.guidance_snapshot_fraction * schedule_steps)), 1),
      lpips_weights=str(c.lpips_weights) if metric == "lpips" else "",
      lpips_resolution=lpips_resolution)


def validate_consistency_config(config, num_devices: int | None = None) -> None:
  """Config checks of the consistency methods (called by `jaxdiff.config.validate`)."""
  shape = ((2,) if config.data.name == "toy2d"
           else (config.data.image_size, config.data.image_size, config.data.channels))
  resolve_settings(config, shape)
  if config.objective.name == "sct":
    from jaxdiff.objectives.stf_objective import validate_stf_config
    validate_stf_config(config, num_devices)


# ------------------------------------------------------------------ sampling helpers


@flax.struct.dataclass
class GuidedParams:
  """Sampling parameters with a weaker model for guidance (an earlier EMA snapshot)."""
  model: Any
  guide: Any


def phase_lower_edge(t, edges: tuple[float, ...]):
  """s(t) = the largest phase edge strictly below t, with s_0 = 0 (broadcasts over t)."""
  t = jnp.asarray(t)
  lower = jnp.zeros_like(t)
  for e in edges:  # ascending: the last edge below t wins
    lower = jnp.where(t > e, jnp.asarray(e, t.dtype), lower)
  return lower


def phased_sampler(phase_fn: Callable, latents, edges: tuple[float, ...], sigma_max: float = 80.0,
                   eta: float = 0.0):
  """Phase-to-phase sampling of a phased consistency model, with edge skipping.

  `phase_fn(x, t)` maps x at time t to the lower edge of t's phase (for the
  lowest phase: to the data). Starting at x = latents * sigma_max, each call
  lands on an edge s_m; the next call evaluates the state at
  t' = s_m - eta (s_m - s_{m-1}) (eta = 0: at the edge itself, which belongs to
  the phase below). `len(edges) + 1` network calls. Deterministic.

  The edge-skipping rule is our reading of SCT §4.4 (paper code unreleased,
  spec §4.1 [UNVERIFIED]); eta = 0 is standard multistep phased sampling.
  """
  latents = jnp.asarray(latents)
  dtype = latents.dtype
  batch = latents.shape[0]
  full_edges = (0.0,) + tuple(edges)
  x = latents * jnp.asarray(sigma_max, dtype)
  t = float(sigma_max)
  for m in range(len(full_edges) - 1, -1, -1):
    x = phase_fn(x, jnp.full((batch,), t, dtype)).astype(dtype)
    if m == 0:
      break
    s_m, s_below = full_edges[m], full_edges[m - 1]
    t = s_m - eta * (s_m - s_below)
  return x


# ------------------------------------------------------------------ the objective


class ConsistencyObjective(base.Objective):
  """CT / iCT / ECT / SCT (see the module docstring); `settings.method` picks one."""

  sampler_kind = "consistency"
  # What the network's noise embedding gets (diffusion.denoise): ln(sigma)/4 here; ACT
  # overrides it with the raw sigma.
  noise_label = "log"

  def __init__(self, settings: Settings, apply_fn: base.ApplyFn,
               noise_sampler: base.NoiseSampler, *, example_shape, sigma_data: float = 0.5,
               num_classes: int = 0, ema_config=None, batch_size: int = 1,
               sample_sigmas=(80.0,), stf_helper=None, lpips_params=None):
    self.settings = settings
    self.method = settings.method
    self.apply_fn = apply_fn
    self.noise_sampler = noise_sampler
    self.example_shape = tuple(example_shape)
    self.sigma_data = float(sigma_data)
    self.num_classes = int(num_classes)
    self.ema_config = ema_config
    self.batch_size = int(batch_size)
    self.sample_sigmas = tuple(float(s) for s in sample_sigmas)
    self._stf = stf_helper
    if self.method == "sct" and stf_helper is None:
      raise ValueError("SCT needs an STF helper for its reference-set target.")
    # LPIPS-VGG16 weights (metric 'lpips'), loaded once; constants of the jitted step.
    self.lpips_params = None
    if settings.metric == "lpips":
      if lpips_params is None:
        from jaxdiff.objectives import lpips as lpips_lib
        lpips_params = lpips_lib.load_params(settings.lpips_weights)
      self.lpips_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), lpips_params)

  @classmethod
  def from_config(cls, config, apply_fn, noise_sampler, example_shape) -> "ConsistencyObjective":
    settings = resolve_settings(config, example_shape)
    helper = None
    if settings.method == "sct":
      from jaxdiff.objectives.stf_objective import STFObjective
      helper = STFObjective.from_config(config, apply_fn, noise_sampler)
    logging.info("consistency objective: %s", settings)
    return cls(settings, apply_fn, noise_sampler, example_shape=example_shape,
               sigma_data=config.objective.sigma_data, num_classes=config.data.num_classes,
               ema_config=config.ema, batch_size=config.data.batch_size,
               sample_sigmas=config.sample.consistency_sigmas, stf_helper=helper)

  # The STF helper needs the mesh the trainer sets on this objective.
  @property
  def reference_draws(self) -> int:
    if self._stf is None:
      return 0
    self._stf.mesh = self.mesh
    return self._stf.reference_draws

  # ---------------------------------------------------------------- networks

  def training_fn(self, params, x, t, labels=None, dropout_key=None, edge=None, train=True):
    """f in training form: the train-precond denoiser, mapped to `edge` if phased.

    Phased SCT (spec §4.1): f(x, t) = D + (s/t)(x - D), the DDIM/Euler jump to
    the phase's lower edge s with the network's x0 prediction D.
    """
    d = diffusion.denoise(self.apply_fn, params, x, t, sigma_data=self.sigma_data,
                          class_labels=labels, train=train, dropout_key=dropout_key,
                          precond=self.settings.train_precond, sigma_min=self.settings.sigma_min,
                          noise_label=self.noise_label)
    if edge is None:
      return d
    ratio = (edge / t).reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return d + ratio * (x - d)

  def consistency_fn(self, params, class_labels=None):
    """x, sigma -> f(x, sigma) in sampling form (CM boundary at sample_sigma_min)."""
    s = self.settings

    def f(x, sigma):
      return diffusion.denoise(self.apply_fn, params, x, sigma, sigma_data=self.sigma_data,
                               class_labels=class_labels, precond="cm",
                               sigma_min=s.sample_sigma_min, noise_label=self.noise_label)
    return f

  def phase_fn(self, params, class_labels=None):
    """x, t -> the jump to t's phase edge (phased SCT); the lowest phase uses the CM boundary."""
    st = self.settings
    edges = st.phase_edges

    def f(x, t):
      expand = lambda a: a.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
      t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
      s = phase_lower_edge(t, edges)
      # One network call serves both forms: c_in and c_noise are the same.
      if st.train_precond == "edm":
        c_skip, c_out, c_in, c_noise = diffusion.edm_precond(t, self.sigma_data)
      else:
        c_skip, c_out, c_in, c_noise = diffusion.cm_precond(t, st.sigma_min, self.sigma_data)
      cm_skip, cm_out, _, _ = diffusion.cm_precond(t, st.sample_sigma_min, self.sigma_data)
      net = self.apply_fn(params, expand(c_in) * x, c_noise, class_labels, None, False,
                          None).astype(x.dtype)
      d = expand(c_skip) * x + expand(c_out) * net
      jump = d + expand(s / t) * (x - d)
      boundary = expand(cm_skip) * x + expand(cm_out) * net
      return jnp.where(expand(s > 0) > 0, jump, boundary)
    return f

  def denoiser(self, params, class_labels=None):
    return self.consistency_fn(params, class_labels)

  # ---------------------------------------------------------------- schedules

  def schedule(self, step):
    """Traced schedule values of `step`: ECT stage, CT/iCT num_scales, CT target EMA."""
    s = self.settings
    out = {}
    if self.method in ("ect", "sct"):
      out["stage"] = ect_stage(step, s.stage_steps, continuous=s.smooth_stage)
    elif self.method == "ct":
      out["num_scales"], out["target_ema"] = ct_schedule(step, s.schedule_steps, s.ct_s0,
                                                         s.ct_s1, s.ct_mu0)
    elif self.method == "ict":
      out["num_scales"] = ict_num_scales(step, s.schedule_steps, s.ict_s0, s.ict_s1)
    return out

  def _curriculum_mask(self):
    return getattr(self.noise_sampler, "mask", None)

  def _masked_pair(self, key, shape, grid, probs, dtype):
    """(t, r) = (grid[i+1], grid[i]) with i ~ probs restricted to the curriculum's clusters."""
    index = self._masked_index(key, shape, grid, probs)
    return grid[index + 1].astype(dtype), grid[index].astype(dtype)

  def _masked_index(self, key, shape, grid, probs):
    """Pair index i ~ probs, restricted to pairs whose upper level is in an enabled cluster."""
    mask = self._curriculum_mask()
    if mask is not None and not all(mask):
      from jaxdiff.curriculum import clusters
      edges = clusters.cluster_edges(len(mask), "lognormal", self.noise_sampler.p_mean,
                                     self.noise_sampler.p_std)
      idx = clusters.cluster_index(grid[1:], edges)
      active = jnp.asarray(mask)[idx]
      masked = jnp.where(active, probs, 0)
      # Early in CT/iCT the grid is coarse: with no pair inside the enabled clusters,
      # fall back to all pairs rather than dividing by zero.
      probs = jnp.where(jnp.sum(masked) > 0, masked, probs)
    return jax.random.categorical(key, jnp.log(probs), shape=shape)

  def sample_times(self, key, batch: int, step, dtype):
    """(t, r, schedule) of a step: student and teacher noise levels, both [batch]."""
    s = self.settings
    sched = self.schedule(step)
    if self.method == "ct":
      mask = self._curriculum_mask()
      if mask is None or all(mask):
        t, r = ct_sample_pair(key, (batch,), sched["num_scales"], s.sigma_min, s.sigma_max,
                              s.rho, dtype=dtype)
      else:
        size = s.ct_s1 + 1
        n = jnp.minimum(sched["num_scales"], size)
        grid = karras_grid_ascending(n, s.sigma_min, s.sigma_max, s.rho, size=size, dtype=dtype)
        uniform = jnp.where(jnp.arange(size - 1) < n - 1, 1.0, 0.0)
        t, r = self._masked_pair(key, (batch,), grid, uniform / jnp.sum(uniform), dtype)
    elif self.method == "ict":
      size = s.ict_s1 + 1
      grid = karras_grid_ascending(sched["num_scales"], s.sigma_min, s.sigma_max, s.rho,
                                   size=size, dtype=jnp.float32)
      p_mean = getattr(self.noise_sampler, "p_mean", -1.1)
      p_std = getattr(self.noise_sampler, "p_std", 2.0)
      if self._curriculum_mask() is None or all(self._curriculum_mask()):
        t, r = ict_sample_pair(key, (batch,), grid, p_mean, p_std)
        t, r = t.astype(dtype), r.astype(dtype)
      else:
        t, r = self._masked_pair(key, (batch,), grid, ict_index_probs(grid, p_mean, p_std), dtype)
    else:  # ect / sct: continuous t from the (curriculum-aware) noise sampler
      t = self.noise_sampler(key, (batch,), dtype)
      r = ect_r(t, sched["stage"], s.q, s.k, s.b, mapping=s.mapping).astype(dtype)
      if s.phase_edges:
        # Phased SCT: the teacher stays in the student's phase (r >= its lower edge).
        r = jnp.maximum(r, phase_lower_edge(t, s.phase_edges))
    return t, r, sched

  # ---------------------------------------------------------------- the loss core

  def x0_hat(self, x_t, t, batch, aux=None, key=None):
    """SCT's posterior-mean estimate over the reference set (the STF target); else x0."""
    if self.method != "sct":
      return batch["image"]
    self._stf.mesh = self.mesh
    return jax.lax.stop_gradient(self._stf.target(x_t, t, batch, aux, key))

  @staticmethod
  def teacher_point(x0, eps, t, r, x0_hat=None):
    """x_r: ECT's x0 + r eps, or SCT's Euler step x0_hat + r (eps + (x0 - x0_hat)/t).

    The SCT form equals x0_hat + r (x_t - x0_hat)/t with x_t = x0 + t eps, and is
    exactly ECT's point when x0_hat == x0.
    """
    expand = lambda a: a.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    if x0_hat is None:
      return x0 + expand(r) * eps
    eps_hat = eps + (x0 - x0_hat) / expand(t)
    return x0_hat + expand(r) * eps_hat

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

    `teacher_params` are the teacher's weights (for ECT/iCT/SCT the student's
    own, for CT the EMA teacher); the teacher output is under stop_gradient, so
    no gradient reaches them. `teacher_dropout_key` (tests only) overrides the
    shared dropout key of the teacher call.
    """
    s = self.settings
    x0 = batch["image"]
    dtype = x0.dtype
    bsz = x0.shape[0]
    k_time, k_noise, k_drop, k_ref = jax.random.split(key, 4)
    t, r, sched = self.sample_times(k_time, bsz, step, dtype)
    eps = jax.random.normal(k_noise, x0.shape, dtype)
    expand = lambda a: a.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(dtype)
    x_t = x0 + expand(t) * eps
    labels = base.one_hot_labels(batch, self.num_classes, dtype)
    x0_hat = self.x0_hat(x_t, t, batch, key=k_ref) if self.method == "sct" else None
    x_r = self.teacher_point(x0, eps, t, r, x0_hat)

    edge = phase_lower_edge(t, s.phase_edges) if s.phase_edges else None
    student = self.training_fn(params, x_t, t, labels, k_drop, edge=edge)

    # The teacher: same noise, same dropout key, never at sigma <= its boundary
    # (ln 0 in c_noise at r = 0); there the target is the boundary point itself.
    if self.method in ("ect", "sct"):
      floor = edge if edge is not None else jnp.zeros_like(r)
      at_boundary = r <= floor
      r_safe = jnp.where(at_boundary, jnp.ones_like(r), r)
      teacher_key = k_drop if teacher_dropout_key is None else teacher_dropout_key
      f_r = self.training_fn(teacher_params, x_r, r_safe, labels, teacher_key, edge=edge)
      f_r = jnp.nan_to_num(jax.lax.stop_gradient(f_r))
      if self.method == "sct" and s.r0_target == "x0":
        boundary_target = self.teacher_point(x0, eps, t, floor)  # ECT's x0 + s eps
      else:
        boundary_target = x_r  # ECT: x0 (+ s eps); SCT: x0_hat (+ s eps_hat)
      target = jnp.where(expand(at_boundary) > 0, boundary_target, f_r)
    else:
      teacher_key = k_drop if teacher_dropout_key is None else teacher_dropout_key
      target = jax.lax.stop_gradient(
          self.training_fn(teacher_params, x_r, r, labels, teacher_key))
    target = jax.lax.stop_gradient(target)
    delta = student - target
    dist = self.per_sample_distance(student, target)
    weight = consistency_weight(t, r, s.weighting, self.sigma_data).astype(dtype)
    out = {"per_sample_loss": dist * weight, "sigma": t, "r": r, "x_t": x_t, "x_r": x_r,
           "delta": delta, "student": student, "target": target, "eps": eps}
    out.update(sched)
    return out

  def loss(self, params, aux, batch, key, step):
    teacher = aux["teacher"] if self.method == "ct" else params
    out = self.terms(params, teacher, batch, key, step)
    per_sample = out["per_sample_loss"]
    t, r = out["sigma"], out["r"]
    metrics = {"per_sample_loss": per_sample, "sigma": t,
               "consistency/r_over_t": jnp.mean(r / t)}
    for name in ("stage", "num_scales", "target_ema"):
      if name in out:
        metrics[f"consistency/{name}"] = jnp.asarray(out[name], jnp.float32)
    return jnp.mean(per_sample), metrics

  # ---------------------------------------------------------------- aux state

  def init_aux(self, params):
    aux = {}
    if self.method == "ct":
      aux["teacher"] = jax.tree.map(jnp.copy, params)
    if self.settings.guidance == "ema_snapshot":
      aux["guide"] = jax.tree.map(jnp.copy, params)
    return aux

  def update_aux(self, aux, params, step):
    """CT: teacher <- mu(k) teacher + (1 - mu(k)) theta_new, mu of the update's step (as
    jcm/losses.py); guidance: the trainer's EMA replayed until the snapshot step, then frozen."""
    aux = dict(aux)
    if self.method == "ct":
      mu = self.schedule(step)["target_ema"]
      aux["teacher"] = jax.tree.map(
          lambda a, p: (a * mu + p * (1 - mu)).astype(a.dtype), aux["teacher"], params)
    if "guide" in aux:
      from jaxdiff.train import optim
      decay = optim.ema_decay(step, self.ema_config, self.batch_size)
      updated = optim.ema_update(aux["guide"], params, decay)
      before = step < self.settings.snapshot_step
      aux["guide"] = jax.tree.map(lambda u, g: jnp.where(before, u, g), updated, aux["guide"])
    return aux

  # ---------------------------------------------------------------- sampling

  def sampling_params(self, params, aux):
    """What the sampler gets: the weights, plus the guide snapshot when guiding with one."""
    if self.settings.guidance == "ema_snapshot" and aux and "guide" in aux:
      return GuidedParams(model=params, guide=aux["guide"])
    return params

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

  def sample(self, params, latents, key, sample_config=None):
    """Samples: phased (SCT with phase_edges) or one-/multistep at config sample sigmas."""
    k_label, k_steps = jax.random.split(key)
    labels = None
    if self.num_classes:
      # As EDM's generate.py: random classes for a class-conditional model.
      labels = jax.nn.one_hot(
          jax.random.randint(k_label, (latents.shape[0],), 0, self.num_classes),
          self.num_classes, dtype=latents.dtype)
    s = self.settings
    if s.phase_edges:
      fn = self.guided_fn(params, self.phase_fn, labels)
      return phased_sampler(fn, latents, s.phase_edges, s.sigma_max, s.edge_skip_eta)
    sigmas = self.sample_sigmas
    if sample_config is not None:
      sigmas = tuple(float(v) for v in sample_config.consistency_sigmas)
    from jaxdiff import sampling
    fn = self.guided_fn(params, self.consistency_fn, labels)
    return sampling.consistency_sampler(fn, latents, jnp.asarray(sigmas, latents.dtype),
                                        key=k_steps)


# ------------------------------------------------------------------ EDM pre-training


def pretrain_config(config) -> ml_collections.ConfigDict:
  """The EDM run that produces the weights a consistency recipe tunes (init_from).

  Same data, model and mesh (so the weights fit); EDM's objective and noise
  distribution, Adam with `pretrain_lr` and warm-up, EDM half-life EMA, no
  curriculum, `pretrain_steps` steps.
  """
  c = config.copy_and_resolve_references()
  p = config.consistency
  c.objective.name = "edm"
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2
  c.optim.name = "adam"
  c.optim.lr = float(p.pretrain_lr)
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.warmup_steps = int(p.pretrain_warmup_steps)
  c.ema.kind = "halflife"
  c.ema.halflife_kimg = float(p.pretrain_ema_halflife_kimg)
  c.train.num_steps = int(p.pretrain_steps)
  c.train.ckpt_every = min(int(c.train.ckpt_every), int(p.pretrain_steps))
  c.train.sample_every = 0
  c.curriculum.enabled = False
  c.sample.kind = "edm"
  c.init_from = ""
  c.consistency.pretrain_steps = 0
  c.consistency.guidance = "none"
  c.consistency.phase_edges = ()
  return c
