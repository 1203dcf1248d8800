"""Discrete-time Gaussian diffusion as DiT trains and samples it (docs/ddpm.md).

References (the formulas are the official code's; nothing is copied from it):
  facebookresearch/DiT `diffusion/gaussian_diffusion.py` (get_named_beta_schedule,
  betas_for_alpha_bar, GaussianDiffusion: q_sample, q_posterior_mean_variance,
  p_mean_variance, _predict_xstart_from_eps, p_sample, ddim_sample, _vb_terms_bpd,
  training_losses), `diffusion/diffusion_utils.py` (normal_kl, approx_standard_normal_cdf,
  discretized_gaussian_log_likelihood), `diffusion/respace.py` (space_timesteps,
  SpacedDiffusion, _WrappedModel) and `diffusion/__init__.py` (create_diffusion). DiT took
  them from OpenAI's improved-diffusion / guided-diffusion (Nichol & Dhariwal 2021).

Conventions.
  * Timesteps are 0-based integers t in [0, T): t = 0 is one step of noise.
  * Schedules are host constants: float64 numpy arrays in a frozen `DiscreteSchedule`,
    built outside `jax.jit` and closed over (or passed as a static argument: the class
    hashes by identity). Per-batch functions gather them at an int array `t` of shape [B]
    and compute in `result_type(x, float32)` (DiT gathers float64 values and casts them to
    float32); under `jax.enable_x64` with float64 inputs everything is float64.
  * Arrays are channels-last (jaxdiff's NHWC). With `learn_sigma` the model output has 2C
    channels on `channel_axis` (default -1): eps first, then the variance interpolation
    v in [-1, 1] (DiT's LEARNED_RANGE); without it, C channels of eps and DiT's FIXED_LARGE
    variance (or FIXED_SMALL with `sigma_small=True`).
  * The model is never called by the loss: `training_losses` takes the model output, so it
    is pure. Samplers take `denoise_fn(x, t_original) -> model_output` and pass it the
    ORIGINAL timestep (int32 [B]) of every respaced step, as DiT's `_WrappedModel` does.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCHEDULES = ("linear", "cosine")
# DiT's own name of the improved-DDPM cosine schedule.
_SCHEDULE_ALIASES = {"squaredcos_cap_v2": "cosine"}


# ---------------------------------------------------------------------------------------
# Beta schedules (float64 numpy).
# ---------------------------------------------------------------------------------------


def _cosine_alpha_bar(u: float) -> float:
  # Improved DDPM (Nichol & Dhariwal 2021, eq. 17) with s = 0.008, f(0) normalised away.
  return math.cos((u + 0.008) / 1.008 * math.pi / 2)**2


def ddpm_betas(num_timesteps: int = 1000, schedule: str = "linear") -> np.ndarray:
  """DiT's `get_named_beta_schedule(schedule, num_timesteps)`, float64 [T].

  "linear": Ho et al.'s 1e-4 .. 0.02 scaled by 1000 / T, i.e.
    linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T).
  "cosine" (DiT's name: "squaredcos_cap_v2"): beta_i = min(1 - abar((i+1)/T) / abar(i/T),
    0.999) with abar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2.
  """
  num_timesteps = operator.index(num_timesteps)
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  name = _SCHEDULE_ALIASES.get(schedule, schedule)
  if name == "linear":
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  if name == "cosine":
    # Scalar math.cos (not np.cos) so the values are those of DiT's loop to the bit.
    betas = [
        min(1 - _cosine_alpha_bar((i + 1) / num_timesteps) /
            _cosine_alpha_bar(i / num_timesteps), 0.999) for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)
  raise ValueError(
      f"schedule must be one of {SCHEDULES} (or 'squaredcos_cap_v2'), got {schedule!r}.")


def _frozen(a) -> np.ndarray:
  a = np.array(a, dtype=np.float64)  # a private copy
  a.setflags(write=False)
  return a


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule:
  """Every per-timestep constant of DiT's `GaussianDiffusion`, float64 numpy [T].

  Build with `DiscreteSchedule.from_betas(betas)`. The arrays are read-only; the object
  hashes by identity, so it can be a static argument of `jax.jit`.
  """
  betas: np.ndarray
  log_betas: np.ndarray  # log(betas): the upper end of LEARNED_RANGE
  alphas_cumprod: np.ndarray  # abar_t = prod_{s <= t} (1 - beta_s)
  alphas_cumprod_prev: np.ndarray  # [1, abar_0, ..., abar_{T-2}]
  alphas_cumprod_next: np.ndarray  # [abar_1, ..., abar_{T-1}, 0]
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  log_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray  # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
  posterior_log_variance_clipped: np.ndarray  # log([beta~_1, beta~_1, ..., beta~_{T-1}])
  posterior_mean_coef1: np.ndarray  # beta_t sqrt(abar_{t-1}) / (1 - abar_t)
  posterior_mean_coef2: np.ndarray  # (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)

  @classmethod
  def from_betas(cls, betas) -> "DiscreteSchedule":
    """DiT's `GaussianDiffusion.__init__` arithmetic, in float64.

    Args:
      betas: 1-D, 0 < beta <= 1 (DiT's assertion); T >= 2 (the clipped posterior log
        variance needs beta~_1).
    """
    if isinstance(betas, jax.core.Tracer):
      raise TypeError("DiscreteSchedule is a host constant: build it from concrete betas, "
                      "outside jax.jit.")
    betas = np.array(betas, dtype=np.float64)
    if betas.ndim != 1:
      raise ValueError(f"betas must be 1-D, got shape {betas.shape}.")
    if betas.shape[0] < 2:
      raise ValueError("need at least 2 timesteps (posterior_log_variance_clipped uses "
                       "posterior_variance[1]).")
    if not ((betas > 0).all() and (betas <= 1).all()):
      raise ValueError("betas must lie in (0, 1].")
    alphas = 1.0 - betas
    abar = np.cumprod(alphas, axis=0)
    abar_prev = np.append(1.0, abar[:-1])
    abar_next = np.append(abar[1:], 0.0)
    with np.errstate(divide="ignore"):  # beta = 1 gives abar = 0 and infinite logs
      post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
      fields = dict(
          betas=betas,
          log_betas=np.log(betas),
          alphas_cumprod=abar,
          alphas_cumprod_prev=abar_prev,
          alphas_cumprod_next=abar_next,
          sqrt_alphas_cumprod=np.sqrt(abar),
          sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
          log_one_minus_alphas_cumprod=np.log(1.0 - abar),
          sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
          sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1),
          posterior_variance=post_var,
          # beta~_0 = 0: DiT repeats beta~_1 at t = 0 before the log.
          posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
          posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
          posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      )
    return cls(**{k: _frozen(v) for k, v in fields.items()})

  @classmethod
  def named(cls, num_timesteps: int = 1000, schedule: str = "linear") -> "DiscreteSchedule":
    """`from_betas(ddpm_betas(num_timesteps, schedule))`."""
    return cls.from_betas(ddpm_betas(num_timesteps, schedule))

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


# ---------------------------------------------------------------------------------------
# Per-batch helpers.
# ---------------------------------------------------------------------------------------


def _compute_dtype(*xs):
  return jnp.result_type(*xs, jnp.float32)


def _extract(arr: np.ndarray, t, ndim: int, dtype) -> Array:
  """arr[t] (t: int [B]) as dtype, shaped [B, 1, ..., 1] with `ndim` dims (DiT's
  `_extract_into_tensor`, without materialising the broadcast)."""
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise TypeError(f"t must be an integer array of timesteps, got dtype {t.dtype}.")
  if t.ndim != 1:
    raise ValueError(f"t must have shape [B], got {t.shape}.")
  values = jnp.asarray(arr, dtype)[t]
  return values.reshape(t.shape + (1,) * (ndim - 1))


def mean_flat(x: Array) -> Array:
  """Mean over every non-batch axis (DiT's `mean_flat`)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(schedule: DiscreteSchedule, x0, t, noise) -> Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t int [B]."""
  x0 = jnp.asarray(x0)
  dtype = _compute_dtype(x0, noise)
  return (_extract(schedule.sqrt_alphas_cumprod, t, x0.ndim, dtype) * x0 +
          _extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim, dtype) * noise)


def q_posterior_mean_variance(schedule: DiscreteSchedule, x0, x_t,
                              t) -> Tuple[Array, Array, Array]:
  """q(x_{t-1} | x_t, x0): (mean, variance, clipped log variance), each broadcast to x_t.

  mean = coef1_t x0 + coef2_t x_t; variance = beta~_t; log variance log beta~ with
  beta~_0 replaced by beta~_1.
  """
  x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
  if x0.shape != x_t.shape:
    raise ValueError(f"x0 {x0.shape} and x_t {x_t.shape} must have the same shape.")
  dtype = _compute_dtype(x0, x_t)
  n = x_t.ndim
  mean = (_extract(schedule.posterior_mean_coef1, t, n, dtype) * x0 +
          _extract(schedule.posterior_mean_coef2, t, n, dtype) * x_t)
  zeros = jnp.zeros(x_t.shape, dtype)
  variance = _extract(schedule.posterior_variance, t, n, dtype) + zeros
  log_variance = _extract(schedule.posterior_log_variance_clipped, t, n, dtype) + zeros
  return mean, variance, log_variance


def predict_x0_from_eps(schedule: DiscreteSchedule, x_t, t, eps) -> Array:
  """x0 = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps."""
  x_t = jnp.asarray(x_t)
  dtype = _compute_dtype(x_t, eps)
  return (_extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim, dtype) * x_t -
          _extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim, dtype) * eps)


def predict_eps_from_x0(schedule: DiscreteSchedule, x_t, t, x0) -> Array:
  """eps = (sqrt(1 / abar_t) x_t - x0) / sqrt(1 / abar_t - 1)."""
  x_t = jnp.asarray(x_t)
  dtype = _compute_dtype(x_t, x0)
  return ((_extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim, dtype) * x_t - x0) /
          _extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim, dtype))


def _split_output(model_output, x_shape, learn_sigma: bool, channel_axis: int):
  model_output = jnp.asarray(model_output)
  axis = channel_axis % len(x_shape)
  c = x_shape[axis]
  if learn_sigma:
    expected = x_shape[:axis] + (2 * c,) + x_shape[axis + 1:]
    if model_output.shape != expected:
      raise ValueError(f"with learn_sigma the model output must have shape {expected} "
                       f"(eps, then v, on axis {channel_axis}); got {model_output.shape}.")
    eps, v = jnp.split(model_output, 2, axis=axis)
    return eps, v
  if model_output.shape != tuple(x_shape):
    raise ValueError(f"without learn_sigma the model output must have x's shape {x_shape}; "
                     f"got {model_output.shape}.")
  return model_output, None


class PMeanVariance(NamedTuple):
  """p(x_{t-1} | x_t) as DiT's `p_mean_variance` returns it (each broadcast to x_t)."""
  mean: Array
  variance: Array
  log_variance: Array
  pred_x0: Array


def p_mean_variance(schedule: DiscreteSchedule,
                    model_output,
                    x_t,
                    t,
                    learn_sigma: bool = True,
                    clip_denoised: bool = False,
                    sigma_small: bool = False,
                    channel_axis: int = -1) -> PMeanVariance:
  """DiT's `p_mean_variance` for an eps-predicting model, from its output.

  Variance: with `learn_sigma` (LEARNED_RANGE), log var = f log beta_t + (1 - f)
  posterior_log_variance_clipped_t with f = (v + 1) / 2 (v is not clipped, as in DiT).
  Without it, FIXED_LARGE: [beta~_1, beta_1, ..., beta_{T-1}] (or FIXED_SMALL,
  beta~ with the clipped log, if `sigma_small`).
  Mean: the posterior mean at pred_x0 = predict_x0_from_eps(eps), clipped to [-1, 1] if
  `clip_denoised` (DiT's default True; its sample.py and its losses pass False).

  Args:
    model_output: [.., 2C ..] with learn_sigma (eps then v on `channel_axis`), else x's shape.
    x_t: the current sample; t: int [B] timesteps of `schedule`.
  """
  x_t = jnp.asarray(x_t)
  eps, v = _split_output(model_output, x_t.shape, learn_sigma, channel_axis)
  dtype = _compute_dtype(x_t, eps)
  n = x_t.ndim
  zeros = jnp.zeros(x_t.shape, dtype)
  if learn_sigma:
    min_log = _extract(schedule.posterior_log_variance_clipped, t, n, dtype)
    max_log = _extract(schedule.log_betas, t, n, dtype)
    frac = (v.astype(dtype) + 1) / 2
    log_variance = frac * max_log + (1 - frac) * min_log
    variance = jnp.exp(log_variance)
  else:
    if sigma_small:
      var_arr = schedule.posterior_variance
      log_arr = schedule.posterior_log_variance_clipped
    else:
      var_arr = np.append(schedule.posterior_variance[1], schedule.betas[1:])
      log_arr = np.log(var_arr)
    variance = _extract(var_arr, t, n, dtype) + zeros
    log_variance = _extract(log_arr, t, n, dtype) + zeros
  pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1, 1)
  mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
  return PMeanVariance(mean, variance, log_variance, pred_x0)
