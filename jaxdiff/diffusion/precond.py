"""EDM and consistency-model preconditioning, loss weight and the Karras grid.

References:
  Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
  Generative Models" (EDM), Table 1 and Eq. 5-8; NVlabs/edm
  `training/networks.py` (EDMPrecond) and `generate.py` (time-step grid).
  Song et al. 2023, "Consistency Models", Appendix C (boundary-conditioned
  c_skip / c_out); openai/consistency_models_cifar10.

All functions are pure, jit-able and broadcast over the shape of `sigma`.
They compute in sigma's floating dtype (integers are promoted to the default
float dtype), so float64 sigma gives float64 coefficients under x64.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(x) -> Array:
  """`x` as a floating jax array, keeping an existing float dtype."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def edm_precond(sigma, sigma_data: float = 0.5):
  """EDM preconditioning coefficients (Karras et al. 2022, Table 1).

  D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise).

  Args:
    sigma: noise levels, any shape.
    sigma_data: assumed standard deviation of the data.

  Returns:
    `(c_skip, c_out, c_in, c_noise)`, each shaped like `sigma`:
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4.
  """
  sigma = _as_float(sigma)
  sd = jnp.asarray(sigma_data, sigma.dtype)
  total_var = sigma**2 + sd**2
  c_skip = sd**2 / total_var
  c_out = sigma * sd / jnp.sqrt(total_var)
  c_in = 1 / jnp.sqrt(total_var)
  c_noise = jnp.log(sigma) / 4
  return c_skip, c_out, c_in, c_noise


def cm_precond(sigma, sigma_min: float = 0.002, sigma_data: float = 0.5):
  """Consistency-model coefficients with the boundary condition at sigma_min.

  Song et al. 2023 (Consistency Models), Appendix C:
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
    c_out  = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
  so c_skip(sigma_min) = 1 and c_out(sigma_min) = 0 *exactly* (the difference
  `sigma - sigma_min` is computed in sigma's dtype and is exactly 0 there),
  which makes f(x, sigma_min) == x bit for bit. c_in and c_noise are EDM's.

  Returns:
    `(c_skip, c_out, c_in, c_noise)`, each shaped like `sigma`.
  """
  sigma = _as_float(sigma)
  sd = jnp.asarray(sigma_data, sigma.dtype)
  offset = sigma - jnp.asarray(sigma_min, sigma.dtype)
  c_skip = sd**2 / (offset**2 + sd**2)
  c_out = offset * sd / jnp.sqrt(sigma**2 + sd**2)
  c_in = 1 / jnp.sqrt(sigma**2 + sd**2)
  c_noise = jnp.log(sigma) / 4
  return c_skip, c_out, c_in, c_noise


# EDM's VP and VE formulations (Karras et al. 2022, Table 1; NVlabs/edm `VPPrecond`,
# `VEPrecond`, `VPLoss`, `VELoss`), the baselines STF also reports: docs/edm.md#vp-and-ve.
VP_DEFAULTS = dict(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, M=1000)
VE_DEFAULTS = dict(sigma_min=0.02, sigma_max=100.0)


def vp_sigma(t, beta_d: float = 19.9, beta_min: float = 0.1) -> Array:
  """VP's noise level at time t: sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
  t = _as_float(t)
  return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma, beta_d: float = 19.9, beta_min: float = 0.1) -> Array:
  """The time t with vp_sigma(t) = sigma."""
  sigma = _as_float(sigma)
  return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def vp_precond(sigma, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
  """VP preconditioning: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1),
  c_noise = (M - 1) t(sigma): the DDPM++ network predicts the noise, at DDPM's time scale."""
  sigma = _as_float(sigma)
  return (jnp.ones_like(sigma), -sigma, 1 / jnp.sqrt(sigma**2 + 1),
          (M - 1) * vp_sigma_inv(sigma, beta_d, beta_min))


def ve_precond(sigma):
  """VE preconditioning: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""
  sigma = _as_float(sigma)
  return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(0.5 * sigma)


def vp_ve_loss_weight(sigma) -> Array:
  """VP's and VE's loss weight, lambda(sigma) = 1 / sigma^2 (EDM `VPLoss`, `VELoss`)."""
  sigma = _as_float(sigma)
  return 1 / sigma**2


def edm_loss_weight(sigma, sigma_data: float = 0.5) -> Array:
  """EDM's loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2.

  It equals 1 / c_out(sigma)^2, so the effective target of F has unit weight.
  """
  sigma = _as_float(sigma)
  sd = jnp.asarray(sigma_data, sigma.dtype)
  return (sigma**2 + sd**2) / (sigma * sd) ** 2


def karras_sigmas(num_steps: int,
                  sigma_min: float = 0.002,
                  sigma_max: float = 80.0,
                  rho: float = 7.0,
                  *,
                  dtype: Optional[Any] = None) -> Array:
  """The EDM sampling grid of `generate.py`, with a final 0 appended.

  sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho for i = 0..N-1, then sigma_N = 0.

  The two ends are pinned to `sigma_max` and `sigma_min` exactly (the power
  round trip would otherwise be off by an ulp). With `num_steps == 1` the
  grid is `[sigma_max, 0]` (EDM's formula divides 0 by 0 there).

  Args:
    num_steps: N, the number of sampling steps (a Python int).
    sigma_min, sigma_max, rho: grid parameters (EDM defaults).
    dtype: float dtype of the result; default: the default float dtype
      (float32, or float64 when x64 is enabled).

  Returns:
    `[num_steps + 1]` descending noise levels ending in 0.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  dtype = jnp.result_type(float) if dtype is None else dtype
  sigma_min = jnp.asarray(sigma_min, dtype)
  sigma_max = jnp.asarray(sigma_max, dtype)
  rho = jnp.asarray(rho, dtype)
  fraction = jnp.arange(num_steps, dtype=dtype) / max(num_steps - 1, 1)
  inv_rho = 1 / rho
  grid = (sigma_max**inv_rho + fraction *
          (sigma_min**inv_rho - sigma_max**inv_rho))**rho
  grid = grid.at[0].set(sigma_max)
  if num_steps > 1:
    grid = grid.at[-1].set(sigma_min)
  return jnp.concatenate([grid, jnp.zeros((1,), dtype)])


# `apply_fn(params, x_in, c_noise, class_labels, augment_labels, train,
# dropout_key) -> F`: the raw network, adapted by the trainer.
RawNetworkFn = Callable[..., Array]

_PRECONDITIONERS = ("edm", "cm", "vp", "ve")


def denoise(apply_fn: RawNetworkFn,
            params,
            x,
            sigma,
            *,
            sigma_data: float = 0.5,
            class_labels=None,
            augment_labels=None,
            train: bool = False,
            dropout_key=None,
            precond: str = "edm",
            sigma_min: float = 0.002,
            noise_label: str = "log") -> Array:
  """The preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

  Args:
    apply_fn: the raw network F, called as `apply_fn(params, c_in * x,
      c_noise, class_labels, augment_labels, train, dropout_key)` with
      `c_noise` of shape `[B]`.
    params: network parameters, passed through.
    x: noisy inputs `[B, ...]`.
    sigma: noise levels `[B]` (a scalar is broadcast to `[B]`).
    sigma_data: data standard deviation.
    class_labels, augment_labels, train, dropout_key: passed through.
    precond: `"edm"` (EDM, boundary at sigma = 0), `"cm"` (consistency
      model, f(x, sigma_min) = x exactly), or EDM's `"vp"` / `"ve"` baselines
      (default VP/VE constants; sigma_data unused).
    sigma_min: the CM boundary; used only with `precond="cm"`.
    noise_label: what the network's noise embedding receives: `"log"`
      (EDM's c_noise = ln(sigma)/4, also CT-JAX's and ECT's) or `"sigma"`
      (the raw sigma, as ACT's code feeds its diffusers UNet;
      docs/consistency.md#parameterisation-and-boundary-condition).

  Returns:
    D(x; sigma), shaped and typed like `x`. The coefficients are computed in
    x's dtype; the network output is cast to x's dtype before mixing.
  """
  x = _as_float(x)
  batch = x.shape[0]
  sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (batch,))
  if precond == "edm":
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
  elif precond == "cm":
    c_skip, c_out, c_in, c_noise = cm_precond(sigma, sigma_min, sigma_data)
  elif precond == "vp":
    c_skip, c_out, c_in, c_noise = vp_precond(sigma)
  elif precond == "ve":
    c_skip, c_out, c_in, c_noise = ve_precond(sigma)
  else:
    raise ValueError(
        f"precond must be one of {_PRECONDITIONERS}, got {precond!r}.")
  if noise_label == "sigma":
    c_noise = sigma
  elif noise_label != "log":
    raise ValueError(f"noise_label must be 'log' or 'sigma', got {noise_label!r}.")
  expand = lambda c: c.reshape((batch,) + (1,) * (x.ndim - 1))
  f_out = apply_fn(params, expand(c_in) * x, c_noise, class_labels,
                   augment_labels, train, dropout_key)
  return expand(c_skip) * x + expand(c_out) * f_out.astype(x.dtype)
