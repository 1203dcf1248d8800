"""Pure schedules of Adversarial Consistency Training (ACT).

Kong et al., "ACT-Diffusion: Efficient Adversarial Consistency Training for
One-step Diffusion Models", CVPR 2024 (arXiv 2311.14097); official code
kong13661/ACT (`train_cifar10.py`, `train_imagenet64.py`). docs/act.md.

* `act_schedule`: number of grid bins N(k) and the teacher/sampling EMA mu(k).
* `act_time_weight`: the power-law weight w(t_j) of the GAN terms (ImageNet-64
  and LSUN recipes; CIFAR-10 uses w = 1).
* `ada_update`: the R1-driven adaptive-augmentation probability.
"""
from __future__ import annotations

import math

import jax.numpy as jnp

# ACT's schedules follow the consistency family's conventions: host numbers in, host
# numbers out; traced in, traced out.
from jaxdiff.objectives.consistency.math import float_dtype, is_host_number


def act_schedule(progress, n_min=2, n_max=150, mu0=0.9):
  """(num_bins, ema_decay) of ACT at training progress k/K in [0, 1].

    num_bins  = round(sqrt(progress (n_max^2 - n_min^2) + n_min^2))   (half to even)
    ema_decay = exp(n_min ln(mu0) / (num_bins - 1))

  As the official code (`bins`, `ema_decay` properties), which rounds with
  Python's `round` (half to even) where CT takes a ceiling. Progress is
  `global_step / estimated_stepping_batches` there; Lightning doubles both, so
  it is iteration / total iterations. CIFAR-10: 2 -> 150 bins, mu 0.81 ->
  0.99859; ImageNet-64 (n_max = 200, mu0 = 0.95): mu 0.9025 -> 0.99948.

  Args:
    progress: Python float (evaluated in float64 like the official code, giving
      Python (int, float)) or a jax float scalar (evaluated in its dtype,
      giving (int32, float) arrays). A float32 progress can put a handful of
      steps (<= 3 of 400k for the published recipes) into the neighbouring bin
      count; pass a float64 / host value where that matters.
  """
  span = n_max ** 2 - n_min ** 2
  if is_host_number(progress):
    num_bins = round(math.sqrt(float(progress) * span + n_min ** 2))
    return num_bins, math.exp(n_min * math.log(mu0) / (num_bins - 1))
  progress = jnp.asarray(progress)
  dtype = float_dtype(progress)
  bins_float = jnp.round(jnp.sqrt(progress.astype(dtype) * span + n_min ** 2))  # half to even
  ema_decay = jnp.exp(n_min * math.log(mu0) / (bins_float - 1))
  return bins_float.astype(jnp.int32), ema_decay


def act_time_weight(j, num_bins, lam0=0.6, w_mid=0.2):
  """ACT's GAN weight w(t_j) = (j / (num_bins - 1))^(log_0.5(w_mid / lam0)).

  j is the (possibly fractional) index of the noise level on the current
  Karras grid, 0 at sigma_min and num_bins - 1 at sigma_max. The exponent is
  log_0.5(1/3) = 1.58496 for the defaults, so lam0 * w is lam0 at sigma_max,
  w_mid at the grid midpoint and 0 at sigma_min (official `disc_weight`).
  Negative j (from rounding in an index inversion) is treated as 0.
  """
  j = jnp.asarray(j)
  dtype = float_dtype(j)
  exponent = math.log(w_mid / lam0) / math.log(0.5)
  frac = jnp.maximum(j.astype(dtype), 0) / (jnp.asarray(num_bins, dtype) - 1)
  return jnp.power(frac, exponent)


def ada_update(p, r1_ema, r1, threshold, batch_size, interval=16, length=500000, ema_rate=0.93):
  """One ACT adaptive-augmentation update, run whenever R1 is computed.

    r1_ema <- ema_rate * r1_ema + (1 - ema_rate) * r1
    p      <- clip(p + batch_size * interval / length, 0, 1)  if r1_ema > threshold
              clip(p - batch_size * interval / length, 0, 1)  otherwise

  As the official `update_r1_ema_and_aug_p`: the comparison uses the updated
  EMA and is strict, so r1_ema == threshold lowers p. `batch_size` is the
  official B_tot = 2 * per-device batch * devices (160 for CIFAR-10 on one GPU,
  a step of 0.00512). Initialise r1_ema to the threshold and p to 0.

  Returns:
    (p, r1_ema) as jax arrays in the float dtype of (p, r1_ema, r1).
  """
  dtype = float_dtype(jnp.asarray(p), jnp.asarray(r1_ema), jnp.asarray(r1))
  p = jnp.asarray(p, dtype)
  r1_ema = ema_rate * jnp.asarray(r1_ema, dtype) + (1 - ema_rate) * jnp.asarray(r1, dtype)
  step = batch_size * interval / length
  p = jnp.clip(p + jnp.where(r1_ema > threshold, step, -step).astype(dtype), 0, 1)
  return p, r1_ema
