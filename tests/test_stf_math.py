"""Tests of the STF target (docs/stf.md#testable-properties): exactness, limits, variance, bias, sharding, numerics."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxdiff.objectives import stf

PM_ONE = np.array([[-1.0], [1.0]])  # the two-point dataset {-1, +1} in 1-D


def _direct_posterior_mean(x, sigma, reference):
  """float64 numpy reference: explicit differences (no matmul expansion)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(reference, np.float64).reshape(len(reference), -1)
  sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  logits = -sq / (2 * np.asarray(sigma, np.float64).reshape(-1, 1) ** 2)
  w = np.exp(logits - special.logsumexp(logits, axis=1, keepdims=True))
  return w @ y


# ----------------------------------------------------------------------------- exactness

def test_whole_dataset_reference_gives_tanh_exactly():
  # With the reference set equal to the dataset {-1, +1}, the STF target is the
  # exact posterior mean E[y | x] = tanh(x / sigma^2).
  with jax.enable_x64(True):
    x = np.linspace(-3, 3, 13)[:, None]
    for sigma in (0.3, 1.0, 2.5):
      target = stf.stf_target(jnp.asarray(x), sigma, jnp.asarray(PM_ONE))
      assert target.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(target[:, 0]), np.tanh(x[:, 0] / sigma ** 2),
                                 rtol=0, atol=1e-13)


def test_five_point_2d_dataset_matches_closed_form_posterior():
  ref = np.array([[0.0, 0.0], [1.0, 0.5], [-0.7, 0.2], [0.3, -1.0], [-0.2, 0.9]])
  rng = np.random.default_rng(0)
  x = ref[rng.integers(0, 5, 16)] + 0.6 * rng.standard_normal((16, 2))
  sigma = np.linspace(0.2, 2.0, 16)
  expected = _direct_posterior_mean(x, sigma, ref)
  with jax.enable_x64(True):
    got64 = stf.stf_target(jnp.asarray(x), jnp.asarray(sigma), jnp.asarray(ref))
    np.testing.assert_allclose(np.asarray(got64), expected, atol=1e-12)
  got32 = stf.stf_target(jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32),
                         jnp.asarray(ref, jnp.float32))
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got32), expected, atol=1e-6)


def test_single_reference_is_plain_denoising_target():
  # n = 1: the target is the generating image itself, i.e. DSM / the EDM loss.
  rng = np.random.default_rng(1)
  y = rng.uniform(-1, 1, (1, 4, 4, 3)).astype(np.float32)
  x = y + 3.0 * rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
  target = stf.stf_target(x, jnp.full((5,), 0.5), y)
  np.testing.assert_array_equal(np.asarray(target), np.broadcast_to(y, (5, 4, 4, 3)))


# ----------------------------------------------------------------------------- weights

def test_weights_are_a_distribution_and_match_target():
  rng = np.random.default_rng(2)
  ref = rng.uniform(-1, 1, (32, 4, 4, 3)).astype(np.float32)
  x = ref[:6] + 0.8 * rng.standard_normal((6, 4, 4, 3)).astype(np.float32)
  sigma = jnp.linspace(0.1, 5.0, 6)
  log_w = stf.stf_weights(x, sigma, ref)
  chex.assert_shape(log_w, (6, 32))
  w = np.exp(np.asarray(log_w, np.float64))
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  # The target is the weight-averaged reference.
  np.testing.assert_allclose(np.asarray(stf.stf_target(x, sigma, ref)).reshape(6, -1),
                             w @ ref.reshape(32, -1), atol=1e-5)


def test_shift_invariance():
  # Only differences x - y_i enter: shifting x and every reference by the same
  # vector shifts the target by that vector (and leaves the weights alone).
  rng = np.random.default_rng(3)
  ref = rng.standard_normal((20, 6))
  x = ref[:7] + rng.standard_normal((7, 6))
  shift = 5.0 * rng.standard_normal(6)
  with jax.enable_x64(True):
    base = stf.stf_target(jnp.asarray(x), 0.9, jnp.asarray(ref))
    moved = stf.stf_target(jnp.asarray(x + shift), 0.9, jnp.asarray(ref + shift))
    np.testing.assert_allclose(np.asarray(moved), np.asarray(base) + shift, atol=1e-10)
    np.testing.assert_allclose(np.asarray(stf.stf_weights(x + shift, 0.9, ref + shift)),
                               np.asarray(stf.stf_weights(x, 0.9, ref)), atol=1e-9)


def test_sigma_shapes_and_leading_dims_agree():
  rng = np.random.default_rng(4)
  ref = rng.standard_normal((10, 2, 3)).astype(np.float32)
  x = rng.standard_normal((4, 2, 3)).astype(np.float32)
  a = stf.stf_target(x, 0.7, ref)
  b = stf.stf_target(x, jnp.full((4,), 0.7), ref)
  c = stf.stf_target(x, jnp.full((4, 1, 1), 0.7), ref)
  chex.assert_trees_all_close(a, b, c, atol=1e-6)
  # Extra leading dims broadcast like the batch dim.
  d = stf.stf_target(x.reshape(2, 2, 2, 3), jnp.full((2, 2), 0.7), ref)
  np.testing.assert_allclose(np.asarray(d).reshape(4, 2, 3), np.asarray(a), atol=1e-6)


def test_jit_matches_eager():
  rng = np.random.default_rng(5)
  ref = rng.standard_normal((16, 8)).astype(np.float32)
  x = rng.standard_normal((3, 8)).astype(np.float32)
  sigma = jnp.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(np.asarray(jax.jit(stf.stf_target)(x, sigma, ref)),
                             np.asarray(stf.stf_target(x, sigma, ref)), atol=1e-6)


# ----------------------------------------------------------------------------- labels

def test_label_restriction_zeroes_other_labels():
  rng = np.random.default_rng(6)
  ref = rng.standard_normal((12, 5)).astype(np.float32)
  ref_labels = np.array([0, 1, 2] * 4)
  x = ref[:3] + 2.0 * rng.standard_normal((3, 5)).astype(np.float32)
  labels = ref_labels[:3]
  w = np.exp(np.asarray(stf.stf_weights(x, 3.0, ref, labels, ref_labels)))
  for b in range(3):
    other = ref_labels != labels[b]
    assert np.all(w[b, other] == 0.0)     # exactly zero, not just small
    assert np.all(w[b, ~other] > 0.0)
    np.testing.assert_allclose(w[b].sum(), 1.0, atol=1e-6)
  # Equivalent to running unconditional STF on the same-label subset.
  target = stf.stf_target(x, 3.0, ref, labels, ref_labels)
  for b in range(3):
    subset = ref[ref_labels == labels[b]]
    np.testing.assert_allclose(np.asarray(target[b]),
                               np.asarray(stf.stf_target(x[b:b + 1], 3.0, subset)[0]), atol=1e-6)


def test_label_without_any_reference_falls_back_to_all_references():
  # Guard against NaN when a caller breaks the "generating sample is in the
  # reference set" contract: such a query keeps every reference.
  rng = np.random.default_rng(7)
  ref = rng.standard_normal((6, 3)).astype(np.float32)
  x = rng.standard_normal((2, 3)).astype(np.float32)
  target = stf.stf_target(x, 1.0, ref, labels=np.array([0, 9]), reference_labels=np.zeros(6, int))
  assert np.all(np.isfinite(np.asarray(target)))
  np.testing.assert_allclose(np.asarray(target[1]), np.asarray(stf.stf_target(x, 1.0, ref)[1]),
                             atol=1e-6)


# ----------------------------------------------------------------------------- gradients

def test_no_gradient_flows_through_target():
  rng = np.random.default_rng(8)
  ref = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
  sigma = jnp.array([0.5, 1.0, 1.5])
  grad_x, grad_sigma, grad_ref = jax.grad(
      lambda x, s, r: jnp.sum(stf.stf_target(x, s, r) ** 2), argnums=(0, 1, 2))(x, sigma, ref)
  for g in (grad_x, grad_sigma, grad_ref):
    np.testing.assert_array_equal(np.asarray(g), 0.0)
  # ... whereas a loss against it still differentiates in the prediction.
  pred_grad = jax.grad(lambda p: jnp.sum((p - stf.stf_target(x, sigma, ref)) ** 2))(x)
  assert np.abs(np.asarray(pred_grad)).sum() > 0


# ----------------------------------------------------------------------------- numerics

def test_stable_at_sigma_min_in_imagenet_dimension():
  # d = 64*64*3 = 12288 and sigma = 0.002: the own-sample squared distance is
  # about d sigma^2 = 0.05 against O(1000) for the others; logits reach -1e8.
  rng = np.random.default_rng(9)
  ref = rng.uniform(-1, 1, (16, 64, 64, 3)).astype(np.float32)
  x = ref[:4] + 0.002 * rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
  log_w = stf.stf_weights(x, 0.002, ref)
  assert np.all(np.isfinite(np.asarray(stf.stf_target(x, 0.002, ref))))
  w = np.exp(np.asarray(log_w, np.float64))
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(w[np.arange(4), np.arange(4)], 1.0, atol=1e-6)  # one-hot on y_1
  np.testing.assert_allclose(np.asarray(stf.stf_target(x, 0.002, ref)), ref[:4], atol=1e-6)


def test_stable_at_sigma_max_in_imagenet_dimension():
  rng = np.random.default_rng(10)
  ref = rng.uniform(-1, 1, (16, 64, 64, 3)).astype(np.float32)
  x = ref[:4] + 80.0 * rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
  target = np.asarray(stf.stf_target(x, 80.0, ref))
  w = np.exp(np.asarray(stf.stf_weights(x, 80.0, ref), np.float64))
  assert np.all(np.isfinite(target))
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  # At sigma = 80 nothing dominates: every reference keeps visible weight.
  assert w.max() < 0.9


def test_large_sigma_limit_is_reference_mean_and_small_sigma_is_nearest():
  rng = np.random.default_rng(11)
  ref = rng.standard_normal((9, 3)).astype(np.float32)
  x = rng.standard_normal((4, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(stf.stf_target(x, 1e4, ref)),
                             np.broadcast_to(ref.mean(0), (4, 3)), atol=1e-5)
  nearest = ref[np.argmin(((x[:, None] - ref[None]) ** 2).sum(-1), axis=1)]
  np.testing.assert_allclose(np.asarray(stf.stf_target(x, 1e-3, ref)), nearest, atol=1e-6)


def test_low_precision_inputs_are_computed_in_float32():
  rng = np.random.default_rng(12)
  ref = rng.uniform(-1, 1, (8, 32)).astype(np.float32)
  x = ref[:2] + 0.01 * rng.standard_normal((2, 32)).astype(np.float32)
  target = stf.stf_target(jnp.asarray(x, jnp.bfloat16), 0.01, jnp.asarray(ref, jnp.bfloat16))
  assert target.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(target, np.float32)))
  np.testing.assert_allclose(np.asarray(target, np.float32), ref[:2], atol=1e-2)


# ----------------------------------------------------------------------------- statistics
# Exact expectations over the reference draw for the dataset {-1, +1}: a
# reference set is determined by the generating y_1 and the count c of +1 among
# the other i.i.d. draws, so E[. | x] is a finite binomial sum. All sets of all
# sizes n go through one jitted call: sets are padded to a common length and
# the padding is masked out with the label restriction (padding gets label 0,
# queries label 1), which the label tests above show is exact.

@jax.jit
def _targets_per_set(refs, valid, xs, sigmas):
  """[S, X] STF targets of the queries xs (noise sigmas) under each reference set."""
  labels = jnp.ones(xs.shape, jnp.int32)
  return jax.vmap(lambda r, v: stf.stf_target(xs[:, None], sigmas, r[:, None], labels, v)[:, 0])(
      refs, valid)


def _exact_moments(xs, sigmas, ns, include_generating_sample):
  """{n: (E[target | x], Var[target | x])} over the reference draw, exactly, per query."""
  xs, sigmas = np.asarray(xs, np.float64), np.asarray(sigmas, np.float64)
  pad = max(ns)
  rows, valid, owner, first, p_count = [], [], [], [], []
  for n in ns:
    rest = n - 1 if include_generating_sample else n
    for c in range(rest + 1):
      base = [1.0] * c + [-1.0] * (rest - c)
      for y1 in ((1.0, -1.0) if include_generating_sample else (None,)):
        row = ([y1] if y1 is not None else []) + base
        rows.append(row + [0.0] * (pad - n))
        valid.append([1] * n + [0] * (pad - n))
        owner.append(n)
        first.append(y1 or 0.0)
        p_count.append(math.comb(rest, c) / 2.0 ** rest)
  per_set = np.asarray(_targets_per_set(jnp.asarray(rows), jnp.asarray(valid),
                                        jnp.asarray(xs), jnp.asarray(sigmas)))   # [S, X]
  owner, first, p_count = np.array(owner), np.array(first), np.array(p_count)
  p_plus = special.expit(2 * xs / sigmas ** 2)         # posterior P(y_1 = +1 | x)
  moments = {}
  for n in ns:
    sel = owner == n
    probs = p_count[sel][:, None] * np.ones_like(xs)[None]
    if include_generating_sample:
      probs = probs * np.where(first[sel][:, None] > 0, p_plus[None], 1 - p_plus[None])
    mean = (probs * per_set[sel]).sum(0)
    moments[n] = mean, (probs * (per_set[sel] - mean) ** 2).sum(0)
  return moments


def test_conditional_variance_is_reduced_at_intermediate_sigma():
  n = 64
  xs = np.array([0.0, 0.4, -0.9, 0.3, 0.9])
  sigmas = np.array([1.0, 1.0, 1.0, 20.0, 0.1])
  with jax.enable_x64(True):
    _, stf_var = _exact_moments(xs, sigmas, [n], include_generating_sample=True)[n]
  dsm_var = 1.0 - np.tanh(xs / sigmas ** 2) ** 2        # Var[y_1 | x] of the plain target
  # Intermediate sigma: a large reduction.
  assert np.all(stf_var[:3] < 0.1 * dsm_var[:3]), (stf_var, dsm_var)
  # Large sigma: DSM keeps Var(data) = 1; STF's near-uniform weights give about 1/n.
  assert dsm_var[3] > 0.99 and 0.5 / n < stf_var[3] < 1.5 / n
  # Small sigma: the posterior is one-hot and both variances vanish.
  assert stf_var[4] < 1e-12 and dsm_var[4] < 1e-12


def test_target_with_generating_sample_is_conditionally_unbiased_for_every_n():
  # Because the target is symmetric in the references and y_1 ~ p(y | x) while
  # the rest ~ p(y), E[target | x] = E[y | x] exactly, for every n (see report).
  xs, sigmas = np.array([0.5, -1.2]), np.array([0.7, 1.5])
  with jax.enable_x64(True):
    moments = _exact_moments(xs, sigmas, [1, 2, 3, 8, 32], include_generating_sample=True)
  for n, (mean, _) in moments.items():
    np.testing.assert_allclose(mean, np.tanh(xs / sigmas ** 2), atol=1e-12, err_msg=f"n={n}")


def test_self_normalised_bias_decays_like_one_over_n():
  # Without the generating sample (references independent of x) the target is
  # the classical self-normalised importance estimate: biased, bias ~ 1/n.
  x, sigma = 1.0, 0.8
  ns = [16, 32, 64, 128, 256]
  with jax.enable_x64(True):
    moments = _exact_moments([x], [sigma], ns, include_generating_sample=False)
  bias = np.array([abs(moments[n][0][0] - np.tanh(x / sigma ** 2)) for n in ns])
  assert np.all(np.diff(bias) < 0), bias
  slope = np.polyfit(np.log(ns), np.log(bias), 1)[0]
  assert -1.2 < slope < -0.8, slope


def test_bias_shrinks_with_n_on_a_gaussian_mixture():
  # Two Gaussian blobs (means -1, +1, std 0.3): the posterior mean D*(x) is in
  # closed form. Monte Carlo over independent reference draws (fixed seed).
  mus, s, sigma, x = np.array([-1.0, 1.0]), 0.3, 0.7, 0.8
  v = s ** 2 + sigma ** 2
  resp = special.softmax(-(x - mus) ** 2 / (2 * v))
  exact = resp @ ((mus * sigma ** 2 + x * s ** 2) / v)
  rng = np.random.default_rng(13)
  batched = jax.jit(jax.vmap(lambda r: stf.stf_target(jnp.full((1, 1), x), sigma, r)[0, 0]))
  bias = {}
  for n in (4, 64):
    refs = mus[rng.integers(0, 2, (4000, n))] + s * rng.standard_normal((4000, n))
    bias[n] = abs(float(np.mean(np.asarray(batched(jnp.asarray(refs[..., None], jnp.float32)))))
                  - exact)
  assert bias[64] < 0.2 * bias[4], bias


# ----------------------------------------------------------------------------- sharding

def _mesh(kind):
  if jax.device_count() < 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  return jax.make_mesh((8,), ("data",), axis_types=(kind,))


@pytest.fixture(scope="module")
def mesh():
  return _mesh(jax.sharding.AxisType.Explicit)


def _sharding_problem():
  rng = np.random.default_rng(14)
  ref = rng.uniform(-1, 1, (64, 4, 4, 3)).astype(np.float32)
  x = ref[:16] + np.linspace(0.05, 3.0, 16)[:, None, None, None].astype(np.float32) * \
      rng.standard_normal((16, 4, 4, 3)).astype(np.float32)
  sigma = jnp.linspace(0.05, 3.0, 16)
  return x, sigma, ref


@pytest.mark.parametrize("queries_sharded", [False, True])
def test_sharded_global_target_equals_unsharded(mesh, queries_sharded):
  x, sigma, ref = _sharding_problem()
  expected = np.asarray(stf.stf_target(x, sigma, ref))
  got = stf.stf_target_sharded(x, sigma, ref, mesh, "data", queries_sharded=queries_sharded)
  chex.assert_shape(got, x.shape)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_sharded_global_target_on_auto_axes_inside_jit():
  # GSPMD-style (Auto) meshes too, traced inside an outer jitted step.
  mesh = _mesh(jax.sharding.AxisType.Auto)
  x, sigma, ref = _sharding_problem()
  expected = np.asarray(stf.stf_target(x, sigma, ref))
  step = jax.jit(lambda a, b, c: 2.0 * stf.stf_target_sharded(a, b, c, mesh, "data",
                                                              queries_sharded=True))
  np.testing.assert_allclose(np.asarray(step(x, sigma, ref)), 2.0 * expected, atol=2e-5)


def test_sharded_global_target_with_labels(mesh):
  x, sigma, ref = _sharding_problem()
  ref_labels = np.arange(64) % 5
  labels = ref_labels[:16]
  expected = np.asarray(stf.stf_target(x, sigma, ref, labels, ref_labels))
  for queries_sharded in (False, True):
    got = stf.stf_target_sharded(x, sigma, ref, mesh, "data", labels=labels,
                                 reference_labels=ref_labels, queries_sharded=queries_sharded)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_global_target_differs_from_per_device_target(mesh):
  # The global variant really pools the shards: a device's own shard alone
  # (the official per-device STF) gives a different target at intermediate sigma.
  x, sigma, ref = _sharding_problem()
  global_target = np.asarray(stf.stf_target_sharded(x, sigma, ref, mesh, "data"))
  local_target = np.asarray(stf.stf_target(x, sigma, ref[:8]))
  assert np.abs(global_target - local_target).max() > 1e-2
