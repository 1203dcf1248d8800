"""ODE samplers for flow matching: Euler and Heun on dx/dt = v(x, t), from t = 1 to 0.

With the linear interpolant x_t = (1 - t) x0 + t eps (docs/flow.md), noise is at t = 1 and
data at t = 0, and the velocity is v = eps - x0. The grid is uniform in t,
1 = t_0 > t_1 > ... > t_N = 0; Heun's trapezoid correction runs on every step (the velocity
is finite at t = 0, unlike the EDM denoiser's 1/sigma), so N steps cost 2N evaluations with
Heun and N with Euler. The steps run in one `lax.fori_loop`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# velocity_fn(x [B, ...], t [B]) -> v [B, ...]
VelocityFn = Callable[[Array, Array], Array]
SOLVERS = ("euler", "heun")


def flow_sampler(velocity_fn: VelocityFn, latents: Array, num_steps: int = 50,
                 solver: str = "heun") -> Array:
  """x at t = 0 from x = latents at t = 1 (standard normal), in the latents' dtype."""
  if solver not in SOLVERS:
    raise ValueError(f"solver={solver!r} is not one of {SOLVERS}")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  batch = latents.shape[0]
  dt = 1.0 / num_steps

  def step(i, x):
    t = jnp.full((batch,), 1.0 - i * dt, latents.dtype)
    v = velocity_fn(x, t)
    x_euler = x - dt * v
    if solver == "euler":
      return x_euler
    v_next = velocity_fn(x_euler, t - dt)
    return x - dt * 0.5 * (v + v_next)

  return jax.lax.fori_loop(0, num_steps, step, latents)
