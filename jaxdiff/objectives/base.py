"""The contract every training objective fulfils.

An objective is a pure loss of the parameters plus whatever state it carries
between steps (a teacher EMA, a discriminator, ...). The trainer owns the
optimizer, the parameter EMA, sharding and checkpoints; the objective owns the
math. Noise levels come from a `NoiseSampler` handed in at construction, which
is how the difficulty curriculum plugs into every objective without touching it:
a curriculum stage is just a sampler restricted to some noise clusters.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

PyTree = Any
Metrics = dict[str, jax.Array]


class NoiseSampler(Protocol):
  """Draws training noise levels; must be hashable so it can key a jit cache."""

  def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class LognormalSampler:
  """EDM's ln(sigma) ~ N(p_mean, p_std^2), optionally truncated to quantile intervals.

  `intervals` is a tuple of (lo, hi) quantile ranges (the active curriculum
  clusters); None means the whole distribution, drawn exactly as the baseline.
  """
  p_mean: float = -1.2
  p_std: float = 1.2
  mask: tuple[bool, ...] | None = None

  def __call__(self, key, shape, dtype=jnp.float32):
    if self.mask is None or all(self.mask):
      from jaxdiff.diffusion import noise
      return noise.lognormal_sigma(key, shape, self.p_mean, self.p_std, dtype=dtype)
    from jaxdiff.curriculum import clusters
    return clusters.sample_sigma_in_mask(key, shape, self.mask, self.p_mean, self.p_std,
                                         dtype=dtype)


# apply_fn(params, x_in, c_noise, class_labels, augment_labels, train, dropout_key) -> F(x)
ApplyFn = Callable[..., jax.Array]


def make_apply_fn(model) -> ApplyFn:
  """Adapts a Linen module to the raw-network signature the objectives use."""

  def apply_fn(params, x, c_noise, class_labels=None, augment_labels=None, train=False,
               dropout_key=None):
    rngs = {"dropout": dropout_key} if (train and dropout_key is not None) else {}
    return model.apply({"params": params}, x, c_noise, class_labels, augment_labels,
                       train=train, rngs=rngs)

  return apply_fn


class Objective:
  """Base class: override `loss`; override the aux hooks if the method has state."""

  # Which sampler turns this objective's network into samples: "edm" (PF-ODE
  # Heun on a denoiser) or "consistency" (one or few network calls).
  sampler_kind = "edm"

  # The device mesh the train step runs on (set by `make_objective`; None when
  # used without one). Objectives whose math spans the batch axes (STF's
  # reference sets) shard_map over it.
  mesh = None

  # Extra data examples per step the pipeline must draw for this objective,
  # over all processes; they arrive as batch["reference"] (and
  # batch["reference_label"]). 0: none.
  reference_draws = 0

  def init_aux(self, params: PyTree) -> PyTree:
    return {}

  def loss(self, params: PyTree, aux: PyTree, batch: dict, key: jax.Array,
           step: jax.Array) -> tuple[jax.Array, Metrics]:
    """Returns (scalar loss to differentiate, metrics).

    Metrics may include `per_sample_loss` and `sigma` (both [B]); the trainer
    turns them into per-noise-level loss buckets.
    """
    raise NotImplementedError

  def update_aux(self, aux: PyTree, params: PyTree, step: jax.Array) -> PyTree:
    return aux

  # Static variants of the update, one compiled executable each (ACT: the plain step
  # and the lazy-R1 step). The trainer asks `variant_for_step` on the host, from the
  # step number only, so every host and a resumed run pick the same variant.
  step_variants: tuple = (None,)

  def variant_for_step(self, step: int):
    return None

  def after_update(self, aux: PyTree, params: PyTree, batch: dict, key: jax.Array,
                   step: jax.Array, variant=None) -> tuple[PyTree, Metrics]:
    """The objective's own update after the parameter update: (new aux, metrics).

    `params` are the freshly updated parameters. The default is `update_aux`
    (a teacher EMA, ...); a second player (ACT's discriminator step) overrides
    this, with the batch and a key of its own.
    """
    return self.update_aux(aux, params, step), {}

  def denoiser(self, params: PyTree, class_labels=None) -> Callable:
    """x, sigma -> the function the sampler calls (D for edm, f for consistency)."""
    raise NotImplementedError


def per_sample_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def one_hot_labels(batch: dict, num_classes: int, dtype=jnp.float32):
  if not num_classes or "label" not in batch:
    return None
  return jax.nn.one_hot(batch["label"], num_classes, dtype=dtype)
