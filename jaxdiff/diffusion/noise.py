"""Training noise distributions: EDM's lognormal, optionally truncated.

EDM (Karras et al. 2022, Sec. 5) draws ln sigma ~ N(P_mean, P_std^2) with
P_mean = -1.2, P_std = 1.2. The difficulty curriculum (Kim et al., ICLR 2025;
docs/curriculum.md) restricts training to the lognormal truncated to a
quantile range [lo, hi); we sample it exactly by inverse CDF:
  u ~ U[lo, hi),  ln sigma = P_mean + P_std * Phi^{-1}(u),
which with (lo, hi) = (0, 1) is exactly the untruncated lognormal, so
"curriculum off" and "last stage" use the same code path.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.scipy import special

Array = jax.Array


def _compute_dtype(dtype) -> Any:
  """float32 at least: Phi^{-1} in 16-bit floats is too coarse in the tails."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be floating, got {dtype}.")
  return jnp.promote_types(dtype, jnp.float32)


def _open_unit_interval(u: Array) -> Array:
  """Clip u into (0, 1) in its own dtype so Phi^{-1}(u) is finite."""
  finfo = jnp.finfo(u.dtype)
  smallest = jnp.asarray(finfo.tiny, u.dtype)
  largest = jnp.nextafter(jnp.asarray(1, u.dtype), jnp.asarray(0, u.dtype))
  return jnp.clip(u, smallest, largest)


def lognormal_cdf(sigma, p_mean: float = -1.2, p_std: float = 1.2) -> Array:
  """P(Sigma <= sigma) for ln Sigma ~ N(p_mean, p_std^2)."""
  sigma = jnp.asarray(sigma)
  if not jnp.issubdtype(sigma.dtype, jnp.floating):
    sigma = sigma.astype(jnp.result_type(float))
  return special.ndtr((jnp.log(sigma) - p_mean) / p_std)


def lognormal_quantile(u, p_mean: float = -1.2, p_std: float = 1.2) -> Array:
  """The inverse of `lognormal_cdf`: exp(p_mean + p_std Phi^{-1}(u)).

  u is clipped into the open interval (0, 1) of its dtype, so the result is
  always finite and positive.
  """
  u = jnp.asarray(u)
  if not jnp.issubdtype(u.dtype, jnp.floating):
    u = u.astype(jnp.result_type(float))
  u = _open_unit_interval(u)
  return jnp.exp(p_mean + p_std * special.ndtri(u))


def lognormal_sigma(key: Array,
                    shape: Sequence[int],
                    p_mean: float = -1.2,
                    p_std: float = 1.2,
                    quantile_range=(0.0, 1.0),
                    dtype=jnp.float32) -> Array:
  """Samples sigma from a lognormal truncated to a quantile range.

  ln sigma = p_mean + p_std * Phi^{-1}(u), u ~ U[lo, hi), so sigma lies in
  [lognormal_quantile(lo), lognormal_quantile(hi)) with the lognormal's shape
  inside. No rejection: every draw is used, and the cost does not depend on
  how narrow the range is. `lo`, `hi` may be traced scalars.

  Args:
    key: PRNG key.
    shape: output shape, e.g. `(batch,)`.
    p_mean, p_std: mean and std of ln sigma (EDM: -1.2, 1.2).
    quantile_range: `(lo, hi)` with 0 <= lo < hi <= 1.
    dtype: output float dtype. Sampling runs in at least float32.

  Returns:
    sigma of `shape` and `dtype`, finite and > 0.
  """
  lo, hi = quantile_range
  compute = _compute_dtype(dtype)
  u = jax.random.uniform(key, tuple(shape), compute,
                         minval=jnp.asarray(lo, compute),
                         maxval=jnp.asarray(hi, compute))
  sigma = lognormal_quantile(u, p_mean, p_std)
  return sigma.astype(dtype)
