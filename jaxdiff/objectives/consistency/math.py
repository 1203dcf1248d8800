"""Pure schedules and metrics of the consistency-training family (CT, iCT, ECT, SCT).

* CT: Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023; official
  JAX code openai/consistency_models_cifar10 (`jcm/losses.py`).
* iCT: Song & Dhariwal, "Improved Techniques for Training Consistency Models",
  ICLR 2024 (no official code; docs/ict.md).
* ECT: Geng et al., "Consistency Models Made Easy", ICLR 2025; official code
  locuslab/ect (`training/loss.py`).
* SCT: Wang, Geng, Li, "Stable Consistency Tuning" (arXiv 2410.18958), which
  reuses ECT's mapping (docs/sct.md).

Every schedule is a pure function of the step. Functions that take a step work
on Python ints (returning Python numbers, for host-side logging and static
shapes) and on jax integer scalars, traced or not (returning jax arrays), and
the two paths agree exactly.
"""
from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_host_number(x) -> bool:
  """True for Python / numpy scalars: the schedule is evaluated on the host."""
  return isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, jax.Array)


def float_dtype(*xs):
  """The float dtype to compute in: the inputs' float dtype, else jax's default."""
  dtype = jnp.result_type(*xs)
  if jnp.issubdtype(dtype, jnp.floating):
    return dtype
  return jnp.result_type(float)


# --------------------------------------------------------------------------- ECT

@functools.partial(jax.jit, static_argnames=("mapping",))
def ect_r(t, stage, q=2.0, k=8.0, b=1.0, mapping="sigmoid"):
  """ECT's teacher time r = max(0, t * (1 - q^-(stage+1) * n(t))).

  n(t) = 1 + k * sigmoid(-b * t) for mapping "sigmoid", n = 1 for "const".
  `stage` counts from 0 as in the official code (locuslab/ect issue #9: the
  paper's q^-a has a = stage + 1); it may be a float, which gives SCT's smooth
  variant (docs/sct.md#method, option 2). Computed in t's float dtype.
  """
  t = jnp.asarray(t)
  dtype = float_dtype(t)
  t = t.astype(dtype)
  decay = jnp.power(jnp.asarray(q, dtype), -(jnp.asarray(stage, dtype) + 1))
  if mapping == "sigmoid":
    n = 1 + k * jax.nn.sigmoid(-b * t)
  elif mapping == "const":
    n = jnp.ones_like(t)
  else:
    raise ValueError(f"Unknown ECT mapping {mapping!r}; use 'sigmoid' or 'const'.")
  return jnp.maximum(t * (1 - decay * n), 0)


def ect_stage(step, steps_per_stage, continuous=False):
  """ECT stage index: completed blocks of `steps_per_stage` steps (0 at the start).

  On CIFAR-10, one stage is 250 ticks x 12.8 kimg / batch 128 = 25k iterations.
  `continuous=True` returns step / steps_per_stage as a float, SCT's smooth
  progressive schedule (docs/sct.md#method, option 2), to feed `ect_r`.
  """
  if is_host_number(step):
    return step / steps_per_stage if continuous else int(step) // int(steps_per_stage)
  step = jnp.asarray(step)
  if continuous:
    return step.astype(float_dtype(float)) / steps_per_stage
  return step // steps_per_stage


# --------------------------------------------------------------------------- metric

@jax.jit
def pseudo_huber(delta, c):
  """Per-sample pseudo-Huber distance sqrt(||delta||^2 + c^2) - c.

  The norm runs over every axis but the first. c = 0 gives the L2 norm (ECT's
  CIFAR-10 default, "adaptive weighting p = 1/2"); iCT uses c = 0.00054 sqrt(d).
  Written as ||delta||^2 / (sqrt(||delta||^2 + c^2) + c), which avoids the
  cancellation of the difference form for small deltas, and with a gradient of
  0 (not NaN) at delta = 0 when c = 0, which happens whenever r = t.

  Args:
    delta: [B, ...] differences.
    c: scalar or [B] non-negative constant.
  Returns:
    [B] distances in delta's float dtype.
  """
  delta = jnp.asarray(delta)
  dtype = float_dtype(delta)
  delta = delta.astype(dtype)
  sq = jnp.sum(jnp.square(delta).reshape(delta.shape[0], -1), axis=-1)
  c = jnp.asarray(c, dtype)
  inner = sq + jnp.square(c)
  positive = inner > 0
  root = jnp.sqrt(jnp.where(positive, inner, 1))   # safe sqrt: no inf gradient at 0
  denom = root + c
  return jnp.where(positive, sq / jnp.where(positive, denom, 1), 0).astype(dtype)


def ict_huber_c(dim):
  """iCT's pseudo-Huber constant c = 0.00054 sqrt(d); d = C*H*W (CIFAR-10: 0.0299)."""
  return 0.00054 * math.sqrt(dim)


# --------------------------------------------------------------------------- grids

@jax.jit
def karras_sigma_at(index, num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """Noise level at (possibly fractional) `index` of CT's ascending Karras grid.

  t(i) = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,
  i = 0 .. N-1 (t(0) = sigma_min). Works with traced `index` and `num_scales`;
  ACT's `timesteps_to_time` (negative indices clipped to 0, as there).
  """
  index = jnp.asarray(index)
  dtype = float_dtype(index)
  index = jnp.maximum(index.astype(dtype), 0)
  lo = sigma_min ** (1 / rho)
  hi = sigma_max ** (1 / rho)
  frac = index / (jnp.asarray(num_scales, dtype) - 1)
  return (lo + frac * (hi - lo)) ** rho


@jax.jit
def karras_index_of(sigma, num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """Inverse of `karras_sigma_at`: the fractional grid index of `sigma` (ACT's `time_to_timesteps`)."""
  sigma = jnp.asarray(sigma)
  dtype = float_dtype(sigma)
  lo = sigma_min ** (1 / rho)
  hi = sigma_max ** (1 / rho)
  return (sigma.astype(dtype) ** (1 / rho) - lo) * (jnp.asarray(num_scales, dtype) - 1) / (hi - lo)


def karras_grid_ascending(num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0, size=None,
                          dtype=None):
  """CT's grid t_1 < ... < t_N (N = num_scales): sigma_min first, sigma_max last.

  With `size` (a static int >= num_scales) the grid is padded to that length by
  repeating sigma_max, so a traced `num_scales` keeps a static shape: padded
  pairs have t_{i+1} = t_i and get zero probability in `ict_index_probs`.
  """
  if size is None:
    if not is_host_number(num_scales):
      raise ValueError("A traced num_scales needs a static `size` to pad the grid to.")
    size = int(num_scales)
  elif is_host_number(num_scales) and size < num_scales:
    raise ValueError(f"size={size} cannot hold a grid of {num_scales} noise levels.")
  dtype = jnp.dtype(dtype or jnp.result_type(float))
  return _padded_grid(num_scales, sigma_min, sigma_max, rho, size=size, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("size", "dtype"))
def _padded_grid(num_scales, sigma_min, sigma_max, rho, *, size, dtype):
  index = jnp.minimum(jnp.arange(size), jnp.asarray(num_scales) - 1).astype(dtype)
  grid = karras_sigma_at(index, num_scales, sigma_min, sigma_max, rho)
  # Pin the end points exactly ((x^(1/rho))^rho can miss them by an ulp).
  last = jnp.asarray(num_scales, dtype) - 1
  grid = jnp.where(index == 0, jnp.asarray(sigma_min, dtype), grid)
  return jnp.where(index == last, jnp.asarray(sigma_max, dtype), grid)


# --------------------------------------------------------------------------- CT

def _floor_mul_div(a, numerator: int, denominator: int):
  """floor(a * numerator / denominator) for int32 arrays a >= 0, without overflow.

  Splits numerator = q*denominator + r so only a*q and a*r are formed; exact
  while a * denominator < 2^31 (the caller keeps a <= denominator).
  """
  q, r = divmod(numerator, denominator)
  return a * q + (a * r) // denominator


def ct_schedule(step, total_steps, s0=2, s1=150, mu0=0.9):
  """(num_scales, target_ema) of consistency training (CT), official convention.

  As openai/consistency_models_cifar10 `get_ema_scales_fn` (progressive scales,
  adaptive EMA):
    N = max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1),
    target_ema = exp(s0 ln(mu0) / N),      num_scales = N + 1.
  At step 0: num_scales = s0 = 2 and target_ema = mu0^2 = 0.81 (the paper's
  mu(k) = exp(s0 ln mu0 / N(k)) uses the other N; the code's is kept).

  The ceiling is computed exactly, in integers (the official code takes it on
  float32 values, which near integer boundaries can round either way depending
  on the backend: 4-5 of 800k steps). Host (Python int) and device (int32,
  traced) evaluations therefore always agree.

  Args:
    step: training step k (Python int or jax integer scalar / array).
    total_steps: K, a Python int (config value).
    s0, s1: initial and final scale parameters (Python ints).
    mu0: initial target EMA decay.
  Returns:
    (num_scales, target_ema): Python (int, float) for a Python step, else
    (int32 array, float array).
  """
  total_steps, s0, s1 = int(total_steps), int(s0), int(s1)
  span = (s1 + 1) ** 2 - s0 ** 2
  if is_host_number(step):
    k = int(step)
    # m = ceil(sqrt(v)), v = s0^2 + k*span/K: the smallest m with m^2 >= ceil(v).
    v_ceil = -(-(k * span + s0 ** 2 * total_steps) // total_steps)
    root = math.isqrt(v_ceil)
    m = root if root * root == v_ceil else root + 1
    n = max(m - 1, 1)
    return n + 1, math.exp(s0 * math.log(mu0) / n)

  k = jnp.asarray(step).astype(jnp.int32)
  dtype = jnp.result_type(float)
  v = k.astype(dtype) / total_steps * span + s0 ** 2
  m0 = jnp.ceil(jnp.sqrt(v)).astype(jnp.int32)
  if span * span < 2 ** 31:
    # Exact correction of the float estimate (off by at most one): m is the
    # smallest integer with k <= floor((m^2 - s0^2) K / span). In int32 this is
    # exact for m <= s1 + 1, i.e. k <= K; past the end the float value is kept.
    def covers(m):
      a = jnp.clip(m * m - s0 ** 2, 0, span)
      return (m * m >= s0 ** 2) & (k <= _floor_mul_div(a, total_steps, span))
    exact = jnp.where(covers(m0 - 1), m0 - 1, jnp.where(covers(m0), m0, m0 + 1))
    m = jnp.where(m0 <= s1 + 1, exact, m0)
  else:  # too wide for int32 arithmetic: keep the float ceiling, as the official code.
    m = m0
  n = jnp.maximum(m - 1, 1)
  target_ema = jnp.exp(s0 * math.log(mu0) / n.astype(dtype))
  return n + 1, target_ema


# --------------------------------------------------------------------------- iCT

def ict_doubling_period(total_steps, s0=10, s1=1280):
  """K' = floor(K / (log2 floor(s1/s0) + 1)); 50k for K = 400k, s0 = 10, s1 = 1280."""
  return int(math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))


def ict_num_scales(step, total_steps, s0=10, s1=1280):
  """iCT's doubling curriculum: num_scales = min(s0 * 2^floor(k/K'), s1) + 1.

  K' = floor(K / (log2 floor(s1/s0) + 1)). For K = 400k this gives K' = 50k
  and 11, 21, 41, ..., 641, 1281 (then 1281 for the rest). Python int in,
  Python int out; jax scalar in, int32 out.
  """
  k_prime = max(ict_doubling_period(total_steps, s0, s1), 1)
  # Cap the exponent where s0 * 2^e already exceeds s1, so 2^e never overflows.
  max_exponent = max(math.ceil(math.log2(max(s1 / s0, 1))), 0)
  if is_host_number(step):
    exponent = min(int(step) // k_prime, max_exponent)
    return min(s0 * 2 ** exponent, s1) + 1
  exponent = jnp.minimum(jnp.asarray(step).astype(jnp.int32) // k_prime, max_exponent)
  return jnp.minimum(s0 * jnp.left_shift(jnp.int32(1), exponent), s1) + 1


def _erf_difference(a, b):
  """erf(b) - erf(a) for a <= b, via erfc in the tails to keep float32 precision."""
  erf, erfc = jax.scipy.special.erf, jax.scipy.special.erfc
  both_positive = a > 0
  both_negative = b < 0
  return jnp.where(both_positive, erfc(a) - erfc(b),
                   jnp.where(both_negative, erfc(-b) - erfc(-a), erf(b) - erf(a)))


@jax.jit
def ict_index_probs(sigmas_ascending, p_mean=-1.1, p_std=2.0):
  """iCT's discretised lognormal over adjacent pairs (sigma_i, sigma_{i+1}).

  p(i) proportional to erf((ln sigma_{i+1} - P_mean)/(sqrt(2) P_std))
                       - erf((ln sigma_i - P_mean)/(sqrt(2) P_std)),
  i = 0 .. N-2, normalised: the lognormal mass of each grid interval. Pairs of
  equal sigmas (the padding of `karras_grid_ascending(..., size=...)`) get 0.
  The student is sigma_{i+1}, the teacher sigma_i.

  Returns [N-1] probabilities in the grid's float dtype.
  """
  sigmas = jnp.asarray(sigmas_ascending)
  dtype = float_dtype(sigmas)
  z = (jnp.log(sigmas.astype(dtype)) - p_mean) / (math.sqrt(2.0) * p_std)
  mass = jnp.maximum(_erf_difference(z[:-1], z[1:]), 0)
  return mass / jnp.sum(mass)


@functools.partial(jax.jit, static_argnames=("shape",))
def ict_sample_pair(key, shape, sigmas_ascending, p_mean=-1.1, p_std=2.0):
  """Draws iCT (student t = sigma_{i+1}, teacher r = sigma_i) with i ~ `ict_index_probs`."""
  sigmas = jnp.asarray(sigmas_ascending)
  probs = ict_index_probs(sigmas, p_mean, p_std)
  index = jax.random.categorical(key, jnp.log(probs), shape=shape)
  return sigmas[index + 1], sigmas[index]


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def ct_sample_pair(key, shape, num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0, dtype=None):
  """Draws CT's (student t = t_{n+1}, teacher r = t_n), n uniform over the N-1 pairs.

  As the official JAX code: an index uniform on [0, N-2] of the grid, here
  ascending, so the teacher is exactly one grid step below the student and
  sigma_max.. sigma_min are all reachable. `num_scales` may be traced.
  """
  dtype = dtype or jnp.result_type(float)
  index = jax.random.randint(key, shape, 0, jnp.asarray(num_scales) - 1)
  index = index.astype(dtype)
  t = karras_sigma_at(index + 1, num_scales, sigma_min, sigma_max, rho)
  r = karras_sigma_at(index, num_scales, sigma_min, sigma_max, rho)
  return t, r


# --------------------------------------------------------------------------- weights

CONSISTENCY_WEIGHTINGS = ("uniform", "snr", "snrp1", "truncated_snr", "ict", "ect", "edm")


@functools.partial(jax.jit, static_argnames=("kind",))
def consistency_weight(t, r, kind="uniform", sigma_data=0.5):
  """Per-sample loss weight lambda(t, r) of a consistency pair (student t > teacher r).

  kinds:
    'uniform'        1 (CT CIFAR-10)
    'snr'            1/t^2; 'snrp1' 1/t^2 + 1; 'truncated_snr' max(1/t^2, 1) (CT code)
    'ict'            1/(t_{n+1} - t_n) = 1/(t - r) (iCT, on its discrete grid)
    'ect'            1/(t - r) (ECT CIFAR-10; same formula as 'ict', continuous r)
    'edm'            (t^2 + sigma_data^2)/(t sigma_data)^2 (ECT ImageNet 'snrpk')
  """
  t = jnp.asarray(t)
  dtype = float_dtype(t, jnp.asarray(r))
  t = t.astype(dtype)
  r = jnp.asarray(r, dtype)
  if kind == "uniform":
    return jnp.ones_like(t)
  if kind == "snr":
    return 1 / jnp.square(t)
  if kind == "snrp1":
    return 1 / jnp.square(t) + 1
  if kind == "truncated_snr":
    return jnp.maximum(1 / jnp.square(t), 1)
  if kind in ("ict", "ect"):
    return 1 / (t - r)
  if kind == "edm":
    return (jnp.square(t) + sigma_data ** 2) / jnp.square(t * sigma_data)
  raise ValueError(f"Unknown consistency weighting {kind!r}; choose from {CONSISTENCY_WEIGHTINGS}.")
