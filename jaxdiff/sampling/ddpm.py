"""Respacing and samplers of discrete-time diffusion, as DiT samples (docs/ddpm.md;
facebookresearch/DiT `respace.py`, `gaussian_diffusion.py` `p_sample`, `ddim_sample`)."""
from __future__ import annotations

import operator
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.ddpm import (DiscreteSchedule, _extract, p_mean_variance,
                                    predict_eps_from_x0)

Array = jax.Array


# ---------------------------------------------------------------------------------------
# Respacing.
# ---------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> np.ndarray:
  """DiT's `space_timesteps`: the kept timesteps, as a sorted int64 array (DiT: a set).

  section_counts: "ddimN" (the stride i, the smallest with len(range(0, T, i)) == N, so
  the steps are 0, i, 2i, ...); or a comma-separated string / sequence of counts, one per
  equal section of [0, T) (the first T % len sections one step longer), each section
  strided by (size - 1) / (count - 1) with Python's round (half to even), e.g. "250".
  """
  num_timesteps = operator.index(num_timesteps)
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
          return np.arange(0, num_timesteps, stride, dtype=np.int64)
      raise ValueError(f"cannot create exactly {desired} steps out of {num_timesteps} "
                       "with an integer stride.")
    section_counts = [int(s) for s in section_counts.split(",")]
  section_counts = [operator.index(c) for c in section_counts]
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"cannot divide a section of {size} steps into {count}.")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      steps.append(start + round(position))
      position += stride  # accumulated like DiT, so its rounding is reproduced
    start += size
  return np.array(sorted(set(steps)), dtype=np.int64)


def respaced_betas(betas, use_timesteps: Iterable[int]) -> Tuple[np.ndarray, np.ndarray]:
  """DiT's `SpacedDiffusion` betas over the kept timesteps, and the timestep map.

  For kept steps s_0 < s_1 < ..., new beta_k = 1 - abar_{s_k} / abar_{s_{k-1}} (abar_{s_-1}
  = 1), so the respaced chain has the same abar at its steps. The map sends respaced
  index k to the original timestep s_k, which is what the model is given.

  Returns:
    (new_betas float64 [K], timestep_map int64 [K]).
  """
  betas = np.asarray(betas, dtype=np.float64)
  abar = np.cumprod(1.0 - betas, axis=0)
  keep = np.array(sorted(set(operator.index(s) for s in use_timesteps)), dtype=np.int64)
  if keep.size == 0:
    raise ValueError("use_timesteps is empty.")
  if keep[0] < 0 or keep[-1] >= betas.shape[0]:
    raise ValueError(f"use_timesteps must lie in [0, {betas.shape[0]}).")
  new_betas, last = [], 1.0
  for s in keep:  # the loop's arithmetic, element by element
    new_betas.append(1 - abar[s] / last)
    last = abar[s]
  return np.array(new_betas, dtype=np.float64), keep


def _respaced(schedule: DiscreteSchedule, use_timesteps):
  if use_timesteps is None:
    return schedule, np.arange(schedule.num_timesteps, dtype=np.int64)
  if isinstance(use_timesteps, (str, int)):
    use_timesteps = space_timesteps(schedule.num_timesteps, str(use_timesteps))
  new_betas, tmap = respaced_betas(schedule.betas, use_timesteps)
  return DiscreteSchedule.from_betas(new_betas), tmap


# ---------------------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------------------


def cfg_eps(eps_cond, eps_uncond, scale) -> Array:
  """Classifier-free guidance on eps: uncond + scale (cond - uncond).

  DiT's `forward_with_cfg` guides only the first 3 channels of eps (its "exact
  reproducibility" choice) and keeps the variance channels of the model output; apply this
  to the channels you want guided (docs/ddpm.md#classifier-free-guidance).
  """
  return eps_uncond + scale * (eps_cond - eps_uncond)


def p_sample_step(schedule: DiscreteSchedule,
                  model_output,
                  x_t,
                  t,
                  noise,
                  learn_sigma: bool = True,
                  clip_denoised: bool = False,
                  sigma_small: bool = False,
                  channel_axis: int = -1) -> Tuple[Array, Array]:
  """DiT's `p_sample`: mean + [t != 0] exp(log_variance / 2) noise.

  t indexes `schedule` (for a respaced chain: the respaced index). Returns
  (x_{t-1}, pred_x0).
  """
  out = p_mean_variance(schedule, model_output, x_t, t, learn_sigma, clip_denoised,
                        sigma_small, channel_axis)
  n = out.mean.ndim
  nonzero = (jnp.asarray(t) != 0).astype(out.mean.dtype).reshape((-1,) + (1,) * (n - 1))
  return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_x0


def ddim_step(schedule: DiscreteSchedule,
              model_output,
              x_t,
              t,
              noise,
              eta: float = 0.0,
              learn_sigma: bool = True,
              clip_denoised: bool = False,
              channel_axis: int = -1) -> Tuple[Array, Array]:
  """DiT's `ddim_sample` (Song et al. 2021, eq. 12), one step from index t to t - 1.

  eps is re-derived from pred_x0 (it differs from the model's only when clipping);
  sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev);
  x_{t-1} = pred_x0 sqrt(abar_prev) + sqrt(1 - abar_prev - sigma^2) eps + [t != 0] sigma noise.
  Returns (x_{t-1}, pred_x0).
  """
  x_t = jnp.asarray(x_t)
  out = p_mean_variance(schedule, model_output, x_t, t, learn_sigma, clip_denoised,
                        channel_axis=channel_axis)
  dtype = out.mean.dtype
  n = x_t.ndim
  eps = predict_eps_from_x0(schedule, x_t, t, out.pred_x0)
  abar = _extract(schedule.alphas_cumprod, t, n, dtype)
  abar_prev = _extract(schedule.alphas_cumprod_prev, t, n, dtype)
  sigma = (eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev))
  mean_pred = out.pred_x0 * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma**2) * eps
  nonzero = (jnp.asarray(t) != 0).astype(dtype).reshape((-1,) + (1,) * (n - 1))
  return mean_pred + nonzero * sigma * noise, out.pred_x0


def _sample_loop(step: Callable, sub: DiscreteSchedule, tmap: np.ndarray,
                 denoise_fn: Callable, x_T: Array, step_noise: Array) -> Array:
  """Runs `step` from respaced index K-1 down to 0 with lax.scan.

  step_noise: [K, *x.shape], row k used at respaced index k.
  """
  batch = x_T.shape[0]
  num_steps = sub.num_timesteps
  indices = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
  tmap = jnp.asarray(tmap, jnp.int32)

  def body(x, k):
    t = jnp.full((batch,), k, jnp.int32)
    model_output = denoise_fn(x, tmap[t])  # DiT's _WrappedModel: original timesteps
    x, _ = step(sub, model_output, x, t, step_noise[k])
    return x, None

  x, _ = jax.lax.scan(body, x_T, indices)
  return x


def _initial_and_step_noise(key, shape, num_steps, dtype, noise, step_noise):
  key_init, key_steps = jax.random.split(key)
  x_T = jax.random.normal(key_init, shape, dtype) if noise is None else jnp.asarray(noise, dtype)
  if step_noise is None:
    step_noise = jax.random.normal(key_steps, (num_steps,) + tuple(shape), dtype)
  else:
    step_noise = jnp.asarray(step_noise, dtype)
    if step_noise.shape != (num_steps,) + tuple(shape):
      raise ValueError(f"step_noise must have shape {(num_steps,) + tuple(shape)}, "
                       f"got {step_noise.shape}.")
  return x_T, step_noise


def ancestral_sample(key: Array,
                     schedule: DiscreteSchedule,
                     denoise_fn: Callable[[Array, Array], Array],
                     shape: Sequence[int],
                     learn_sigma: bool = True,
                     use_timesteps=None,
                     clip_denoised: bool = False,
                     sigma_small: bool = False,
                     noise: Optional[Array] = None,
                     step_noise: Optional[Array] = None,
                     dtype=jnp.float32,
                     channel_axis: int = -1) -> Array:
  """DiT's `p_sample_loop` on the (respaced) chain, as one lax.scan.

  Args:
    key: PRNG key for x_T (unless `noise` is given) and the per-step noise.
    schedule: the full T-step schedule (host constant; the respacing is done on the host).
    denoise_fn: (x [B, ...], t_original int32 [B]) -> model output (2C channels with
      learn_sigma). Guidance belongs inside it (`cfg_eps`).
    shape: of the samples, batch first.
    use_timesteps: None (all T steps), a `space_timesteps` spec ("250", "ddim50") or the
      kept timesteps themselves.
    clip_denoised: DiT's p_sample_loop default is True; its sample.py passes False.
    noise: x_T, optional.
    step_noise: optional [K, *shape] noise, row k used at respaced index k (K kept steps;
      to reproduce a reference run). By default it is drawn from `key`.

  Returns:
    x_0 samples of `shape`. Jit-able (close over `schedule` and `denoise_fn`); no noise is
    added at the last step (t = 0).
  """
  sub, tmap = _respaced(schedule, use_timesteps)
  shape = tuple(int(s) for s in shape)
  x_T, step_noise = _initial_and_step_noise(key, shape, sub.num_timesteps, dtype, noise,
                                             step_noise)

  def step(s, model_output, x, t, z):
    return p_sample_step(s, model_output, x, t, z, learn_sigma, clip_denoised, sigma_small,
                         channel_axis)

  return _sample_loop(step, sub, tmap, denoise_fn, x_T, step_noise)


def ddim_sample(key: Array,
                schedule: DiscreteSchedule,
                denoise_fn: Callable[[Array, Array], Array],
                shape: Sequence[int],
                learn_sigma: bool = True,
                use_timesteps=None,
                eta: float = 0.0,
                clip_denoised: bool = False,
                noise: Optional[Array] = None,
                step_noise: Optional[Array] = None,
                dtype=jnp.float32,
                channel_axis: int = -1) -> Array:
  """DiT's `ddim_sample_loop` on the (respaced) chain, as one lax.scan.

  Same arguments as `ancestral_sample`, plus `eta` (0: the deterministic DDIM; the output is
  then a function of x_T alone). Typical use: use_timesteps="ddim50" or "50".
  """
  sub, tmap = _respaced(schedule, use_timesteps)
  shape = tuple(int(s) for s in shape)
  x_T, step_noise = _initial_and_step_noise(key, shape, sub.num_timesteps, dtype, noise,
                                             step_noise)

  def step(s, model_output, x, t, z):
    return ddim_step(s, model_output, x, t, z, eta, learn_sigma, clip_denoised, channel_axis)

  return _sample_loop(step, sub, tmap, denoise_fn, x_T, step_noise)
