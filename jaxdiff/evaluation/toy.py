"""Sample-based distances for low-dimensional toy data (jit-able).

* `sliced_wasserstein`: the sliced 2-Wasserstein distance (Rabin et al. 2011;
  Bonneel et al. 2015): project both point clouds on random unit directions,
  compare the sorted 1-D projections (the exact 1-D W2 via quantiles), and
  average the squared distances over directions.
* `mmd_rbf`: the squared maximum mean discrepancy (Gretton et al. 2012) with a
  sum of Gaussian kernels of several bandwidths, biased (V-statistic)
  estimator, so it is >= 0 and exactly 0 for identical samples.

Both compute in the inputs' float dtype and accept numpy arrays.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_points(x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if x.ndim != 2:
    raise ValueError(f"expected points [n, d], got shape {x.shape}.")
  return x


def _quantiles_on_grid(sorted_proj: Array, grid: Array) -> Array:
  """Empirical quantile function of sorted samples [n, P] at levels in (0, 1)."""
  n = sorted_proj.shape[0]
  index = jnp.clip(jnp.floor(grid * n).astype(jnp.int32), 0, n - 1)
  return sorted_proj[index]


def sliced_wasserstein(x, y, key: Array, num_projections: int = 128) -> Array:
  """Sliced 2-Wasserstein distance between point clouds x [n, d], y [m, d].

  Args:
    x, y: samples; n and m may differ (the 1-D distances are then computed
      between empirical quantile functions on a common grid of max(n, m)
      levels, which is exact when n == m).
    key: PRNG key for the random directions (same key, same directions).
    num_projections: number of random directions (static).

  Returns:
    sqrt(mean_theta W2^2(theta.x, theta.y)), a scalar.
  """
  x, y = _as_points(x), _as_points(y)
  dtype = jnp.promote_types(x.dtype, y.dtype)
  x, y = x.astype(dtype), y.astype(dtype)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"dimension mismatch: {x.shape} vs {y.shape}.")
  directions = jax.random.normal(key, (x.shape[1], num_projections), dtype)
  directions = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
  proj_x = jnp.sort(x @ directions, axis=0)
  proj_y = jnp.sort(y @ directions, axis=0)
  if proj_x.shape[0] != proj_y.shape[0]:
    levels = max(proj_x.shape[0], proj_y.shape[0])
    grid = (jnp.arange(levels, dtype=dtype) + 0.5) / levels
    proj_x = _quantiles_on_grid(proj_x, grid)
    proj_y = _quantiles_on_grid(proj_y, grid)
  return jnp.sqrt(jnp.mean((proj_x - proj_y) ** 2))


def _squared_distances(a: Array, b: Array) -> Array:
  # Exact differences (not the |a|^2 + |b|^2 - 2ab expansion): for toy data
  # of a few thousand points the [n, m, d] tensor is small, and it keeps
  # MMD(x, x) exactly 0.
  return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)


def mmd_rbf(x, y, bandwidths: Sequence[float] = (0.05, 0.2, 1.0, 5.0)) -> Array:
  """Squared MMD with k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)).

  Args:
    x, y: samples `[n, d]`, `[m, d]`.
    bandwidths: kernel length scales h (a sum of kernels is a kernel; several
      scales make the statistic sensitive both to mode placement and to
      mode width).

  Returns:
    The biased estimate mean k(x, x') + mean k(y, y') - 2 mean k(x, y), >= 0
    (means over all pairs, diagonals included). Its bias above the true
    MMD^2 is at most len(bandwidths) * (1/n + 1/m), so compare values at
    equal sample sizes.
  """
  x, y = _as_points(x), _as_points(y)
  dtype = jnp.promote_types(x.dtype, y.dtype)
  x, y = x.astype(dtype), y.astype(dtype)
  scales = jnp.asarray(bandwidths, dtype).reshape(-1)

  def mean_kernel(a, b):
    d2 = _squared_distances(a, b)
    return jnp.mean(sum(jnp.exp(-d2 / (2 * h**2)) for h in scales))

  mmd2 = mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)
  return jnp.maximum(mmd2, 0.0)
