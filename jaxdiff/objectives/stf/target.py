"""Stable Target Field (STF): the reference-batch denoising target.

Xu, Tong, Jaakkola, "Stable Target Field for Reduced Variance Score Estimation
in Diffusion Models", ICLR 2023 (arXiv 2302.00670); official code Newbeeer/stf.

Denoising score matching regresses D(x; sigma) onto the one clean image y that
generated x = y + sigma * n. STF replaces y by a self-normalised importance
estimate of E[y | x] over a reference set {y_i} that contains the generating
image (docs/stf.md#the-score-identity, docs/stf.md#the-target):

  w_i(x) = softmax_i(-||x - y_i||^2 / (2 sigma^2)),     target(x) = sum_i w_i y_i.

With n = 1 this is plain DSM; as n grows the target tends to E[y | x] and its
variance falls. SCT (docs/sct.md) reuses the same target inside ECT.

Numerics (docs/implementation.md#pairwise-distances): squared distances use the expansion
||x||^2 + ||y||^2 - 2<x, y> as one [B, d] x [d, n] matmul, in float32 (float64
when the inputs are float64) at HIGHEST matmul precision, so a B x n x d
tensor never exists and TF32/bf16 matmul passes cannot wreck the cancellation.
Weights go through a log-softmax. Everything is under `stop_gradient`.

Sharded reference sets: `stf_target_global` runs inside `jax.shard_map` with
each device holding one shard of the reference set; a global log-sum-exp
(pmax of the row maxima, psum of the rescaled partial sums) normalises the
weights over the whole global set without any device holding it. The official
code uses a per-device reference set (docs/stf.md#reference-set-construction,
docs/implementation.md#reference-sets-across-devices): that is `stf_target`
called per device; the global variant is a separate, labelled option.
"""
from __future__ import annotations

import functools
from typing import Hashable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_HIGHEST = jax.lax.Precision.HIGHEST


def _compute_dtype(*arrays) -> jnp.dtype:
  """float64 if any float input is float64, else float32 (never bf16/fp16)."""
  dtype = jnp.result_type(*[a.dtype for a in arrays])
  if not jnp.issubdtype(dtype, jnp.floating):
    return jnp.dtype(jnp.float32)
  return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def _prepare(x_noisy, sigma, reference, labels, reference_labels):
  """Flattens queries to [M, d] and references to [n, d]; broadcasts sigma/labels to [M].

  Returns the flattened arrays, the queries' leading shape and the output dtype.
  """
  x_noisy = jnp.asarray(x_noisy)
  reference = jnp.asarray(reference)
  sigma = jnp.asarray(sigma)
  item_shape = reference.shape[1:]
  num_item_dims = len(item_shape)
  if x_noisy.shape[x_noisy.ndim - num_item_dims:] != item_shape:
    raise ValueError(
        f"x_noisy trailing shape {x_noisy.shape} does not match reference items "
        f"{item_shape} (reference is [n, ...] with the same per-item shape as x).")
  lead_shape = x_noisy.shape[:x_noisy.ndim - num_item_dims]
  out_dtype = jnp.result_type(x_noisy.dtype, reference.dtype)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    out_dtype = jnp.dtype(jnp.float32)
  dtype = _compute_dtype(x_noisy, reference, sigma)
  d = 1
  for s in item_shape:
    d *= s
  x = jax.lax.stop_gradient(x_noisy).reshape(-1, d).astype(dtype)
  y = jax.lax.stop_gradient(reference).reshape(reference.shape[0], d).astype(dtype)
  # sigma may be a scalar, [B] or [B, 1, 1, 1]: it holds one value per query.
  sigma = jax.lax.stop_gradient(sigma).astype(dtype)
  if sigma.ndim > len(lead_shape):
    sigma = sigma.reshape(sigma.shape[:len(lead_shape)])
  sigma = jnp.broadcast_to(sigma, lead_shape).reshape(-1)
  if (labels is None) != (reference_labels is None):
    raise ValueError("labels and reference_labels must be given together.")
  if labels is not None:
    labels = jnp.broadcast_to(jnp.asarray(labels), lead_shape).reshape(-1)
    reference_labels = jnp.asarray(reference_labels).reshape(-1)
  return x, sigma, y, labels, reference_labels, lead_shape, item_shape, out_dtype


def _logits_and_mask(x, sigma, y, labels, reference_labels):
  """-||x - y_i||^2 / (2 sigma^2) as [M, n], and the same-label mask (or None)."""
  x_sq = jnp.sum(x * x, axis=-1, keepdims=True)                    # [M, 1]
  y_sq = jnp.sum(y * y, axis=-1)[None, :]                          # [1, n]
  cross = jnp.matmul(x, y.T, precision=_HIGHEST)                   # [M, n]
  # The expansion can go slightly negative by cancellation; a distance cannot.
  sq_dist = jnp.maximum(x_sq + y_sq - 2.0 * cross, 0.0)
  logits = -sq_dist / (2.0 * jnp.square(sigma)[:, None])
  mask = None
  if labels is not None:
    mask = labels[:, None] == reference_labels[None, :]
  return logits, mask


def _apply_mask(logits, mask, row_has_match):
  """-inf for other-label references; rows without any match keep every reference.

  A query always has its own generating image in the reference set in the
  intended use, so the fallback only guards against NaN targets when a caller
  breaks that (e.g. a label present in the batch but not in the references).
  """
  if mask is None:
    return logits
  keep = jnp.logical_or(mask, jnp.logical_not(row_has_match)[:, None])
  return jnp.where(keep, logits, -jnp.inf)


@jax.jit
def stf_logits(x_noisy, sigma, reference, labels=None, reference_labels=None) -> jax.Array:
  """Unnormalised log-weights -||x - y_i||^2/(2 sigma^2) ([..., n], -inf if masked).

  Useful beyond STF: `logsumexp` of these minus log n (plus the Gaussian
  normaliser) is the log-density of the empirical mixture p_sigma(x).
  """
  x, s, y, lab, rlab, lead, _, _ = _prepare(x_noisy, sigma, reference, labels,
                                            reference_labels)
  logits, mask = _logits_and_mask(x, s, y, lab, rlab)
  if mask is not None:
    logits = _apply_mask(logits, mask, jnp.any(mask, axis=-1))
  return logits.reshape(lead + (y.shape[0],))


@jax.jit
def stf_weights(x_noisy, sigma, reference, labels=None, reference_labels=None) -> jax.Array:
  """Log STF weights log w_i ([..., n]); exp sums to 1 over the reference axis.

  Same arguments as `stf_target`; for diagnostics (effective sample size,
  weight on the generating sample, ...).
  """
  logits = stf_logits(x_noisy, sigma, reference, labels, reference_labels)
  return jax.nn.log_softmax(logits, axis=-1)


@jax.jit
def stf_target(x_noisy, sigma, reference, labels=None, reference_labels=None) -> jax.Array:
  """STF denoiser target sum_i w_i y_i, w = softmax_i(-||x - y_i||^2/(2 sigma^2)).

  Args:
    x_noisy: [B, ...] noisy queries x = y + sigma * n (any extra leading dims
      broadcast like B).
    sigma: noise level per query: scalar, [B], or [B, 1, ..., 1].
    reference: [n, ...] reference images; should contain the generating images.
    labels: optional [B] integer labels of the queries.
    reference_labels: optional [n] labels of the references; with `labels`,
      only same-label references get weight (class-conditional STF and SCT;
      docs/stf.md#class-conditional-data).

  Returns:
    [B, ...] targets in the promoted dtype of (x_noisy, reference), computed in
    float32 (float64 for float64 inputs). No gradient flows through them.
  """
  x, s, y, lab, rlab, lead, item_shape, out_dtype = _prepare(
      x_noisy, sigma, reference, labels, reference_labels)
  logits, mask = _logits_and_mask(x, s, y, lab, rlab)
  if mask is not None:
    logits = _apply_mask(logits, mask, jnp.any(mask, axis=-1))
  weights = jnp.exp(jax.nn.log_softmax(logits, axis=-1))
  target = jnp.matmul(weights, y, precision=_HIGHEST)
  return jax.lax.stop_gradient(target.reshape(lead + item_shape).astype(out_dtype))


def stf_target_global(x_noisy, sigma, reference_shard, *, axis_name: Hashable | Sequence[Hashable],
                      labels=None, reference_labels=None, queries_sharded: bool = False) -> jax.Array:
  """STF target normalised over a reference set sharded across `axis_name`.

  Call inside `jax.shard_map`. Each device holds `reference_shard` [n_local, ...]
  (and its `reference_labels`); the weights are normalised over the union of
  all shards:

    m = pmax_dev(max_i logit_i),  Z = psum_dev(sum_i e^(logit_i - m)),
    target = psum_dev(sum_i e^(logit_i - m) y_i) / Z.

  Args:
    x_noisy, sigma, labels: the queries. With `queries_sharded=False` every
      device holds the same queries (replicated). With `queries_sharded=True`
      each device holds its own slice of the global batch: the queries are
      all-gathered, every device scores all of them against its references,
      and a reduce-scatter returns each device the targets of its own slice.
    reference_shard: this device's [n_local, ...] references.
    axis_name: mesh axis name (or tuple of names) the references are split over.
    reference_labels: this device's [n_local] labels (with `labels`).
    queries_sharded: see above.

  Returns:
    Targets with the shape of `x_noisy` (this device's queries).
  """
  x, s, y, lab, rlab, lead, item_shape, out_dtype = _prepare(
      x_noisy, sigma, reference_shard, labels, reference_labels)
  if queries_sharded:
    x = jax.lax.all_gather(x, axis_name, axis=0, tiled=True)
    s = jax.lax.all_gather(s, axis_name, axis=0, tiled=True)
    if lab is not None:
      lab = jax.lax.all_gather(lab, axis_name, axis=0, tiled=True)
  logits, mask = _logits_and_mask(x, s, y, lab, rlab)
  if mask is not None:
    row_has_match = jax.lax.psum(jnp.any(mask, axis=-1).astype(jnp.int32), axis_name) > 0
    logits = _apply_mask(logits, mask, row_has_match)
  # Global max of each row; a shard whose references are all masked contributes
  # -inf, and exp(-inf - m) = 0 below. The global max is finite because of the
  # fallback in _apply_mask.
  row_max = jax.lax.pmax(jnp.max(logits, axis=-1), axis_name)       # [M]
  unnorm = jnp.exp(logits - row_max[:, None])                       # [M, n_local]
  partial_sum = jnp.sum(unnorm, axis=-1)                            # [M]
  partial_target = jnp.matmul(unnorm, y, precision=_HIGHEST)        # [M, d]
  if queries_sharded:
    # Sum over devices and hand each device back its own queries' rows.
    total = jax.lax.psum_scatter(partial_sum, axis_name, scatter_dimension=0, tiled=True)
    weighted = jax.lax.psum_scatter(partial_target, axis_name, scatter_dimension=0, tiled=True)
  else:
    total = jax.lax.psum(partial_sum, axis_name)
    weighted = jax.lax.psum(partial_target, axis_name)
  target = weighted / total[:, None]
  return jax.lax.stop_gradient(target.reshape(lead + item_shape).astype(out_dtype))


def _place(mesh, array, spec):
  """Lays `array` out as `spec` on `mesh`, eagerly or under jit, for either axis type.

  shard_map over Explicit mesh axes insists that its inputs already carry the
  in_specs sharding; Auto axes accept a sharding constraint.
  """
  array = jnp.asarray(array)
  sharding = jax.sharding.NamedSharding(mesh, spec)
  explicit = jax.sharding.AxisType.Explicit
  if all(t == explicit for t in mesh.axis_types):
    return jax.sharding.reshard(array, sharding)
  return jax.lax.with_sharding_constraint(array, sharding)


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "queries_sharded"))
def stf_target_sharded(x_noisy, sigma, reference, mesh: jax.sharding.Mesh, axis: str | tuple = "data",
                       labels=None, reference_labels=None, *, queries_sharded: bool = False) -> jax.Array:
  """`stf_target_global` wrapped in `jax.shard_map` over `mesh`.

  The reference set (and its labels) is split along `axis` (its size must be
  divisible by the number of devices on `axis`). Queries are replicated, or
  split along `axis` with `queries_sharded=True`. The result equals
  `stf_target(x_noisy, sigma, reference, ...)` up to float rounding.
  """
  lead_ndim = jnp.ndim(x_noisy) - (jnp.ndim(reference) - 1)
  x_spec = P(axis) if queries_sharded else P()
  sigma = jnp.asarray(sigma)
  if sigma.ndim == 0:  # one value per query, so it can be split like the queries
    sigma = jnp.broadcast_to(sigma, jnp.shape(x_noisy)[:lead_ndim])
  place = functools.partial(_place, mesh)
  x_noisy, sigma, reference = place(x_noisy, x_spec), place(sigma, x_spec), place(reference, P(axis))
  has_labels = labels is not None
  fn = functools.partial(stf_target_global, axis_name=axis, queries_sharded=queries_sharded)
  if has_labels:
    mapped = jax.shard_map(
        lambda x, s, r, l, rl: fn(x, s, r, labels=l, reference_labels=rl),
        mesh=mesh, in_specs=(x_spec, x_spec, P(axis), x_spec, P(axis)), out_specs=x_spec)
    return mapped(x_noisy, sigma, reference, place(labels, x_spec), place(reference_labels, P(axis)))
  mapped = jax.shard_map(lambda x, s, r: fn(x, s, r), mesh=mesh,
                         in_specs=(x_spec, x_spec, P(axis)), out_specs=x_spec)
  return mapped(x_noisy, sigma, reference)
