"""The pure train step: (state, batch) -> (state, metrics), the same for every objective.

Differentiate the objective's loss, guard against non-finite gradients, apply
the optimizer, update the parameter EMA and the objective's own state. What
varies per curriculum stage is only the objective's (static, hashable) noise
sampler; `compile.StepCompiler` keeps one ahead-of-time compiled executable per
stage.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import models, optim
from jaxdiff.objectives import base
from jaxdiff.train import microbatch
from jaxdiff.train.state import TrainState

# Metrics objectives return per example (for the loss-by-noise-level buckets).
PER_EXAMPLE_METRICS = ("per_sample_loss", "sigma")


def init_params(model: nn.Module, key: jax.Array, example_shape, num_classes: int,
                augment_dim: int = 0):
  x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
  labels = jnp.zeros((1, num_classes), jnp.float32) if num_classes else None
  augment = jnp.zeros((1, augment_dim), jnp.float32) if augment_dim else None
  variables = model.init({"params": key, "dropout": key}, x, jnp.zeros((1,)), labels, augment,
                         train=False)
  return nn.meta.unbox(variables["params"])


def make_init_fn(model, tx, objective: base.Objective, example_shape, num_classes, augment_dim,
                 seed: int, rng_impl: str = "rbg") -> Callable[[], TrainState]:
  def init() -> TrainState:
    key = jax.random.key(seed, impl=rng_impl)
    params = init_params(model, jax.random.fold_in(key, 1), example_shape, num_classes,
                         augment_dim)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.fold_in(key, 2)), aux=objective.init_aux(params),
        nonfinite_steps=jnp.zeros((), jnp.int32), nonfinite_streak=jnp.zeros((), jnp.int32))
  return init


def loss_bucket_edges(num_buckets: int, noise_sampler: base.NoiseSampler) -> np.ndarray:
  """Inner sigma edges splitting the training distribution into equal-mass buckets."""
  return noise_sampler.quantiles(np.arange(1, num_buckets) / num_buckets)


def masked_mean(values, mask):
  """(mean of `values` where `mask`, how many): 0 for the mean of none."""
  weights = mask.astype(values.dtype)
  count = jnp.sum(weights)
  return jnp.sum(values * weights) / jnp.maximum(count, 1.0), count


def bucket_metrics(per_sample_loss, sigma, edges: np.ndarray) -> dict[str, jax.Array]:
  """Mean loss per noise-level bucket (NaN for a bucket with no sample this step)."""
  idx = jnp.digitize(sigma, jnp.asarray(edges, sigma.dtype))
  out = {}
  bounds = [0.0] + [float(e) for e in edges] + [float("inf")]
  for b in range(len(edges) + 1):
    mean, total = masked_mean(per_sample_loss, idx == b)
    out[f"loss_by_sigma/{b:02d}_{bounds[b]:.3g}-{bounds[b + 1]:.3g}"] = jnp.where(
        total > 0, mean, jnp.nan)
  return out


def monitored_metrics(per_sample_loss, sigma, monitored: base.NoiseSampler):
  """The loss over the examples whose noise levels lie in `monitored`'s enabled clusters
  (the curriculum's newest cluster), and how many there were: what the patience rule
  watches with `curriculum.monitor="newest_cluster"` (docs/curriculum.md#pacing)."""
  mean, count = masked_mean(per_sample_loss, monitored.in_enabled_clusters(sigma))
  return {"loss_newest_cluster": mean, "newest_cluster_count": count}


def make_train_step(objective: base.Objective, tx: optax.GradientTransformation, config,
                    bucket_edges: np.ndarray | None = None, variant=None,
                    monitored: base.NoiseSampler | None = None):
  """The pure update: (state, batch) -> (state, metrics); `variant` is static.

  `monitored`: the noise sampler restricted to the clusters whose loss the curriculum's
  patience rule watches, or None (it watches `loss`, the whole batch).
  """
  batch_size = config.data.batch_size
  policy = config.optim.nonfinite
  rng_impl = config.rng_impl
  num_microbatches = int(config.train.microbatches)
  # EDM2's forced weight normalisation: the weights are projected before the gradient, as
  # the official training forward does in place (models.weight_constraint).
  constraint = models.weight_constraint(config.model)

  def train_step(state: TrainState, batch: dict):
    if constraint is not None:
      state = state.replace(params=constraint(state.params))
    # The step's randomness is a function of (seed, step) only: exact resume.
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=rng_impl), state.step)

    def loss_fn(params, part, part_key):
      return objective.loss(params, state.aux, part, part_key, state.step)

    (loss, metrics), grads = microbatch.value_and_grad(
        loss_fn, state.params, batch, key, num_microbatches, PER_EXAMPLE_METRICS,
        mesh=objective.mesh)
    finite = optim.all_finite(grads) & jnp.isfinite(loss)
    if policy == "zero":
      grads = optim.zero_nonfinite(grads)
    decay = optim.ema_decay(state.step, config.ema, batch_size)

    def update():
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema_params = optim.ema_update(state.ema_params, params, decay)
      aux, aux_metrics = objective.after_update(state.aux, params, batch,
                                                jax.random.fold_in(key, 0x5ec0d), state.step,
                                                variant)
      return (params, ema_params, opt_state, aux), aux_metrics

    if policy == "skip":
      # A non-finite step leaves everything but the counters untouched.
      (params, ema_params, opt_state, aux), aux_metrics = optim.update_if(
          finite, update, (state.params, state.ema_params, state.opt_state, state.aux))
    else:
      (params, ema_params, opt_state, aux), aux_metrics = update()
    new = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                        opt_state=opt_state, aux=aux)
    skipped = (~finite).astype(jnp.int32)
    new = new.replace(nonfinite_steps=state.nonfinite_steps + skipped,
                      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))

    out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "ema_decay": decay,
           "nonfinite_steps": new.nonfinite_steps, "nonfinite_streak": new.nonfinite_streak}
    return new, {**out, **step_metrics(metrics, aux_metrics, bucket_edges, monitored)}

  return train_step


def step_metrics(metrics: dict, aux_metrics: dict, bucket_edges, monitored) -> dict:
  """The objective's scalars, and from its per-example losses the loss-by-noise-level
  buckets and the curriculum's monitored loss (the per-example arrays are not logged)."""
  per_sample, sigma = metrics.pop("per_sample_loss", None), metrics.pop("sigma", None)
  out = {**metrics, **aux_metrics}
  if per_sample is not None and sigma is not None:
    if bucket_edges is not None:
      out.update(bucket_metrics(per_sample, sigma, bucket_edges))
    if monitored is not None:
      out.update(monitored_metrics(per_sample, sigma, monitored))
  return out
