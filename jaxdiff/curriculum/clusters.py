"""Noise-level clusters and cumulative curriculum stages.

Kim, Go, Kwon, Kim, "Denoising Task Difficulty-based Curriculum for Training
Diffusion Models" (arXiv 2403.10348, ICLR 2025); docs/curriculum.md#method.

The noise range is cut into N clusters C_0 .. C_{N-1}, cluster 0 holding the
lowest noise (the hardest denoising task) and cluster N-1 the highest (the
easiest). Curriculum stage n (1 <= n <= N) trains on the union of the first n
clusters of an *order*; the paper's order adds clusters from the easiest
(highest noise) down to the hardest, so stage N is the full distribution.

Two kinds of clusters:
  * "lognormal" (EDM, continuous sigma): equal-probability quantiles of the
    training distribution ln sigma ~ N(p_mean, p_std^2), edges
    exp(p_mean + p_std * Phi^{-1}(i / N)). (the exact rule is unverified;
    docs/curriculum.md#clusters)
  * "uniform" (DDPM-style integer timesteps t in [0, T)): equal-width
    intervals [i T / N, (i + 1) T / N). (secondary: a quote of the paper;
    docs/curriculum.md#clusters)
  * "snr", "logsnr" (integer timesteps): ANT's interval clustering of the
    schedule's SNR or log-SNR by dynamic programming (gohyojun15/ANT_diffusion;
    `snr_clusters.py`).

A stage is a *mask*: a tuple of N Python bools, hashable, meant to be passed
to `jax.jit` as a static argument so each stage compiles once. The samplers
below take the mask statically and draw exactly from the training
distribution restricted to the enabled clusters, by inverse CDF (no
rejection loops), also for the non-contiguous masks of the random order.
"""
from __future__ import annotations

import functools
import operator
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.noise import lognormal_quantile
from jaxdiff.diffusion.noise import lognormal_sigma

Array = jax.Array
Mask = Tuple[bool, ...]

KINDS = ("lognormal", "uniform", "snr", "logsnr")
ORDERS = ("easy_to_hard", "hard_to_easy", "random")


def _check_num_clusters(num_clusters) -> int:
  try:
    num_clusters = operator.index(num_clusters)
  except TypeError:
    raise TypeError(
        f"num_clusters must be a Python int, got {num_clusters!r}.") from None
  if num_clusters < 1:
    raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
  return num_clusters


def _check_mask(mask) -> Mask:
  """The mask as a tuple of Python bools; refuses traced or empty masks."""
  if isinstance(mask, jax.core.Tracer):
    raise TypeError(
        "mask must be static (a tuple of Python bools); pass it to jax.jit "
        "through static_argnums/static_argnames, not as a traced array.")
  mask = tuple(bool(m) for m in mask)
  if not mask:
    raise ValueError("mask must have at least one entry.")
  if not any(mask):
    raise ValueError(f"mask enables no cluster: {mask}.")
  return mask


def _shape(shape) -> Tuple[int, ...]:
  if isinstance(shape, int):
    return (shape,)
  return tuple(int(s) for s in shape)


def cluster_edges(num_clusters: int,
                  kind: str = "lognormal",
                  p_mean: float = -1.2,
                  p_std: float = 1.2,
                  num_timesteps: int = 1000,
                  betas=None) -> Array:
  """The `num_clusters - 1` inner cluster boundaries, ascending.

  Args:
    num_clusters: N, the number of clusters (the paper uses 20).
    kind: "lognormal": noise levels at the lognormal quantiles i / N,
      exp(p_mean + p_std * Phi^{-1}(i / N)), i = 1 .. N-1 (default float
      dtype). "uniform": integer timesteps floor(i * num_timesteps / N)
      (int32).
    p_mean, p_std: EDM's training distribution of ln sigma.
    num_timesteps: T of the discrete kinds.
    betas: the discrete schedule's T betas for "snr" / "logsnr" (default: DDPM's linear
      schedule over num_timesteps, `jaxdiff.diffusion.ddpm_betas`).

  Returns:
    `[N - 1]` array. Cluster i is [edges[i-1], edges[i]), with the outer
    bounds (0, inf) for sigma and (0, T) for timesteps.
  """
  num_clusters = _check_num_clusters(num_clusters)
  if kind == "lognormal":
    return _lognormal_edges(num_clusters, p_mean, p_std)
  if kind == "uniform":
    num_timesteps = operator.index(num_timesteps)
    inner = np.arange(1, num_clusters)
    return jnp.asarray(inner * num_timesteps // num_clusters, jnp.int32)
  if kind in ("snr", "logsnr"):
    from jaxdiff.curriculum.snr_clusters import snr_cluster_edges
    from jaxdiff.diffusion.ddpm import ddpm_betas
    betas = ddpm_betas(operator.index(num_timesteps)) if betas is None else betas
    return jnp.asarray(snr_cluster_edges(num_clusters, betas, kind), jnp.int32)
  raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


@functools.partial(jax.jit, static_argnums=0)
def _lognormal_edges(num_clusters: int, p_mean, p_std) -> Array:
  # The sampler clamps below edges computed the same way (`_edge_sigma`).
  inner = jnp.arange(1, num_clusters, dtype=jnp.result_type(float))
  return lognormal_quantile(inner / num_clusters, p_mean, p_std)


def _splitmix64_permutation(n: int, seed: int) -> Tuple[int, ...]:
  """A seeded permutation of range(n) that no library upgrade can change.

  Fisher-Yates driven by splitmix64 (Steele et al. 2014) in pure Python: a
  resumed run must rebuild the same cluster order years later, which numpy's
  and jax's generators do not promise across versions.
  """
  mask64 = (1 << 64) - 1
  state = seed & mask64
  order = list(range(n))
  for i in range(n - 1, 0, -1):
    state = (state + 0x9E3779B97F4A7C15) & mask64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
    z ^= z >> 31
    j = z % (i + 1)  # modulo bias < 2^-58: irrelevant for n <= 1000s.
    order[i], order[j] = order[j], order[i]
  return tuple(order)


def stage_order(num_clusters: int,
                order: str = "easy_to_hard",
                seed: int = 0) -> Tuple[int, ...]:
  """The order in which clusters join the training distribution.

  Args:
    num_clusters: N.
    order: "easy_to_hard" (the paper: highest noise, cluster N-1, first),
      "hard_to_easy" (anti-curriculum: cluster 0 first) or "random" (a
      permutation fixed by `seed`, stable across library versions).
    seed: used by "random" only.

  Returns:
    A tuple of the N cluster indices; stage n enables the first n of them.
  """
  num_clusters = _check_num_clusters(num_clusters)
  if order == "easy_to_hard":
    return tuple(range(num_clusters - 1, -1, -1))
  if order == "hard_to_easy":
    return tuple(range(num_clusters))
  if order == "random":
    return _splitmix64_permutation(num_clusters, operator.index(seed))
  raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")


def stage_mask(stage: int,
               num_clusters: int,
               order: str = "easy_to_hard",
               seed: int = 0) -> Mask:
  """Which clusters curriculum stage `stage` trains on (cumulative).

  Args:
    stage: 1 .. num_clusters.
    num_clusters: N.
    order, seed: see `stage_order`. The default is the paper's: stage 1
      enables only the highest-noise cluster N-1, stage N enables all.

  Returns:
    A tuple of N Python bools, index 0 = lowest noise; hashable, so usable as
    a static argument of `jax.jit`.
  """
  num_clusters = _check_num_clusters(num_clusters)
  stage = operator.index(stage)
  if not 1 <= stage <= num_clusters:
    raise ValueError(
        f"stage must be in [1, {num_clusters}] for {num_clusters} clusters, "
        f"got {stage}.")
  enabled = set(stage_order(num_clusters, order, seed)[:stage])
  return tuple(i in enabled for i in range(num_clusters))


def _enabled_runs(mask: Mask):
  """Maximal runs of adjacent enabled clusters, as integer pairs [lo, hi)."""
  runs = []
  for i, enabled in enumerate(mask):
    if not enabled:
      continue
    if runs and runs[-1][1] == i:
      runs[-1][1] = i + 1
    else:
      runs.append([i, i + 1])
  return [tuple(r) for r in runs]


def quantile_intervals(mask: Sequence[bool]) -> Tuple[Tuple[float, float], ...]:
  """The allowed quantile range of a mask, as merged half-open intervals.

  Cluster i covers the quantiles [i / N, (i + 1) / N); adjacent enabled
  clusters merge, so the paper's cumulative stages give a single interval
  [(N - n) / N, 1).

  Returns:
    Ascending, disjoint `(lo, hi)` pairs of Python floats.
  """
  mask = _check_mask(mask)
  n = len(mask)
  return tuple((lo / n, hi / n) for lo, hi in _enabled_runs(mask))


def _edge_sigma(index: int, n: int, p_mean, p_std, dtype) -> Array:
  """Edge `index` of `cluster_edges(n)`, computed exactly as it does."""
  return lognormal_quantile(jnp.asarray(index, dtype) / n, p_mean, p_std)


def _prev_float(x: Array) -> Array:
  return jnp.nextafter(x, jnp.zeros_like(x))


def sample_sigma_in_mask(key: Array,
                         shape,
                         mask: Sequence[bool],
                         p_mean: float = -1.2,
                         p_std: float = 1.2,
                         dtype=jnp.float32) -> Array:
  """Samples sigma from EDM's lognormal truncated to the enabled clusters.

  Exact inverse-CDF sampling, no rejection: u ~ U[0, m) with m the enabled
  probability mass (#enabled / N) is mapped piecewise onto the enabled
  quantile intervals, then ln sigma = p_mean + p_std * Phi^{-1}(u'). Works
  for the non-contiguous masks of the random order.

  When the mask is one contiguous range (every stage of the paper's order,
  and in particular the full mask of stage N) this is exactly
  `jaxdiff.diffusion.lognormal_sigma(key, shape, p_mean, p_std, (lo, hi),
  dtype)`, so at stage N the draws are bit-identical to a baseline run that
  samples with that function and the same key.

  Compiled once per (shape, mask, dtype). Inside a jitted train step the
  mask must be static too, e.g. `jax.jit(step, static_argnames="mask")`.

  Args:
    key: PRNG key.
    shape: output shape (an int or a tuple).
    mask: tuple of N bools, index 0 = lowest noise (see `stage_mask`).
    p_mean, p_std: mean and std of ln sigma; may be traced.
    dtype: output float dtype (sampling runs in at least float32).

  Returns:
    sigma of `shape` and `dtype`, finite, positive, and inside the enabled
    clusters of `cluster_edges(N, "lognormal", p_mean, p_std)` computed in
    the same dtype.
  """
  return _sample_sigma(key, _shape(shape), _check_mask(mask), p_mean, p_std,
                       jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 5))
def _sample_sigma(key, shape, mask, p_mean, p_std, dtype) -> Array:
  n = len(mask)
  runs = _enabled_runs(mask)
  # Upper noise bound of each run: float arithmetic can round u up to the
  # run's upper quantile, and sigma must never land in a disabled cluster,
  # so clamp just below that edge (the top run, ending at quantile 1, is
  # unbounded).
  uppers = [
      _prev_float(_edge_sigma(hi, n, p_mean, p_std, dtype)) if hi < n else
      jnp.asarray(jnp.inf, dtype) for _, hi in runs
  ]
  if len(runs) == 1:
    (lo, hi), = runs
    sigma = lognormal_sigma(key, shape, p_mean, p_std, (lo / n, hi / n),
                            dtype)
    # No-op clamp left out at the top so stage N is the baseline's graph.
    return sigma if hi == n else jnp.minimum(sigma, uppers[0])

  compute = jnp.promote_types(dtype, jnp.float32)
  lows = np.array([lo for lo, _ in runs], np.int64)
  sizes = np.array([hi - lo for lo, hi in runs], np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  # Work in units of clusters: v ~ U[0, #enabled), then shift each run's
  # slice of [0, #enabled) onto its place in [0, N) and divide by N.
  v = jax.random.uniform(key, shape, compute, 0.0, float(sizes.sum()))
  segment = jnp.searchsorted(jnp.asarray(starts[1:], compute), v, side="right")
  low = jnp.asarray(lows, compute)[segment]
  high = jnp.asarray(lows + sizes, compute)[segment]
  w = jnp.clip(v + (low - jnp.asarray(starts, compute)[segment]), low,
               _prev_float(high))
  sigma = lognormal_quantile(w / n, p_mean, p_std).astype(dtype)
  return jnp.minimum(sigma, jnp.stack(uppers)[segment])


def sample_timestep_in_mask(key: Array,
                            shape,
                            mask: Sequence[bool],
                            num_timesteps: int = 1000,
                  betas=None) -> Array:
  """Samples integer timesteps uniformly over the enabled clusters.

  Cluster i holds the integers [floor(i T / N), floor((i + 1) T / N)); the
  sample is uniform over the union of the enabled ones (exact, no
  rejection). With every cluster enabled this is exactly
  `jax.random.randint(key, shape, 0, T)`. Compiled once per (shape, mask,
  num_timesteps); inside an outer jit these must be static.

  Returns:
    int32 timesteps of `shape`.
  """
  mask = _check_mask(mask)
  num_timesteps = operator.index(num_timesteps)
  if num_timesteps < len(mask):
    raise ValueError(
        f"num_timesteps ({num_timesteps}) must be >= the number of clusters "
        f"({len(mask)}) so every cluster holds a timestep.")
  return _sample_timestep(key, _shape(shape), mask, num_timesteps)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sample_timestep(key, shape, mask, num_timesteps) -> Array:
  n = len(mask)
  bounds = [i * num_timesteps // n for i in range(n + 1)]
  segments = [(bounds[lo], bounds[hi]) for lo, hi in _enabled_runs(mask)]
  lows = np.array([lo for lo, _ in segments], np.int64)
  sizes = np.array([hi - lo for lo, hi in segments], np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  r = jax.random.randint(key, shape, 0, int(sizes.sum()), jnp.int32)
  if len(segments) == 1:
    return r + jnp.int32(lows[0])
  segment = jnp.searchsorted(jnp.asarray(starts[1:], jnp.int32), r,
                             side="right")
  offset = jnp.asarray(lows - starts, jnp.int32)
  return r + offset[segment]


def cluster_index(sigma, edges) -> Array:
  """The cluster each noise level (or timestep) falls in.

  Args:
    sigma: noise levels or integer timesteps, any shape.
    edges: the inner boundaries from `cluster_edges`, ascending.

  Returns:
    int32 array shaped like `sigma`, values in [0, N - 1]; a value equal to
    an edge belongs to the cluster above it (clusters are [lo, hi)).
  """
  sigma = jnp.asarray(sigma)
  edges = jnp.asarray(edges)
  return jnp.searchsorted(edges, sigma, side="right").astype(jnp.int32)
