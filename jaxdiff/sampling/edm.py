"""EDM's deterministic / stochastic Heun sampler (Karras et al. 2022, Alg. 2).

Follows NVlabs/edm `generate.py` (`edm_sampler`) step for step:
  x_0 = latents * t_0, with t the Karras grid ending in 0;
  per step i: optional churn (gamma = min(S_churn/N, sqrt(2) - 1) when
  S_min <= t_i <= S_max) raising t_i to t_hat = (1 + gamma) t_i with fresh
  noise of std sqrt(t_hat^2 - t_i^2) * S_noise; an Euler step to t_{i+1};
  then the trapezoid (Heun) correction, except on the last step whose target
  is sigma = 0. That is 2N - 1 denoiser evaluations (35 for N = 18).

The N - 1 Heun steps run in one `lax.fori_loop` and the final Euler step after
it, so the compiled program has a fixed size whatever `num_steps` is.
Compute happens in the latents' dtype: pass float64 latents under x64 to
sample in float64 as EDM does.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxdiff.diffusion.precond import karras_sigmas

Array = jax.Array
# denoise_fn(x [B, ...], sigma [B]) -> D(x; sigma) [B, ...].
DenoiseFn = Callable[[Array, Array], Array]


def _as_float(x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def _churn_enabled(s_churn) -> bool:
  """Whether stochastic churn can be on; a traced s_churn counts as on."""
  try:
    return float(s_churn) > 0
  except TypeError:  # A tracer (jax.errors.ConcretizationTypeError).
    return True


def _churn(x, t_cur, key, s_churn, num_steps, s_min, s_max, s_noise):
  """EDM's stochastic churn: raise t_cur to t_hat = (1 + gamma) t_cur with fresh noise of std
  sqrt(t_hat^2 - t_cur^2) * S_noise, gamma = min(S_churn/N, sqrt(2) - 1) inside [S_min, S_max]."""
  dtype = x.dtype
  max_gamma = jnp.asarray(math.sqrt(2.0) - 1.0, dtype)
  gamma = jnp.where((s_min <= t_cur) & (t_cur <= s_max),
                    jnp.minimum(jnp.asarray(s_churn, dtype) / num_steps, max_gamma),
                    jnp.zeros((), dtype))
  t_hat = t_cur + gamma * t_cur
  noise = jax.random.normal(key, x.shape, dtype)
  # sqrt(t_hat^2 - t_cur^2) written as t_cur sqrt(gamma (2 + gamma)): under
  # jit, XLA may contract the difference of squares into an FMA, whose
  # rounding residual at gamma = 0 is +-1e-16 t^2 (NaN or 1e-8 t noise).
  noise_std = t_cur * jnp.sqrt(gamma * (2 + gamma))
  return x + noise_std * s_noise * noise, t_hat


def edm_sampler(denoise_fn: DenoiseFn,
                latents,
                num_steps: int = 18,
                sigma_min: float = 0.002,
                sigma_max: float = 80.0,
                rho: float = 7.0,
                s_churn: float = 0.0,
                s_min: float = 0.0,
                s_max: float = float("inf"),
                s_noise: float = 1.0,
                key: Optional[Array] = None) -> Array:
  """Samples with EDM's Heun sampler (last step Euler).

  Args:
    denoise_fn: `denoise_fn(x, sigma) -> D(x; sigma)`, `sigma` of shape `[B]`.
    latents: `[B, ...]` standard normal latents; scaled by sigma_max here.
    num_steps: N, a Python int (static under jit).
    sigma_min, sigma_max, rho: the Karras grid.
    s_churn, s_min, s_max, s_noise: EDM's stochasticity settings;
      `s_churn = 0` gives the deterministic sampler.
    key: PRNG key for the churn noise; required when `s_churn > 0` (or
      traced). Step i uses `fold_in(key, i)`.

  Returns:
    samples shaped and typed like `latents` (float).

  Raises:
    ValueError: `s_churn > 0` without a key, or `num_steps < 1`.
  """
  latents = _as_float(latents)
  dtype = latents.dtype
  batch = latents.shape[0]
  use_churn = _churn_enabled(s_churn)
  if use_churn and key is None:
    raise ValueError("edm_sampler: s_churn > 0 needs a PRNG `key`.")
  t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho, dtype=dtype)

  def denoise(x, t):
    return denoise_fn(x, jnp.full((batch,), t, dtype)).astype(dtype)

  def euler_step(i, x):
    t_cur, t_next = t_steps[i], t_steps[i + 1]
    x_hat, t_hat = x, t_cur
    if use_churn:
      x_hat, t_hat = _churn(x, t_cur, jax.random.fold_in(key, i), s_churn, num_steps, s_min,
                            s_max, s_noise)
    d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    return x_hat, t_hat, t_next, d_cur, x_next

  def heun_step(i, x):
    x_hat, t_hat, t_next, d_cur, x_next = euler_step(i, x)
    d_prime = (x_next - denoise(x_next, t_next)) / t_next
    return x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

  x = latents * t_steps[0]
  x = jax.lax.fori_loop(0, num_steps - 1, heun_step, x)
  return euler_step(num_steps - 1, x)[-1]
