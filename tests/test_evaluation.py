"""Tests for the Fréchet distance, the toy distances and the digits feature net."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxdiff.evaluation import compute_stats
from jaxdiff.evaluation import digits_fid
from jaxdiff.evaluation import DigitsFeatureExtractor
from jaxdiff.evaluation import frechet_distance
from jaxdiff.evaluation import mmd_rbf
from jaxdiff.evaluation import sliced_wasserstein
from jaxdiff.evaluation.digits_classifier import load_digits_images
from jaxdiff.evaluation.digits_classifier import NUM_TRAIN_IMAGES

# ------------------------------------------------------- Fréchet distance ---


def _scipy_reference_fd(mu1, sigma1, mu2, sigma2):
  """The pytorch-fid formula: sqrtm of the product, float64."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2 * np.trace(covmean.real))


def _random_gaussian_stats(rng, d, n):
  features = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
  return features.mean(0), np.cov(features, rowvar=False)


def test_frechet_matches_scipy_reference_full_rank():
  rng = np.random.default_rng(0)
  mu1, sigma1 = _random_gaussian_stats(rng, 24, 500)
  mu2, sigma2 = _random_gaussian_stats(rng, 24, 500)
  expected = _scipy_reference_fd(mu1, sigma1, mu2, sigma2)
  got = frechet_distance(mu1, sigma1, mu2, sigma2)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  # Symmetric, and accepts float32 jax arrays (it is float64 inside).
  np.testing.assert_allclose(frechet_distance(mu2, sigma2, mu1, sigma1),
                             expected, rtol=1e-9)
  got32 = frechet_distance(*map(lambda a: jnp.asarray(a, jnp.float32),
                                (mu1, sigma1, mu2, sigma2)))
  np.testing.assert_allclose(got32, expected, rtol=1e-4)


def test_frechet_rank_deficient_commuting_covariances_closed_form():
  # Same eigenvectors: FD = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 exactly,
  # here with many zero eigenvalues on both sides (rank 5 and rank 3 of 16).
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
  a = np.zeros(16)
  b = np.zeros(16)
  a[:5] = rng.uniform(0.5, 2.0, 5)
  b[2:5] = rng.uniform(0.5, 2.0, 3)
  mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(a) - np.sqrt(b))**2)
  got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_rank_deficient_from_few_samples():
  # Fewer samples than dimensions, as with small evaluation sets: compare
  # with the eigenvalues of the (non-symmetric) product in float64.
  rng = np.random.default_rng(2)
  mu1, sigma1 = _random_gaussian_stats(rng, 32, 10)  # rank 9
  mu2, sigma2 = _random_gaussian_stats(rng, 32, 20)  # rank 19
  assert np.linalg.matrix_rank(sigma1) < 32 and np.linalg.matrix_rank(sigma2) < 32
  eigvals = np.linalg.eigvals(sigma1 @ sigma2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigvals.real, 0, None)))
  expected = (np.sum((mu1 - mu2)**2) + np.trace(sigma1) + np.trace(sigma2) -
              2 * trace_sqrt)
  got = frechet_distance(mu1, sigma1, mu2, sigma2)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("num_samples", [5, 200])
def test_frechet_identical_stats_is_zero(num_samples):
  rng = np.random.default_rng(3)
  mu, sigma = _random_gaussian_stats(rng, 16, num_samples)
  assert frechet_distance(mu, sigma, mu, sigma) < 1e-9 * np.trace(sigma)
  # Negative control: a mean shift adds exactly |dmu|^2.
  shift = np.full(16, 0.1)
  np.testing.assert_allclose(frechet_distance(mu, sigma, mu + shift, sigma),
                             shift @ shift, rtol=1e-6, atol=1e-9)


def test_frechet_rejects_mismatched_shapes():
  with pytest.raises(ValueError):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------- toy distances ---


def test_mmd_zero_for_identical_and_grows_with_shift():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((500, 2)).astype(np.float32)
  x_other = rng.standard_normal((400, 2)).astype(np.float32)
  assert float(mmd_rbf(x, x)) == 0.0
  same = float(mmd_rbf(x, x_other))
  small = float(mmd_rbf(x, x_other + 0.3))
  large = float(mmd_rbf(x, x_other + 1.0))
  # The V-statistic's bias is at most len(bandwidths) * (1/n + 1/m) = 0.018.
  assert same < 0.018 and same < small < large


def test_mmd_is_jittable_and_keeps_float64():
  mmd = jax.jit(mmd_rbf, static_argnames="bandwidths")
  with jax.enable_x64(True):
    x = np.random.default_rng(1).standard_normal((50, 2))
    out = mmd(x, x + 1.0, bandwidths=(0.5, 1.0))
    chex.assert_type(out, jnp.float64)
    assert out > 0.1


def test_sliced_wasserstein_of_a_translation():
  # Translating by v shifts every 1-D projection by theta.v, so
  # SW2^2 = E(theta.v)^2 = |v|^2 / d for uniform directions.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((300, 2))
  v = np.array([0.6, -0.8])
  sw = sliced_wasserstein(x, x + v, jax.random.PRNGKey(0),
                          num_projections=1000)
  np.testing.assert_allclose(float(sw), 1.0 / np.sqrt(2), rtol=0.05)
  assert float(sliced_wasserstein(x, x, jax.random.PRNGKey(0))) == 0.0


def test_sliced_wasserstein_unequal_sizes_and_jit():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((600, 2)).astype(np.float32)
  y = rng.standard_normal((1000, 2)).astype(np.float32)
  sw = jax.jit(sliced_wasserstein, static_argnames="num_projections")
  same = float(sw(x, y, jax.random.PRNGKey(0), num_projections=64))
  shifted = float(sw(x, y * 2.0, jax.random.PRNGKey(0), num_projections=64))
  assert same < 0.15 < shifted


# ---------------------------------------------------- digits classifier ---


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("digits_classifier"))


@pytest.fixture(scope="module")
def extractor(digits_cache):
  # Trains once (a few seconds) and writes the cache for the tests below.
  return DigitsFeatureExtractor(cache_dir=digits_cache)


@pytest.fixture(scope="module")
def digits():
  return load_digits_images()


def test_digits_classifier_is_accurate(extractor, digits):
  assert not extractor.loaded_from_cache
  assert extractor.accuracy > 0.95
  images, labels = digits
  held_out = extractor.predict(images[NUM_TRAIN_IMAGES:])
  np.testing.assert_allclose(np.mean(held_out == labels[NUM_TRAIN_IMAGES:]),
                             extractor.accuracy)


def test_digits_features_are_deterministic_and_cached(extractor, digits,
                                                      digits_cache):
  images = digits[0][:700]  # More than one feature chunk.
  features = extractor.features(images)
  chex.assert_shape(features, (700, extractor.feature_dim))
  np.testing.assert_array_equal(features, extractor.features(images))
  # Same features one at a time (chunk padding does not leak into rows).
  np.testing.assert_allclose(extractor.features(images[:3, :, :, 0]),
                             features[:3], rtol=1e-6, atol=1e-6)
  reloaded = DigitsFeatureExtractor(cache_dir=digits_cache)
  assert reloaded.loaded_from_cache
  assert reloaded.accuracy == extractor.accuracy
  np.testing.assert_array_equal(reloaded.features(images), features)


def test_digits_fid_separates_real_from_noise(extractor, digits):
  images = digits[0]
  train, held_out = images[:NUM_TRAIN_IMAGES], images[NUM_TRAIN_IMAGES:]
  noise = np.random.default_rng(0).uniform(-1, 1, held_out.shape)
  real_fid = digits_fid(held_out, train, extractor)
  noise_fid = digits_fid(noise.astype(np.float32), train, extractor)
  # Measured: about 16 vs 232 (train subset vs train: 15).
  assert real_fid < 0.15 * noise_fid, (real_fid, noise_fid)
  # A cruder corruption (blur-like: average with the mean image) lands in
  # between, so the metric is graded, not binary.
  blurred = 0.5 * held_out + 0.5 * train.mean(0, keepdims=True)
  mid_fid = digits_fid(blurred, train, extractor)
  assert real_fid < mid_fid < noise_fid, (real_fid, mid_fid, noise_fid)


def test_compute_stats_matches_numpy():
  features = np.random.default_rng(0).standard_normal((50, 4))
  mu, sigma = compute_stats(features)
  np.testing.assert_allclose(mu, features.mean(0))
  np.testing.assert_allclose(sigma, np.cov(features.T))
  with pytest.raises(ValueError):
    compute_stats(features[:1])
