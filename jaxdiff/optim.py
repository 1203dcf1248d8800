"""Optimizers and the parameter EMA, as pure functions of the step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def learning_rate_schedule(optim_config):
  """The learning rate of update `step` (0-based: the updates before it).

  lr * warm-up * decay, each optional:
    warm-up  min((step + 1) / warmup_steps, 1)       (EDM: min(nimg / 10 Mimg, 1))
    decay    1 / sqrt(max(step / decay_steps, 1))     (EDM2's inverse square root, Karras
             et al. 2024 Eq. 16 with t_ref = decay_steps; ECT's ImageNet-64: 2000 steps)
  """
  lr, warmup = optim_config.lr, int(optim_config.warmup_steps)
  decay = int(optim_config.get("decay_steps", 0))
  if warmup <= 0 and decay <= 0:
    return lr

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    out = jnp.asarray(lr, jnp.float32)
    if warmup > 0:
      out = out * jnp.minimum((step + 1) / warmup, 1.0)
    if decay > 0:
      out = out / jnp.sqrt(jnp.maximum(step / decay, 1.0))
    return out
  return schedule


def make_optimizer(optim_config) -> optax.GradientTransformation:
  lr = learning_rate_schedule(optim_config)
  name = optim_config.name
  if name == "adam":
    tx = optax.adam(lr, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps)
  elif name == "radam":
    tx = optax.radam(lr, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps)
  elif name == "adamw":
    tx = optax.adamw(lr, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                     weight_decay=optim_config.weight_decay)
  else:
    raise ValueError(f"config.optim.name={name!r}; choose one of ('adam', 'radam', 'adamw').")
  if optim_config.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), tx)
  return tx


def ema_decay(step, ema_config, global_batch_size: int):
  """EMA decay of the step's update.

  `halflife` is EDM's rule: the half-life in images, ramped up as
  min(halflife, rampup_ratio * images seen so far); beta = 0.5 ** (batch / halflife).
  At step 0 the EMA therefore equals the first updated parameters.

  `power` is EDM2's power-function EMA (Karras et al. 2024, Sec. 3.1 and App. C.1): after
  t = step + 1 updates, beta = (1 - 1/t) ** (gamma + 1), gamma fixed by the relative
  standard deviation `ema.std` (sigma_rel) through `power_ema_exponent`.
  """
  if ema_config.kind == "constant":
    return jnp.asarray(ema_config.decay, jnp.float32)
  if ema_config.kind == "power":
    gamma = power_ema_exponent(float(ema_config.std))
    t = jnp.asarray(step, jnp.float32) + 1.0
    return (1.0 - 1.0 / t) ** (gamma + 1.0)
  halflife = jnp.asarray(ema_config.halflife_kimg * 1000.0, jnp.float32)
  if ema_config.rampup_ratio:
    seen = jnp.asarray(step, jnp.float32) * global_batch_size
    halflife = jnp.minimum(halflife, seen * ema_config.rampup_ratio)
  return 0.5 ** (global_batch_size / jnp.maximum(halflife, 1e-8))


def power_ema_exponent(std: float) -> float:
  """gamma of the power-function EMA whose profile has relative standard deviation `std`:
  the largest real root of gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0
  (Karras et al. 2024, Eq. 3 solved for gamma, as EDM2's std_to_exp)."""
  if not 0.0 < std < 12 ** -0.5:
    raise ValueError(f"ema.std={std!r}: the power EMA's relative std must be in (0, 0.2887) "
                     "(EDM2 uses 0.05 to 0.10; ECT's ImageNet run tracks 0.01, 0.05, 0.10)")
  inv = std ** -2.0
  return float(np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv]).real.max())


def ema_update(ema_params, params, decay):
  return jax.tree.map(lambda e, p: (e * decay + p * (1.0 - decay)).astype(e.dtype),
                      ema_params, params)


def update_if(ok, update_fn, old):
  """`update_fn()` where `ok`, else `old` unchanged: the non-finite guard's skip.

  `update_fn` returns `(new, metrics)` with `new` shaped like `old`; a skipped step
  returns `(old, metrics)` with the metrics NaN (integers 0). This is a `lax.cond`,
  not a `jnp.where` per state leaf: XLA runs only the branch taken and compiles the
  update without a select and an aliasing copy per leaf. Measured on the CI-size
  model's 272 leaves (Adam + EMA, XLA CPU): 65 s -> 5 s of compile, 13 -> 6 ms per
  update, bit-identical results. On a GPU, XLA runs a cond either inside a CUDA-graph
  command buffer or by reading the predicate on the host once per step. That cost is not
  measured here.
  """
  metric_shapes = jax.eval_shape(update_fn)[1]

  def keep():
    blank = lambda s: jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0,
                               s.dtype)
    return old, jax.tree.map(blank, metric_shapes)

  return jax.lax.cond(ok, update_fn, keep)


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def zero_nonfinite(grads):
  """EDM's guard: NaN -> 0 and +-inf clamped to +-1e5."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)
