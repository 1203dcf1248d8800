"""One-step and multistep consistency sampling (Song et al. 2023, Alg. 1).

x = f(latents * sigma_0, sigma_0); then for each later sigma_k:
x = f(x + sigma_k z_k, sigma_k), z_k ~ N(0, I). This is the ECT convention
(docs/ect.md, locuslab/ect): noise std sigma_k rather than the CM paper's
sqrt(sigma_k^2 - sigma_min^2); they differ by 3e-6 relative at sigma = 0.821.
One step: `sigmas=[80.0]`; ECT / iCT two-step on CIFAR-10: `[80.0, 0.821]`.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
# consistency_fn(x [B, ...], sigma [B]) -> f(x, sigma) [B, ...].
ConsistencyFn = Callable[[Array, Array], Array]


def consistency_sampler(consistency_fn: ConsistencyFn,
                        latents,
                        sigmas,
                        key: Optional[Array] = None) -> Array:
  """Samples with a consistency function in `len(sigmas)` evaluations.

  Args:
    consistency_fn: `f(x, sigma)` with `sigma` of shape `[B]`.
    latents: `[B, ...]` standard normal latents.
    sigmas: 1-D noise levels, first the starting one (e.g. `[80.0, 0.821]`);
      its length is static.
    key: PRNG key for the re-noising; required when `len(sigmas) > 1`.
      Step k >= 1 uses the (k-1)-th key of `split(key, len(sigmas) - 1)`.

  Returns:
    samples shaped and typed like `latents` (float).
  """
  latents = jnp.asarray(latents)
  if not jnp.issubdtype(latents.dtype, jnp.floating):
    latents = latents.astype(jnp.result_type(float))
  dtype = latents.dtype
  batch = latents.shape[0]
  sigmas = jnp.asarray(sigmas, dtype).reshape(-1)
  num_evals = sigmas.shape[0]
  if num_evals == 0:
    raise ValueError("consistency_sampler: `sigmas` is empty.")
  if num_evals > 1 and key is None:
    raise ValueError(
        "consistency_sampler: multistep sampling (len(sigmas) > 1) needs a "
        "PRNG `key`.")

  def evaluate(x, sigma):
    return consistency_fn(x, jnp.full((batch,), sigma, dtype)).astype(dtype)

  x = evaluate(latents * sigmas[0], sigmas[0])
  if num_evals == 1:
    return x

  def renoise_and_map(x, sigma_and_key):
    sigma, step_key = sigma_and_key
    z = jax.random.normal(step_key, x.shape, dtype)
    return evaluate(x + sigma * z, sigma), None

  keys = jax.random.split(key, num_evals - 1)
  x, _ = jax.lax.scan(renoise_and_map, x, (sigmas[1:], keys))
  return x
