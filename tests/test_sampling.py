"""Tests for the EDM Heun sampler and the consistency sampler.

docs/edm.md#testable-properties items 4-5: 2N - 1 = 35 denoiser evaluations for N = 18, and
with the ideal denoiser of a 2-D Gaussian mixture the sampler maps
N(0, 80^2) onto the mixture (with a wrong denoiser as a negative control).
"""
import chex
import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import karras_sigmas
from jaxdiff.evaluation import mmd_rbf
from jaxdiff.evaluation import sliced_wasserstein
from jaxdiff.sampling import consistency_sampler
from jaxdiff.sampling import edm_sampler

SIGMA_DATA = 0.5


def gaussian_denoiser(x, sigma):
  """Ideal denoiser E[y | y + sigma n] for y ~ N(0, SIGMA_DATA^2 I)."""
  scale = SIGMA_DATA**2 / (SIGMA_DATA**2 + sigma**2)
  return scale.reshape((-1,) + (1,) * (x.ndim - 1)) * x


# ------------------------------------------------------------ call counts ---


def _counting(denoise_fn):
  """Wraps denoise_fn so each *runtime* evaluation bumps a host counter."""
  calls = []

  def wrapped(x, sigma):
    io_callback(lambda: calls.append(1), None, ordered=True)
    return denoise_fn(x, sigma)

  return wrapped, calls


@pytest.mark.parametrize("num_steps", [18, 5, 1])
def test_heun_makes_2n_minus_1_denoiser_evaluations(num_steps):
  denoise_fn, calls = _counting(gaussian_denoiser)
  latents = jnp.ones((2, 3))
  out = jax.jit(lambda z: edm_sampler(denoise_fn, z, num_steps=num_steps))(
      latents)
  out.block_until_ready()
  assert len(calls) == 2 * num_steps - 1  # 35 for EDM's N = 18.


def test_heun_call_count_without_jit():
  # Same count with the loops run eagerly, by a plain Python counter.
  calls = []

  def denoise_fn(x, sigma):
    calls.append(float(sigma[0]))
    return gaussian_denoiser(x, sigma)

  with jax.disable_jit():
    edm_sampler(denoise_fn, np.ones((2, 3), np.float32), num_steps=18)
  assert len(calls) == 35
  # Each noise level of the grid except the final 0 is visited; the Heun
  # correction evaluates at t_{i+1}, never at sigma = 0.
  grid = np.asarray(karras_sigmas(18))
  np.testing.assert_allclose(sorted(set(calls), reverse=True), grid[:18],
                             rtol=1e-6)


def test_sampler_traces_denoiser_a_fixed_number_of_times():
  # The loop is not unrolled: the program has the same size for any N.
  traces = []

  def denoise_fn(x, sigma):
    traces.append(1)
    return gaussian_denoiser(x, sigma)

  for num_steps in (4, 40):
    traces.clear()
    jax.jit(lambda z: edm_sampler(denoise_fn, z, num_steps=num_steps)).lower(
        jnp.ones((2, 3)))
    assert len(traces) == 3, num_steps  # Heun's two calls + the last Euler.


# ------------------------------------------------------- reference checks ---


def _reference_edm_sampler(denoise_fn, latents, num_steps, s_churn=0.0,
                           s_min=0.0, s_max=float("inf"), s_noise=1.0,
                           key=None):
  """EDM generate.py's loop, written out in float64 numpy."""
  t_steps = np.append(
      (80.0**(1 / 7) + np.arange(num_steps) / (num_steps - 1) *
       (0.002**(1 / 7) - 80.0**(1 / 7)))**7, 0.0)
  x_next = np.asarray(latents, np.float64) * t_steps[0]
  batch = latents.shape[0]
  d = lambda x, t: np.asarray(denoise_fn(x, np.full((batch,), t)), np.float64)
  for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
    x_cur = x_next
    gamma = (min(s_churn / num_steps, np.sqrt(2) - 1)
             if s_min <= t_cur <= s_max else 0.0)
    t_hat = t_cur + gamma * t_cur
    noise = 0.0
    if s_churn > 0:
      noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i),
                                           x_cur.shape, jnp.float64))
    x_hat = x_cur + np.sqrt(t_hat**2 - t_cur**2) * s_noise * noise
    d_cur = (x_hat - d(x_hat, t_hat)) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if i < num_steps - 1:
      d_prime = (x_next - d(x_next, t_next)) / t_next
      x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
  return x_next


def _nonlinear_denoiser(x, sigma):
  # Nonlinear in x and sigma so that the Heun/Euler mix matters.
  s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
  return 0.8 * jnp.tanh(x / (1 + s)) + 0.1 * jnp.sin(s)


@pytest.mark.parametrize("churn", [
    dict(),
    dict(s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.007),
])
def test_matches_reference_loop_in_float64(churn):
  with jax.enable_x64(True):
    latents = np.random.default_rng(0).standard_normal((4, 3, 2))
    key = jax.random.PRNGKey(5) if churn else None
    out = jax.jit(lambda z: edm_sampler(_nonlinear_denoiser, z, num_steps=7,
                                        key=key, **churn))(latents)
    chex.assert_type(out, jnp.float64)
    expected = _reference_edm_sampler(_nonlinear_denoiser, latents, 7,
                                      key=key, **churn)
  np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_churn_outside_s_range_is_deterministic_sampler():
  # gamma = 0 for every t when [s_min, s_max] misses the grid. float64: in
  # float32 the two programs differ by rounding (x ~ 80 early on).
  with jax.enable_x64(True):
    latents = jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float64)
    plain = edm_sampler(_nonlinear_denoiser, latents, num_steps=6)
    gated = edm_sampler(_nonlinear_denoiser, latents, num_steps=6,
                        s_churn=30.0, s_min=100.0, s_max=200.0,
                        key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(plain, gated, rtol=1e-12, atol=1e-12)
    # Negative control: in range, churn changes the result and uses the key.
    churned = [edm_sampler(_nonlinear_denoiser, latents, num_steps=6,
                           s_churn=30.0, key=jax.random.PRNGKey(k))
               for k in (1, 2)]
  assert np.abs(np.asarray(churned[0] - plain)).max() > 1e-3
  assert np.abs(np.asarray(churned[0] - churned[1])).max() > 1e-3


def test_churn_needs_a_key():
  with pytest.raises(ValueError, match="key"):
    edm_sampler(gaussian_denoiser, jnp.ones((2, 2)), s_churn=1.0)


def test_gaussian_data_converges_to_exact_ode_solution_at_second_order():
  # For y ~ N(0, sd^2) the PF-ODE solution is x(s) = x(T) sqrt(s^2 + sd^2) /
  # sqrt(T^2 + sd^2), so the sampler must output latents * T sd / sqrt(T^2 +
  # sd^2). Heun is second order: doubling N divides the error by ~4 (Euler
  # would give ~2). At EDM's N = 18 this toy is still 5.5% off.
  with jax.enable_x64(True):
    latents = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    exact = latents * 80.0 * SIGMA_DATA / np.sqrt(80.0**2 + SIGMA_DATA**2)
    errors = []
    for num_steps in (18, 36, 72):
      out = edm_sampler(gaussian_denoiser, latents, num_steps=num_steps)
      ratio = np.asarray(out / exact)
      # The map is linear: every sample is scaled by the same factor.
      np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-9)
      errors.append(abs(ratio[0, 0] - 1))
  assert errors[0] < 0.06
  assert 3.5 < errors[0] / errors[1] < 5 and 3.5 < errors[1] / errors[2] < 5


def test_accepts_numpy_and_keeps_dtype():
  out32 = edm_sampler(gaussian_denoiser, np.ones((2, 2), np.float32),
                      num_steps=3)
  chex.assert_type(out32, jnp.float32)
  with jax.enable_x64(True):
    out64 = edm_sampler(gaussian_denoiser, np.ones((2, 2), np.float64),
                        num_steps=3)
    chex.assert_type(out64, jnp.float64)


# ------------------------------------------------ Gaussian mixture (2-D) ---

MIX_MEANS = 0.6 * np.array([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
MIX_WEIGHTS = np.array([0.1, 0.2, 0.3, 0.4])
MIX_STD = 0.15


def mixture_denoiser(means, weights, std):
  """Ideal denoiser of sum_k w_k N(mu_k, std^2 I) in 2-D (closed form)."""
  means, log_w = jnp.asarray(means), jnp.log(jnp.asarray(weights))

  def denoise_fn(x, sigma):
    var = std**2 + sigma[:, None] ** 2                            # [B, 1]
    sq_dist = jnp.sum((x[:, None, :] - means[None]) ** 2, -1)     # [B, K]
    resp = jax.nn.softmax(log_w - sq_dist / (2 * var) - jnp.log(var), -1)
    posterior_means = means[None] + (std**2 / var)[..., None] * (
        x[:, None, :] - means[None])
    return jnp.sum(resp[..., None] * posterior_means, axis=1)

  return denoise_fn


def sample_mixture(key, n):
  pick, noise = jax.random.split(key)
  component = jax.random.choice(pick, len(MIX_WEIGHTS), (n,),
                                p=jnp.asarray(MIX_WEIGHTS))
  return jnp.asarray(MIX_MEANS)[component] + MIX_STD * jax.random.normal(
      noise, (n, 2), jnp.float64)


def test_ideal_denoiser_maps_noise_onto_gaussian_mixture():
  n = 1000
  with jax.enable_x64(True):
    latents = jax.random.normal(jax.random.PRNGKey(0), (n, 2), jnp.float64)
    reference = sample_mixture(jax.random.PRNGKey(1), n)
    run = lambda denoise_fn: jax.jit(
        lambda z: edm_sampler(denoise_fn, z))(latents)
    samples = run(mixture_denoiser(MIX_MEANS, MIX_WEIGHTS, MIX_STD))
    # Wrong denoisers: equal weights; one moment-matched Gaussian.
    equal_weights = run(mixture_denoiser(MIX_MEANS, np.ones(4) / 4, MIX_STD))
    mean = MIX_WEIGHTS @ MIX_MEANS
    spread = np.sqrt(MIX_STD**2 + np.mean(MIX_WEIGHTS @ MIX_MEANS**2 - mean**2))
    one_gaussian = run(mixture_denoiser(mean[None], np.ones(1), spread))
    key = jax.random.PRNGKey(2)
    distances = lambda s: (float(mmd_rbf(s, reference)),
                           float(sliced_wasserstein(s, reference, key)))
    # Two independent mixture samples of this size give about (0.003, 0.04).
    good_mmd, good_sw = distances(samples)
    assert good_mmd < 0.015 and good_sw < 0.08, (good_mmd, good_sw)
    for wrong in (equal_weights, one_gaussian):
      bad_mmd, bad_sw = distances(wrong)
      assert bad_mmd > 0.03 and bad_sw > 0.12, (bad_mmd, bad_sw)
  # Mode weights and widths are recovered, not just "some" mixture.
  component = np.argmin(
      ((np.asarray(samples)[:, None] - MIX_MEANS[None]) ** 2).sum(-1), axis=1)
  fractions = np.bincount(component, minlength=4) / n
  np.testing.assert_allclose(fractions, MIX_WEIGHTS, atol=0.045)
  residual = np.asarray(samples) - MIX_MEANS[component]
  np.testing.assert_allclose(residual.std(axis=0), MIX_STD, rtol=0.1)


# ------------------------------------------------------------ consistency ---


def test_consistency_one_step_with_identity_like_f():
  latents = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 4, 1))
  seen = []

  def f(x, sigma):
    seen.append(sigma)
    return 0.5 * x + sigma.reshape(-1, 1, 1, 1)

  out = consistency_sampler(f, latents, [80.0])
  chex.assert_trees_all_close(out, 0.5 * (80.0 * latents) + 80.0, rtol=1e-6)
  chex.assert_shape(seen[0], (5,))
  assert len(seen) == 1


def test_consistency_two_step_matches_manual_loop():
  latents = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  key = jax.random.PRNGKey(9)
  f = lambda x, s: jnp.tanh(x) * (1 + s[:, None]) / 2
  out = jax.jit(lambda z: consistency_sampler(f, z, [80.0, 0.821, 0.1], key))(
      latents)
  keys = jax.random.split(key, 2)
  s0, s1, s2 = (jnp.full((6,), s) for s in (80.0, 0.821, 0.1))
  x = f(latents * 80.0, s0)
  x = f(x + 0.821 * jax.random.normal(keys[0], x.shape), s1)
  x = f(x + 0.1 * jax.random.normal(keys[1], x.shape), s2)
  chex.assert_trees_all_close(out, x, rtol=1e-6)


def test_consistency_identity_f_adds_fresh_noise_per_step():
  # f = identity: x = 80 z + 0.821 z', with z' independent of z.
  latents = jax.random.normal(jax.random.PRNGKey(0), (20_000,))[:, None]
  out = consistency_sampler(lambda x, s: x, latents, [80.0, 0.821],
                            jax.random.PRNGKey(1))
  residual = np.asarray(out - 80.0 * latents)
  assert abs(residual.std() - 0.821) < 0.02
  assert abs(np.corrcoef(residual[:, 0], np.asarray(latents)[:, 0])[0, 1]) < 0.03


def test_consistency_ideal_gaussian_function_gives_data_std():
  # For y ~ N(0, sd^2) the consistency function is the ODE flow to ~0:
  # f(x, s) = x sd / sqrt(s^2 + sd^2); samples then have std sd.
  f = lambda x, s: x * SIGMA_DATA / jnp.sqrt(s[:, None]**2 + SIGMA_DATA**2)
  latents = jax.random.normal(jax.random.PRNGKey(0), (20_000, 1))
  for sigmas in ([80.0], [80.0, 0.821]):
    out = consistency_sampler(f, latents, sigmas, jax.random.PRNGKey(1))
    assert abs(float(jnp.std(out)) - SIGMA_DATA) < 0.01


def test_consistency_counts_keys_and_dtypes():
  f, calls = _counting(lambda x, s: x)
  out = jax.jit(lambda z: consistency_sampler(
      f, z, np.array([80.0, 10.0, 1.0, 0.5]), jax.random.PRNGKey(0)))(
          jnp.ones((2, 2)))
  out.block_until_ready()
  assert len(calls) == 4
  with pytest.raises(ValueError, match="key"):
    consistency_sampler(lambda x, s: x, jnp.ones((2, 2)), [80.0, 0.821])
  with jax.enable_x64(True):
    out64 = consistency_sampler(lambda x, s: x, np.ones((2, 2)), [80.0])
    chex.assert_type(out64, jnp.float64)
