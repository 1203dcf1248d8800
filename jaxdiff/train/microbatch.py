"""Gradient accumulation: one update from a global batch run as k microbatches in turn.

EDM's `--batch-gpu` (docs/implementation.md#memory): the activations of only
B/k examples are alive at a time, the update is the one of the whole batch.
Microbatch i holds rows i, i + k, i + 2k, ... of the batch, so with the batch
sharded over the devices every microbatch spans all devices (each device takes
a contiguous block of its own rows). Microbatch i draws its randomness from
fold_in(key, i); with k = 1 the step is exactly the plain one.

The loss is the mean of the microbatch losses and the gradient the mean of
their gradients, which equal the full batch's for an objective whose loss is a
mean of per-example terms (`Objective.per_example_loss`; others are refused by
the config check). Per-example metrics come back in batch order; scalar
metrics are averaged over the microbatches.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import parallel

# Batch entries an objective draws for the whole step (STF's references, ACT's real
# images): every microbatch sees them whole.
WHOLE_STEP_PREFIX = "reference"


def _split(x: jax.Array, k: int, mesh) -> jax.Array:
  """[B, ...] -> [k, B/k, ...], microbatch i = rows i, i + k, ..."""
  out = jnp.moveaxis(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 1, 0)
  if mesh is not None:
    spec = P(None, parallel.BATCH_AXES, *([None] * (x.ndim - 1)))
    out = jax.lax.with_sharding_constraint(out, NamedSharding(mesh, spec))
  return out


def _merge(x: jax.Array) -> jax.Array:
  """The inverse of `_split`: [k, B/k, ...] -> [B, ...] in batch order."""
  return jnp.moveaxis(x, 0, 1).reshape((-1,) + x.shape[2:])


def value_and_grad(loss_fn: Callable, params, batch: dict, key: jax.Array, k: int,
                   per_example: tuple[str, ...] = (), mesh=None):
  """((loss, metrics), grads) of `loss_fn(params, batch, key) -> (loss, metrics)` over k
  microbatches, run one after another (a scan: one microbatch's activations at a time).

  `per_example` names the metrics with one value per example, returned in batch order.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    return grad_fn(params, batch, key)
  whole = {n: v for n, v in batch.items() if n.startswith(WHOLE_STEP_PREFIX)}
  parts = {n: _split(v, k, mesh) for n, v in batch.items() if n not in whole}

  def one(grad_sum, inputs):
    index, part = inputs
    (loss, metrics), grads = grad_fn(params, {**part, **whole}, jax.random.fold_in(key, index))
    grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), grad_sum, grads)
    return grad_sum, (loss, metrics)

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
                       params)
  grad_sum, (losses, metrics) = jax.lax.scan(one, zeros, (jnp.arange(k), parts))
  grads = jax.tree.map(lambda s, p: (s / k).astype(p.dtype), grad_sum, params)
  metrics = {n: _merge(v) if n in per_example else jnp.mean(v, axis=0)
             for n, v in metrics.items()}
  return (jnp.mean(losses), metrics), grads
