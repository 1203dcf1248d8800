"""Tests for EDM/CM preconditioning, the Karras grid and lognormal noise.

docs/edm.md#testable-properties items 1-4, plus the truncated lognormal of the curriculum
(section 6.1): its samples stay in the quantile range and, over the full
range, follow the untruncated lognormal.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import diffusion

SIGMA_DATA = 0.5


def _random_sigmas(n=4096, seed=0):
  # Log-uniform over the whole range a sampler or trainer can visit.
  rng = np.random.default_rng(seed)
  return np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=n))


def test_loss_weight_times_c_out_squared_is_one_in_float64():
  # lambda = 1/c_out^2 is what makes the effective F-target unit-weighted.
  with jax.enable_x64(True):
    sigma = jnp.asarray(_random_sigmas(), jnp.float64)
    _, c_out, _, _ = diffusion.edm_precond(sigma, SIGMA_DATA)
    weight = diffusion.edm_loss_weight(sigma, SIGMA_DATA)
    assert weight.dtype == jnp.float64
    rel_err = np.abs(np.asarray(weight * c_out**2) - 1.0)
  assert rel_err.max() < 1e-6


def test_f_target_and_network_input_have_unit_variance():
  with jax.enable_x64(True):
    sigma = jnp.asarray(_random_sigmas(), jnp.float64)
    c_skip, c_out, c_in, _ = diffusion.edm_precond(sigma, SIGMA_DATA)
    sd2 = SIGMA_DATA**2
    # Var((y - c_skip (y + sigma n)) / c_out) for Var(y) = sd^2, n ~ N(0, 1).
    target_var = ((1 - c_skip)**2 * sd2 + c_skip**2 * sigma**2) / c_out**2
    input_var = c_in**2 * (sd2 + sigma**2)
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)
    np.testing.assert_allclose(input_var, 1.0, rtol=1e-12)


def test_f_target_unit_variance_monte_carlo():
  # The same property from samples, so a wrong closed form above can't hide.
  rng = np.random.default_rng(1)
  y = SIGMA_DATA * rng.standard_normal((200_000,))
  noise = rng.standard_normal(y.shape)
  for sigma in (0.01, 0.5, 3.0, 80.0):
    c_skip, c_out, c_in, _ = map(np.asarray, diffusion.edm_precond(
        np.float32(sigma), SIGMA_DATA))
    x = y + sigma * noise
    assert abs(np.var((y - c_skip * x) / c_out) - 1) < 0.02
    assert abs(np.var(c_in * x) - 1) < 0.02


def test_edm_precond_values_and_c_noise():
  sigma = np.array([0.002, 0.5, 80.0], np.float32)
  c_skip, c_out, c_in, c_noise = diffusion.edm_precond(sigma)
  chex.assert_trees_all_close(c_skip, 0.25 / (sigma**2 + 0.25), rtol=1e-6)
  chex.assert_trees_all_close(c_out, sigma * 0.5 / np.sqrt(sigma**2 + 0.25),
                              rtol=1e-6)
  chex.assert_trees_all_close(c_in, 1 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)
  chex.assert_trees_all_close(c_noise, np.log(sigma) / 4, rtol=1e-6)


def test_precond_keeps_dtype_and_shape():
  sigma32 = jnp.ones((2, 3), jnp.float32)
  for coeff in diffusion.edm_precond(sigma32) + diffusion.cm_precond(sigma32):
    chex.assert_shape(coeff, (2, 3))
    chex.assert_type(coeff, jnp.float32)
  with jax.enable_x64(True):
    sigma64 = jnp.ones((5,), jnp.float64)
    for coeff in diffusion.edm_precond(sigma64) + diffusion.cm_precond(sigma64):
      chex.assert_type(coeff, jnp.float64)
    chex.assert_type(diffusion.edm_loss_weight(sigma64), jnp.float64)


def test_cm_precond_boundary_coefficients_are_exact():
  for dtype in (jnp.float32, jnp.bfloat16):
    c_skip, c_out, _, _ = diffusion.cm_precond(jnp.asarray(0.002, dtype))
    assert c_skip == 1 and c_out == 0
  with jax.enable_x64(True):
    c_skip, c_out, _, _ = diffusion.cm_precond(jnp.asarray(0.003, jnp.float64),
                                               sigma_min=0.003)
    assert c_skip == 1 and c_out == 0


def test_cm_precond_shares_c_in_and_c_noise_with_edm():
  sigma = np.array([0.01, 1.0, 40.0], np.float32)
  _, _, edm_c_in, edm_c_noise = diffusion.edm_precond(sigma)
  cm_c_skip, _, cm_c_in, cm_c_noise = diffusion.cm_precond(sigma)
  np.testing.assert_array_equal(cm_c_in, edm_c_in)
  np.testing.assert_array_equal(cm_c_noise, edm_c_noise)
  # Away from the boundary the CM and EDM skips differ (negative control).
  assert not np.allclose(cm_c_skip, diffusion.edm_precond(sigma)[0])


def _random_network(scale=100.0):
  """A raw network with large, input-dependent random outputs."""
  def apply_fn(params, x_in, c_noise, class_labels, augment_labels, train,
               dropout_key):
    del class_labels, augment_labels, train, dropout_key
    noise = jax.random.normal(params, x_in.shape, x_in.dtype)
    return scale * noise * (1 + x_in) + c_noise.reshape(
        (-1,) + (1,) * (x_in.ndim - 1))
  return apply_fn


@pytest.mark.parametrize("use_x64", [False, True])
def test_cm_denoiser_is_identity_at_sigma_min_bit_exactly(use_x64):
  with jax.enable_x64(use_x64):
    dtype = jnp.float64 if use_x64 else jnp.float32
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3), dtype)
    apply_fn = _random_network()
    params = jax.random.PRNGKey(1)
    out = jax.jit(lambda x: diffusion.denoise(
        apply_fn, params, x, jnp.full((4,), 0.002, dtype), precond="cm"))(x)
    chex.assert_type(out, dtype)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    # Negative control: one step above the boundary the network shows up.
    above = diffusion.denoise(apply_fn, params, x,
                              jnp.full((4,), 0.0021, dtype), precond="cm")
    assert np.abs(np.asarray(above - x)).max() > 1e-3


def test_denoise_applies_edm_formula_and_passes_arguments():
  seen = {}

  def apply_fn(params, x_in, c_noise, class_labels, augment_labels, train,
               dropout_key):
    seen.update(x_in=x_in, c_noise=c_noise, class_labels=class_labels,
                augment_labels=augment_labels, train=train,
                dropout_key=dropout_key)
    return params * jnp.tanh(x_in)

  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
  sigma = jnp.array([0.01, 1.0, 50.0])
  labels, aug, key = jnp.arange(3), jnp.zeros((3, 9)), jax.random.PRNGKey(7)
  out = diffusion.denoise(apply_fn, 2.0, x, sigma, class_labels=labels,
                          augment_labels=aug, train=True, dropout_key=key)
  c_skip, c_out, c_in, c_noise = (
      c.reshape(3, 1, 1, 1) for c in diffusion.edm_precond(sigma))
  chex.assert_trees_all_close(seen["x_in"], c_in * x, rtol=1e-6)
  chex.assert_shape(seen["c_noise"], (3,))
  chex.assert_trees_all_close(seen["c_noise"], c_noise.reshape(3), rtol=1e-6)
  assert seen["class_labels"] is labels and seen["augment_labels"] is aug
  assert seen["train"] is True and seen["dropout_key"] is key
  expected = c_skip * x + c_out * 2.0 * jnp.tanh(c_in * x)
  chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-6)


def test_denoise_computes_in_x_dtype_and_rejects_unknown_precond():
  apply_fn = lambda p, x, c, *_: x.astype(jnp.float32)  # Network in float32.
  with jax.enable_x64(True):
    x = np.ones((2, 3), np.float64)
    out = diffusion.denoise(apply_fn, None, x, np.array([1.0, 2.0]))
    chex.assert_type(out, jnp.float64)
  with pytest.raises(ValueError, match="precond"):
    diffusion.denoise(apply_fn, None, x, 1.0, precond="subvp")


def _karras_reference(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  # EDM generate.py's formula in float64 numpy.
  i = np.arange(n, dtype=np.float64)
  grid = (sigma_max**(1 / rho) + i / (n - 1) *
          (sigma_min**(1 / rho) - sigma_max**(1 / rho)))**rho
  return np.append(grid, 0.0)


def test_karras_grid_n18():
  with jax.enable_x64(True):
    grid = np.asarray(diffusion.karras_sigmas(18))
    assert grid.dtype == np.float64
  assert grid.shape == (19,)
  assert grid[0] == 80.0 and grid[17] == 0.002 and grid[18] == 0.0
  assert np.all(np.diff(grid) < 0)
  np.testing.assert_allclose(grid, _karras_reference(18), rtol=1e-12)
  grid32 = diffusion.karras_sigmas(18)
  chex.assert_type(grid32, jnp.float32)
  assert grid32[0] == np.float32(80.0) and grid32[17] == np.float32(0.002)
  assert np.all(np.diff(np.asarray(grid32)) < 0)
  np.testing.assert_allclose(grid32, _karras_reference(18), rtol=2e-6)


def test_karras_grid_other_settings():
  np.testing.assert_allclose(
      diffusion.karras_sigmas(5, sigma_min=0.01, sigma_max=10.0, rho=3.0),
      _karras_reference(5, 0.01, 10.0, 3.0), rtol=2e-6)
  np.testing.assert_array_equal(diffusion.karras_sigmas(1), [80.0, 0.0])
  with pytest.raises(ValueError):
    diffusion.karras_sigmas(0)


# ---------------------------------------------------------------- noise ---

P_MEAN, P_STD = -1.2, 1.2


def test_lognormal_full_range_matches_scipy_lognormal():
  sigma = diffusion.lognormal_sigma(jax.random.PRNGKey(0), (20_000,))
  chex.assert_shape(sigma, (20_000,))
  chex.assert_type(sigma, jnp.float32)
  reference = stats.lognorm(s=P_STD, scale=np.exp(P_MEAN))
  assert stats.kstest(np.asarray(sigma), reference.cdf).pvalue > 1e-3
  # Negative control: the test can tell a shifted mean apart.
  shifted = stats.lognorm(s=P_STD, scale=np.exp(P_MEAN + 0.1))
  assert stats.kstest(np.asarray(sigma), shifted.cdf).pvalue < 1e-6


def test_truncated_lognormal_stays_in_range_and_follows_truncated_law():
  lo, hi = 0.35, 0.6
  sample = jax.jit(
      lambda key, lo, hi: diffusion.lognormal_sigma(
          key, (20_000,), quantile_range=(lo, hi)))
  sigma = np.asarray(sample(jax.random.PRNGKey(1), lo, hi), np.float64)
  lower = stats.lognorm(s=P_STD, scale=np.exp(P_MEAN)).ppf(lo)
  upper = stats.lognorm(s=P_STD, scale=np.exp(P_MEAN)).ppf(hi)
  assert sigma.min() >= lower * (1 - 1e-5)
  assert sigma.max() <= upper * (1 + 1e-5)
  # Inside the range, the CDF transform is uniform (exact truncation).
  u = (np.asarray(diffusion.lognormal_cdf(sigma, P_MEAN, P_STD)) - lo) / (
      hi - lo)
  assert stats.kstest(u, "uniform").pvalue > 1e-3
  # Both ends of the range are actually reached (not a narrower interval).
  assert sigma.min() < lower * 1.01 and sigma.max() > upper * 0.99


def test_lognormal_is_finite_at_the_extremes():
  key = jax.random.PRNGKey(2)
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    for q_range in ((0.0, 1e-30), (1.0 - 1e-12, 1.0), (0.0, 1.0)):
      sigma = diffusion.lognormal_sigma(key, (1000,), quantile_range=q_range,
                                        dtype=dtype)
      chex.assert_type(sigma, dtype)
      sigma = np.asarray(sigma, np.float32)
      assert np.all(np.isfinite(sigma)) and np.all(sigma > 0), (dtype, q_range)
  edges = diffusion.lognormal_quantile(jnp.array([0.0, 1.0]))
  assert np.all(np.isfinite(edges)) and np.all(np.asarray(edges) > 0)


def test_lognormal_sigma_float64_under_x64():
  with jax.enable_x64(True):
    sigma = diffusion.lognormal_sigma(jax.random.PRNGKey(3), (4, 2),
                                      dtype=jnp.float64)
    chex.assert_type(sigma, jnp.float64)
    chex.assert_shape(sigma, (4, 2))


def test_lognormal_quantile_inverts_cdf():
  sigma = np.array([0.003, 0.1, 0.3, 1.0, 5.0, 60.0])
  expected_u = stats.norm.cdf((np.log(sigma) - P_MEAN) / P_STD)
  with jax.enable_x64(True):
    u = diffusion.lognormal_cdf(jnp.asarray(sigma), P_MEAN, P_STD)
    np.testing.assert_allclose(u, expected_u, rtol=1e-12)
    np.testing.assert_allclose(diffusion.lognormal_quantile(u, P_MEAN, P_STD),
                               sigma, rtol=1e-9)
  # float32: u near 1 has a resolution of 6e-8, so the upper tail (sigma=60,
  # u = 0.99995) is only good to ~2e-4; check the body tightly.
  u32 = diffusion.lognormal_cdf(sigma[:5].astype(np.float32), P_MEAN, P_STD)
  np.testing.assert_allclose(diffusion.lognormal_quantile(u32, P_MEAN, P_STD),
                             sigma[:5], rtol=1e-4)
