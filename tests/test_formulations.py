"""EDM's VP and VE formulations (docs/edm.md#vp-and-ve): preconditioning, noise levels and
loss weight as NVlabs/edm's VPPrecond / VEPrecond / VPLoss / VELoss define them, for the EDM
and STF objectives; their curriculum clusters are equal intervals of the uniform variable."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import config as config_lib
from jaxdiff import diffusion
from jaxdiff.objectives import formulations

jax.config.update("jax_enable_x64", False)
SIGMAS = np.array([0.002, 0.02, 0.5, 1.0, 10.0, 80.0])


def test_vp_and_ve_preconditioning_follow_edm_table_1():
  beta_d, beta_min, m = 19.9, 0.1, 1000
  t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(1 + SIGMAS ** 2)) - beta_min) / beta_d
  want_vp = (np.ones_like(SIGMAS), -SIGMAS, 1 / np.sqrt(SIGMAS ** 2 + 1), (m - 1) * t)
  for got, want in zip(diffusion.vp_precond(jnp.asarray(SIGMAS)), want_vp):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)   # float32 log1p at small sigma
  # sigma(t) inverts sigma^-1.
  np.testing.assert_allclose(np.asarray(diffusion.vp_sigma(jnp.asarray(t))), SIGMAS, rtol=1e-4)
  want_ve = (np.ones_like(SIGMAS), SIGMAS, np.ones_like(SIGMAS), np.log(0.5 * SIGMAS))
  for got, want in zip(diffusion.ve_precond(jnp.asarray(SIGMAS)), want_ve):
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(diffusion.vp_ve_loss_weight(jnp.asarray(SIGMAS))),
                             1 / SIGMAS ** 2, rtol=1e-6)


@pytest.mark.parametrize("sampler,u_of_sigma", [
    (formulations.VPSampler(), lambda s: (diffusion.vp_sigma_inv(s) - 1e-5) / (1 - 1e-5)),
    (formulations.VESampler(), lambda s: np.log(s / 0.02) / np.log(100 / 0.02)),
], ids=["vp", "ve"])
def test_training_noise_is_uniform_in_its_variable_and_clusters_restrict_it(sampler, u_of_sigma):
  sigma = sampler(jax.random.PRNGKey(0), (20000,))
  u = np.asarray(u_of_sigma(sigma), np.float64)
  assert stats.kstest(u, "uniform").pvalue > 1e-3
  np.testing.assert_allclose(sampler.quantiles(np.array([0.0, 1.0])),
                             np.asarray(sampler.sigma_of(np.array([0.0, 1.0]), np)))
  # Curriculum clusters: equal intervals of u, drawn only from the enabled ones.
  stage = sampler.restrict((False, True, False, True))
  u = np.asarray(u_of_sigma(stage(jax.random.PRNGKey(1), (4000,))), np.float64)
  cluster = np.floor(np.clip(u, 0, 1 - 1e-7) * 4).astype(int)
  assert set(cluster) == {1, 3}
  inside = np.asarray(stage.in_enabled_clusters(jnp.asarray(sampler.quantiles(
      np.array([0.1, 0.3, 0.6, 0.9])), jnp.float32)))
  np.testing.assert_array_equal(inside, [False, True, False, True])


def test_edm_and_stf_train_each_formulation_and_others_refuse_it():
  from jaxdiff import objectives
  from jaxdiff.objectives import base
  c = config_lib.load_config("toy2d_edm")
  for name in ("edm", "stf"):
    c.objective.name = name
    for form, kind in (("vp", formulations.VPSampler), ("ve", formulations.VESampler),
                       ("edm", base.LognormalSampler)):
      c.objective.formulation = form
      config_lib.validate(c)
      assert isinstance(objectives.get(name).noise_sampler(c), kind)
  c.objective.name, c.objective.formulation = "ect", "vp"
  with pytest.raises(config_lib.ConfigError, match="objective.formulation='vp'"):
    config_lib.validate(c)


def test_vp_loss_is_edm_vploss():
  """loss = mean_b (1/sigma^2) sum (D_vp(y + sigma n) - y)^2 with a linear stand-in network."""
  from jaxdiff.objectives.edm import EDMObjective
  apply_fn = lambda p, x, c_noise, *a: p * x + c_noise[:, None] * 1e-3
  sampler = formulations.VPSampler()
  obj = EDMObjective(apply_fn, sampler, formulation="vp")
  y = jax.random.normal(jax.random.PRNGKey(2), (16, 2)) * 0.5
  key = jax.random.PRNGKey(3)
  loss, metrics = obj.loss(jnp.float32(0.7), None, {"image": y}, key, 0)
  k_sigma, k_noise, _, _ = jax.random.split(key, 4)
  sigma = np.asarray(sampler(k_sigma, (16,)), np.float64)
  np.testing.assert_allclose(np.asarray(metrics["sigma"]), sigma, rtol=1e-6)
  n = np.asarray(jax.random.normal(k_noise, y.shape), np.float64)
  x = np.asarray(y, np.float64) + sigma[:, None] * n
  c_in = 1 / np.sqrt(sigma ** 2 + 1)
  t = np.asarray(diffusion.vp_sigma_inv(jnp.asarray(sigma, jnp.float32)), np.float64)
  f = 0.7 * c_in[:, None] * x + (999 * t)[:, None] * 1e-3
  d = x - sigma[:, None] * f
  want = np.mean(np.sum((d - np.asarray(y)) ** 2, 1) / sigma ** 2)
  np.testing.assert_allclose(float(loss), want, rtol=2e-4)
