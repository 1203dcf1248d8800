"""Flow matching (SiT's linear interpolant; docs/flow.md): the loss, the ODE samplers on a
Gaussian target with its exact velocity, the uniform-time curriculum clusters, and a short
run through the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff.objectives.flow import FlowMatching, UniformTimeSampler
from jaxdiff.sampling import flow_sampler

MEAN, STD = 1.5, 0.3


def exact_velocity(x, t):
  """E[eps - x0 | x_t = x] for x0 ~ N(MEAN, STD^2) per dimension, x_t = (1-t) x0 + t eps."""
  t = t.reshape((-1,) + (1,) * (x.ndim - 1))
  var_t = (1 - t) ** 2 * STD ** 2 + t ** 2
  resid = x - (1 - t) * MEAN
  return t * resid / var_t - (MEAN + (1 - t) * STD ** 2 * resid / var_t)


@pytest.mark.parametrize("solver,steps,tol", [("heun", 20, 0.01), ("euler", 200, 0.02)])
def test_ode_sampler_maps_noise_onto_the_gaussian_target(solver, steps, tol):
  z = jax.random.normal(jax.random.PRNGKey(0), (20000, 2))
  x = np.asarray(jax.jit(lambda z: flow_sampler(exact_velocity, z, steps, solver))(z))
  np.testing.assert_allclose(x.mean(0), MEAN, atol=tol * 3)
  np.testing.assert_allclose(x.std(0), STD, rtol=tol * 3)
  # The ODE is deterministic and monotone: the flow keeps the latents' order.
  assert np.corrcoef(np.asarray(z[:, 0]), x[:, 0])[0, 1] > 0.999


def test_loss_is_the_velocity_regression():
  apply_fn = lambda p, x, c_noise, *a: p * x + c_noise[:, None]
  obj = FlowMatching(apply_fn, UniformTimeSampler(), time_scale=1000.0)
  x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  key = jax.random.PRNGKey(2)
  loss, metrics = obj.loss(jnp.float32(0.5), None, {"image": x0}, key, 0)
  k_t, k_noise, _ = jax.random.split(key, 3)
  t = np.asarray(UniformTimeSampler()(k_t, (8,)))
  eps = np.asarray(jax.random.normal(k_noise, x0.shape))
  x_t = (1 - t[:, None]) * np.asarray(x0) + t[:, None] * eps
  v = 0.5 * x_t + 1000 * t[:, None]
  want = np.mean(np.mean((v - (eps - np.asarray(x0))) ** 2, axis=1))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["sigma"]), t)


def test_curriculum_stage_draws_times_of_its_clusters():
  stage = UniformTimeSampler().restrict((True, False, False, True))
  t = np.asarray(stage(jax.random.PRNGKey(3), (4000,)))
  assert ((t < 0.25) | (t >= 0.75)).all() and (t < 0.25).any() and (t >= 0.75).any()
  c = config_lib.load_config("toy2d_edm")
  c.objective.name = "flow"
  c.curriculum.enabled, c.curriculum.kind = True, "uniform"
  config_lib.validate(c)
  c.flow.solver = "rk4"
  with pytest.raises(config_lib.ConfigError, match="flow.solver='rk4'"):
    config_lib.validate(c)


def test_flow_trains_and_samples_through_the_trainer(tmp_path):
  """The objective contract end to end on 2-D data (the digits recipe's `:smoke` is the same
  code path with a UNet; tests/test_configs.py validates it)."""
  from jaxdiff.train import loop
  c = config_lib.load_config("toy2d_edm:smoke")
  c.objective.name = "flow"
  c.flow.num_steps = 4
  summary = loop.train(c, str(tmp_path))
  assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["quality"]["value"])
