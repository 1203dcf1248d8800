"""Tools for the curriculum paper's observational study of task difficulty.

Kim, Go, Kwon, Kim (arXiv 2403.10348, ICLR 2025), docs/curriculum.md#the-difficulty-study: lower
timesteps (less noise) are harder, measured by (i) slower convergence of the
per-cluster loss and (ii) a larger relative entropy between the noisy
distributions of consecutive timesteps. The estimators below are ours (the
paper's exact protocol is unverified).

Timestep convention (DDPM code, e.g. diffusers): timesteps are the indices
t = 0 .. T-1 of `alphas_cumprod`, with alphas_cumprod[t] = prod_{s<=t}
(1 - beta_s), beta = linspace(beta_start, beta_end, T); so timestep 0 already
carries one step of noise. "KL at t" is KL(q_{t-1} || q_t) between the
distributions at indices t-1 and t, for t = 1 .. T-1. With x0^2 = 0.25 per
dimension this reproduces the table in docs/curriculum.md#the-difficulty-study (t=1: 0.121, 2: 0.0517, ...,
999: 5.2e-10); the 1-based convention (alphas_cumprod[0] = 1) would instead
make KL at t=1 infinite, and shifting by one gives 0.0517 at t=1.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.noise import lognormal_quantile

Array = jax.Array


def _float_dtype(dtype):
  return jnp.result_type(float) if dtype is None else jnp.dtype(dtype)


def _ddpm_log_alphas(num_timesteps, beta_start, beta_end, dtype):
  """betas and log(alphas_cumprod), accurate where alphas_cumprod ~ 1."""
  betas = jnp.linspace(beta_start, beta_end, num_timesteps, dtype=dtype)
  return betas, jnp.cumsum(jnp.log1p(-betas))


def ddpm_alphas_cumprod(num_timesteps: int = 1000,
                        beta_start: float = 1e-4,
                        beta_end: float = 0.02,
                        dtype=None) -> Array:
  """DDPM's alphas_cumprod for a linear beta schedule (Ho et al. 2020).

  Returns:
    `[T]` array, entry t = prod_{s<=t} (1 - beta_s) (0-based), in `dtype`
    (default: the default float dtype).
  """
  return _alphas_cumprod(num_timesteps, beta_start, beta_end,
                         _float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _alphas_cumprod(num_timesteps, beta_start, beta_end, dtype):
  return jnp.exp(_ddpm_log_alphas(num_timesteps, beta_start, beta_end,
                                  dtype)[1])


def _x_minus_log1p_x(x: Array) -> Array:
  """x - log(1 + x) without cancellation for small |x| (it is ~ x^2 / 2)."""
  series = x * x * (0.5 - x * (1 / 3 - x * (0.25 - x / 5)))
  safe = jnp.where(jnp.abs(x) < 1e-2, 0.5, x)
  return jnp.where(jnp.abs(x) < 1e-2, series, safe - jnp.log1p(safe))


def ddpm_consecutive_kl(x0_sq_per_dim=0.25,
                        num_timesteps: int = 1000,
                        beta_start: float = 1e-4,
                        beta_end: float = 0.02,
                        dtype=None):
  """Closed-form per-dimension KL(q(x_{t-1}|x0) || q(x_t|x0)), t = 1..T-1.

  With q(x_t | x0) = N(sqrt(abar_t) x0, v_t I), v_t = 1 - abar_t
  (docs/curriculum.md#the-difficulty-study):
    KL = 1/2 [r - 1 - ln r] + (sqrt(abar_{t-1}) - sqrt(abar_t))^2 x0^2 / (2 v_t),
  r = v_{t-1} / v_t, per dimension. Evaluated without cancellation
  (abar_{t-1} - abar_t = abar_{t-1} beta_t, v_t = -expm1(ln abar_t)), so it is
  accurate down to t = T-1 even in float32. See the module docstring for the
  timestep convention.

  Args:
    x0_sq_per_dim: x0^2 per dimension (0.25: data of std 0.5); broadcasts
      against the output's leading dims, e.g. shape [k, 1].
    num_timesteps, beta_start, beta_end: the linear DDPM schedule.
    dtype: float dtype (default: the default float dtype).

  Returns:
    `(t, kl)`: t = arange(1, T) (int32) and kl of shape
    `x0_sq_per_dim.shape + [T - 1]` with kl[..., i] the KL at t[i].
  """
  dtype = _float_dtype(dtype)
  kl = _consecutive_kl(x0_sq_per_dim, num_timesteps, beta_start, beta_end,
                       dtype)
  return jnp.arange(1, num_timesteps, dtype=jnp.int32), kl


@functools.partial(jax.jit, static_argnums=(1, 4))
def _consecutive_kl(x0_sq_per_dim, num_timesteps, beta_start, beta_end,
                    dtype):
  betas, log_alphas = _ddpm_log_alphas(num_timesteps, beta_start, beta_end,
                                       dtype)
  variances = -jnp.expm1(log_alphas)  # v_t = 1 - abar_t.
  alphas = jnp.exp(log_alphas)
  v_next = variances[1:]
  beta_next = betas[1:]
  # r - 1 = (v_{t-1} - v_t) / v_t = -(abar_{t-1} beta_t) / v_t.
  ratio_minus_one = -(alphas[:-1] * beta_next) / v_next
  variance_term = 0.5 * _x_minus_log1p_x(ratio_minus_one)
  # sqrt(abar_{t-1}) - sqrt(abar_t) = sqrt(abar_{t-1}) (1 - sqrt(1 - beta_t)).
  mean_gap = jnp.sqrt(alphas[:-1]) * beta_next / (1 + jnp.sqrt(1 - beta_next))
  x0_sq = jnp.asarray(x0_sq_per_dim, dtype)[..., None]
  return variance_term + mean_gap**2 * x0_sq / (2 * v_next)


def _mixture_log_density(x: Array, means: Array, variance: Array) -> Array:
  """log (1/n) sum_i N(x; means_i, variance I) for x [m, d], means [n, d]."""
  d = x.shape[-1]
  # ||x - mu||^2 by the matmul expansion (docs/implementation.md#pairwise-distances): O(m n) memory.
  sq = (jnp.sum(x * x, -1)[:, None] + jnp.sum(means * means, -1)[None, :] -
        2 * x @ means.T)
  sq = jnp.maximum(sq, 0)
  log_norm = -0.5 * d * jnp.log(2 * jnp.pi * variance)
  return (jax.nn.logsumexp(-sq / (2 * variance), axis=-1) + log_norm -
          jnp.log(means.shape[0]).astype(x.dtype))


def marginal_kl_mc(key: Array,
                   reference: Array,
                   t_values,
                   num_samples: int,
                   alphas_cumprod: Optional[Array] = None) -> Array:
  """Monte-Carlo KL(p_{t-1} || p_t) between DDPM marginals (docs/curriculum.md).


  p_t is the noisy empirical distribution of a reference set:
  p_t(x) = (1/n) sum_i N(x; sqrt(abar_t) y_i, (1 - abar_t) I). The estimate
  is mean_m [log p_{t-1}(x_m) - log p_t(x_m)] with x_m ~ p_{t-1}, the
  log-densities by logsumexp over the reference set (STF's machinery).
  Caveat (spec): in high dimension at small t this degenerates to
  nearest-neighbour terms; squared distances use the matmul expansion, so
  prefer float64 (x64) references there.

  Args:
    key: PRNG key.
    reference: `[n, d]` reference points y_i (flatten images first).
    t_values: `[k]` integer timesteps, each in [1, T-1] (same convention as
      `ddpm_consecutive_kl`).
    num_samples: Monte-Carlo samples per timestep (static).
    alphas_cumprod: `[T]`; default `ddpm_alphas_cumprod()` in the
      reference's dtype.

  Returns:
    `[k]` KL estimates in nats for the whole vector (divide by d for
    per-dimension values), in the reference's float dtype.
  """
  reference = jnp.asarray(reference)
  if not jnp.issubdtype(reference.dtype, jnp.floating):
    reference = reference.astype(jnp.result_type(float))
  if reference.ndim != 2:
    raise ValueError(f"reference must be [n, d], got shape {reference.shape}.")
  dtype = reference.dtype
  if alphas_cumprod is None:
    alphas_cumprod = ddpm_alphas_cumprod(dtype=dtype)
  alphas_cumprod = jnp.asarray(alphas_cumprod, dtype)
  t_values = jnp.asarray(t_values, jnp.int32)
  if not isinstance(t_values, jax.core.Tracer):
    t_host = np.asarray(t_values)
    if np.any(t_host < 1) or np.any(t_host > alphas_cumprod.shape[0] - 1):
      raise ValueError(
          f"t_values must lie in [1, {alphas_cumprod.shape[0] - 1}], got "
          f"{t_host.tolist()}.")
  return _marginal_kl(key, reference, t_values, int(num_samples),
                      alphas_cumprod)


@functools.partial(jax.jit, static_argnums=3)
def _marginal_kl(key, reference, t_values, num_samples, alphas_cumprod):
  n, d = reference.shape
  dtype = reference.dtype

  def one_timestep(t, key):
    a_prev, a_t = alphas_cumprod[t - 1], alphas_cumprod[t]
    pick_key, noise_key = jax.random.split(key)
    idx = jax.random.randint(pick_key, (num_samples,), 0, n)
    noise = jax.random.normal(noise_key, (num_samples, d), dtype)
    x = jnp.sqrt(a_prev) * reference[idx] + jnp.sqrt(1 - a_prev) * noise
    log_p_prev = _mixture_log_density(x, jnp.sqrt(a_prev) * reference,
                                      1 - a_prev)
    log_p_t = _mixture_log_density(x, jnp.sqrt(a_t) * reference, 1 - a_t)
    return jnp.mean(log_p_prev - log_p_t)

  keys = jax.random.split(key, t_values.shape[0])
  return jax.lax.map(lambda args: one_timestep(*args), (t_values, keys))


def iterations_to_converge(loss_curve,
                           eps: float = 0.05,
                           smoothing: int = 1,
                           mode: str = "first") -> Array:
  """Iterations until a loss curve is within (1 + eps) of its final value.

  docs/curriculum.md#the-difficulty-study: "iterations to reach (1 + eps) x final
  loss". The curve is first smoothed by a trailing moving average over `smoothing` points
  (shorter at the start); the final value is the last smoothed point f.
  "Within" means |s_k - f| <= eps |f|.

  Args:
    loss_curve: `[..., K]` losses, iteration index last.
    eps: relative tolerance.
    smoothing: moving-average length (1: none).
    mode: "first": the first k within the band; "stay": the first k from
      which the curve stays within the band to the end.

  Returns:
    int32 iteration indices, shape `[...]`. Always defined (k = K-1 is within
    the band).
  """
  curve = jnp.asarray(loss_curve)
  if not jnp.issubdtype(curve.dtype, jnp.floating):
    curve = curve.astype(jnp.result_type(float))
  if smoothing < 1:
    raise ValueError(f"smoothing must be >= 1, got {smoothing}.")
  if mode not in ("first", "stay"):
    raise ValueError(f"mode must be 'first' or 'stay', got {mode!r}.")
  return _iterations_to_converge(curve, eps, smoothing, mode)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _iterations_to_converge(curve, eps, smoothing, mode):
  length = curve.shape[-1]
  csum = jnp.cumsum(curve, axis=-1)
  lagged = jnp.concatenate(
      [jnp.zeros(curve.shape[:-1] + (smoothing,), curve.dtype), csum],
      axis=-1)[..., :length]
  counts = jnp.minimum(jnp.arange(1, length + 1), smoothing).astype(curve.dtype)
  smoothed = (csum - lagged) / counts
  final = smoothed[..., -1:]
  inside = jnp.abs(smoothed - final) <= eps * jnp.abs(final)
  if mode == "stay":
    # inside from k to the end <=> no outside point at index >= k.
    inside = jnp.flip(jnp.cumprod(jnp.flip(inside, -1), axis=-1), -1) > 0
  return jnp.argmax(inside, axis=-1).astype(jnp.int32)


def per_cluster_mean(values, cluster_ids, num_clusters: int):
  """Mean of `values` per cluster, e.g. the per-cluster training loss.

  Args:
    values: `[B]` per-example values.
    cluster_ids: `[B]` ints in [0, num_clusters) (from `cluster_index`).
    num_clusters: N (static).

  Returns:
    `(means, counts)`, each `[N]`; the mean of an empty cluster is NaN.
  """
  return _per_cluster_mean(jnp.asarray(values), jnp.asarray(cluster_ids),
                           int(num_clusters))


@functools.partial(jax.jit, static_argnums=2)
def _per_cluster_mean(values, cluster_ids, num_clusters):
  sums = jax.ops.segment_sum(values, cluster_ids, num_clusters)
  counts = jax.ops.segment_sum(jnp.ones_like(values), cluster_ids,
                               num_clusters)
  means = jnp.where(counts > 0, sums / jnp.maximum(counts, 1), jnp.nan)
  return means, counts.astype(jnp.int32)


def make_probe_set(key: Array,
                   x0: Array,
                   num_clusters: int,
                   p_mean: float = -1.2,
                   p_std: float = 1.2) -> Dict[str, Array]:
  """A fixed held-out probe set for per-cluster losses (docs/curriculum.md#the-difficulty-study).

  Every clean image meets every cluster with fixed noise: for cluster i and
  image m (of M) the noise level sits at the lognormal quantile
  (i + (m + 0.5) / M) / N, so each cluster's probes cover it evenly and are
  identical at every evaluation.

  Args:
    key: PRNG key for the fixed Gaussian noise.
    x0: `[M, ...]` clean probe images.
    num_clusters: N.
    p_mean, p_std: the lognormal of the clusters.

  Returns:
    dict of `x0` `[N*M, ...]`, `noise` (same shape, N(0, I)), `sigma` `[N*M]`
    and `cluster` `[N*M]` (int32), cluster-major.
  """
  return _make_probe_set(key, jnp.asarray(x0), int(num_clusters), p_mean,
                         p_std)


@functools.partial(jax.jit, static_argnums=2)
def _make_probe_set(key, x0, num_clusters, p_mean, p_std):
  m = x0.shape[0]
  dtype = x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else jnp.float32
  cluster = jnp.repeat(jnp.arange(num_clusters, dtype=jnp.int32), m)
  within = (jnp.tile(jnp.arange(m), num_clusters) + 0.5) / m
  quantile = (cluster.astype(dtype) + within.astype(dtype)) / num_clusters
  tiled = jnp.tile(x0, (num_clusters,) + (1,) * (x0.ndim - 1)).astype(dtype)
  return {
      "x0": tiled,
      "noise": jax.random.normal(key, tiled.shape, dtype),
      "sigma": lognormal_quantile(quantile, p_mean, p_std).astype(dtype),
      "cluster": cluster,
  }


def per_cluster_probe_losses(per_example_loss: Callable[..., Array],
                             probe: Dict[str, Array],
                             num_clusters: int) -> Array:
  """Per-cluster mean probe loss.

  Args:
    per_example_loss: `fn(x0, noise, sigma) -> [B]` losses (close over the
      parameters, e.g. the EDM loss of the current model, without weights
      changing between evaluations).
    probe: from `make_probe_set`.
    num_clusters: N.

  Returns:
    `[N]` mean losses, cluster 0 = lowest noise.
  """
  losses = per_example_loss(probe["x0"], probe["noise"], probe["sigma"])
  means, _ = per_cluster_mean(losses, probe["cluster"], num_clusters)
  return means


def plot_kl(path: str, t, kl, title: str = "KL(q_{t-1} || q_t) per dimension"):
  """Saves a log-scale plot of KL against timestep to `path` (PNG, Agg)."""
  # Local import: plotting is optional for training. A bare Figure on the
  # Agg canvas touches no global pyplot state or backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  t = np.asarray(t)
  kl = np.asarray(kl)
  fig = Figure(figsize=(5, 3.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for curve in kl.reshape(-1, kl.shape[-1]):
    ax.semilogy(t, curve)
  ax.set_xlabel("timestep t")
  ax.set_ylabel("KL (nats)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
