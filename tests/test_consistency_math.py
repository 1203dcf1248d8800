"""Tests of the CT / iCT / ECT schedules, grids, weights and metric (docs/consistency.md#the-methods-at-a-glance, docs/sct.md)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxdiff.objectives.consistency import math as cm


# ----------------------------------------------------------------------------- ECT mapping

# r/t for q = 2, k = 8, b = 1 (the table in docs/ect.md#the-r-mapping, 3-4 significant digits).
ECT_TABLE = {
    0: {0.01: 0.0, 0.5: 0.0, 2.0: 0.0232, 80.0: 0.5},
    1: {0.01: 0.0, 0.5: 0.0, 2.0: 0.512, 80.0: 0.75},
    2: {0.01: 0.3775, 0.5: 0.4975, 2.0: 0.7558, 80.0: 0.875},
}


def _ect_ratio_by_hand(t, stage, q=2.0, k=8.0, b=1.0):
  n = 1 + k / (1 + math.exp(b * t))
  return max(0.0, 1 - n / q ** (stage + 1))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_ect_mapping_matches_table(stage):
  ts = np.array(list(ECT_TABLE[stage]))
  ratio = np.asarray(cm.ect_r(jnp.asarray(ts, jnp.float32), stage)) / ts
  np.testing.assert_allclose(ratio, list(ECT_TABLE[stage].values()), atol=6e-4)
  # And to float rounding against the formula evaluated by hand in float64.
  with jax.enable_x64(True):
    r64 = cm.ect_r(jnp.asarray(ts), stage)
    assert r64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(r64), [t * _ect_ratio_by_hand(t, stage) for t in ts],
                               rtol=1e-13, atol=1e-15)


def test_ect_r_is_nonnegative_below_t_and_ratio_grows_with_stage():
  t = jnp.exp(jnp.linspace(math.log(0.002), math.log(80.0), 200))
  previous = jnp.zeros_like(t)
  for stage in range(10):
    r = cm.ect_r(t, stage)
    assert np.all(np.asarray(r) >= 0)
    assert np.all(np.asarray(r) < np.asarray(t))
    ratio = r / t
    assert np.all(np.asarray(ratio) >= np.asarray(previous))
    previous = ratio
  # Late stages approach the continuous-time limit r -> t.
  assert float(jnp.min(cm.ect_r(t, 20) / t)) > 0.999


def test_ect_const_mapping_and_traced_float_stage():
  t = jnp.array([0.01, 1.0, 80.0])
  np.testing.assert_allclose(np.asarray(cm.ect_r(t, 1, q=4.0, mapping="const")),
                             np.asarray(t) * (1 - 1 / 16), rtol=1e-6)
  # Traced stage, and SCT's fractional stage lies between its neighbours.
  f = jax.jit(lambda s: cm.ect_r(t, s))
  np.testing.assert_allclose(np.asarray(f(jnp.int32(2))), np.asarray(cm.ect_r(t, 2)), rtol=1e-6)
  mid = np.asarray(f(jnp.float32(1.5)))
  assert np.all(mid >= np.asarray(cm.ect_r(t, 1))) and np.all(mid <= np.asarray(cm.ect_r(t, 2)))
  with pytest.raises(ValueError, match="mapping"):
    cm.ect_r(t, 0, mapping="linear")


def test_ect_stage_counts_completed_blocks():
  # CIFAR-10: a stage every 25k iterations, 8 stages over 200k.
  assert [cm.ect_stage(s, 25_000) for s in (0, 24_999, 25_000, 199_999)] == [0, 0, 1, 7]
  traced = jax.jit(lambda s: cm.ect_stage(s, 25_000))
  assert int(traced(jnp.int32(50_000))) == 2
  assert cm.ect_stage(37_500, 25_000, continuous=True) == 1.5
  np.testing.assert_allclose(float(cm.ect_stage(jnp.int32(37_500), 25_000, continuous=True)), 1.5)


# ----------------------------------------------------------------------------- CT schedule

def _ct_by_hand(step, total, s0=2, s1=150, mu0=0.9):
  """The official formula in float64 Python."""
  n = max(math.ceil(math.sqrt(step / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1), 1)
  return n + 1, math.exp(s0 * math.log(mu0) / n)


def test_ct_schedule_pinned_values():
  assert cm.ct_schedule(0, 800_000) == (2, pytest.approx(0.81, abs=1e-15))
  # Mid-way: sqrt(0.5 * 22797 + 4) = 106.78..., ceil(105.78) = 106 -> 107 scales.
  num, ema = cm.ct_schedule(400_000, 800_000)
  assert num == 107 and ema == pytest.approx(math.exp(2 * math.log(0.9) / 106), rel=1e-15)
  # End: N = 150 -> 151 scales, mu = 0.9^(2/150).
  num, ema = cm.ct_schedule(800_000, 800_000)
  assert num == 151 and ema == pytest.approx(0.9 ** (2 / 150), rel=1e-14)
  for step in (1, 7, 1234, 99_999, 555_555, 799_999):
    num, ema = cm.ct_schedule(step, 800_000)
    want_num, want_ema = _ct_by_hand(step, 800_000)
    assert num == want_num and ema == pytest.approx(want_ema, rel=1e-14)


def test_ct_schedule_device_path_equals_host_path_for_every_step():
  total = 800_000
  steps = np.arange(total + 1)
  num_dev, ema_dev = jax.jit(jax.vmap(lambda k: cm.ct_schedule(k, total)))(jnp.asarray(steps))
  num_dev = np.asarray(num_dev)
  assert num_dev.dtype == np.int32
  # float64 formula, vectorised, for all 800k steps.
  by_hand = np.maximum(np.ceil(np.sqrt(steps / total * 22797 + 4) - 1), 1) + 1
  np.testing.assert_array_equal(num_dev, by_hand)
  # Host (Python int) path on the steps where a float32 ceiling goes wrong, plus a sample.
  rng = np.random.default_rng(0)
  probe = [202_553, 350_783, 522_174, 620_608, 758_170] + list(rng.integers(0, total, 2000))
  for k in probe:
    num, ema = cm.ct_schedule(int(k), total)
    assert num == num_dev[k]
    assert ema == pytest.approx(float(ema_dev[k]), rel=1e-6)
  # e.g. at 350783 the exact value is sqrt(10000.0000637) = 100.0000003 -> 101 scales.
  assert cm.ct_schedule(350_783, total)[0] == 101
  # Monotone and bounded.
  assert np.all(np.diff(num_dev) >= 0) and num_dev[0] == 2 and num_dev[-1] == 151


# ----------------------------------------------------------------------------- iCT

def test_ict_doubling_curriculum():
  assert cm.ict_doubling_period(400_000) == 50_000
  expected = [11, 21, 41, 81, 161, 321, 641, 1281]
  assert [cm.ict_num_scales(k * 50_000, 400_000) for k in range(8)] == expected
  assert [cm.ict_num_scales(k * 50_000 - 1, 400_000) for k in range(1, 8)] == expected[:-1]
  assert cm.ict_num_scales(400_000, 400_000) == 1281
  traced = jax.jit(jax.vmap(lambda k: cm.ict_num_scales(k, 400_000)))
  steps = jnp.array([0, 49_999, 50_000, 199_999, 350_000, 399_999, 2 ** 31 - 1])
  np.testing.assert_array_equal(np.asarray(traced(steps)),
                                [cm.ict_num_scales(int(k), 400_000) for k in steps])


def test_karras_grid_ascending():
  grid = np.asarray(cm.karras_grid_ascending(18))
  assert grid.shape == (18,)
  assert grid[0] == np.float32(0.002) and grid[-1] == np.float32(80.0)
  assert np.all(np.diff(grid) > 0)
  i = np.arange(18)
  by_hand = (0.002 ** (1 / 7) + i / 17 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
  np.testing.assert_allclose(grid, by_hand, rtol=1e-5)
  # Padded to a static size with a traced num_scales: same values, then sigma_max.
  padded = jax.jit(lambda n: cm.karras_grid_ascending(n, size=32))(jnp.int32(18))
  np.testing.assert_allclose(np.asarray(padded[:18]), grid, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(padded[18:]), np.float32(80.0))
  # The index map inverts the grid (ACT's time_to_timesteps).
  np.testing.assert_allclose(np.asarray(cm.karras_index_of(jnp.asarray(grid), 18)), i, atol=1e-3)


def test_ict_index_probs():
  p_mean, p_std = -1.1, 2.0
  with jax.enable_x64(True):
    for n in (11, 1281):
      grid = np.asarray(cm.karras_grid_ascending(n))
      probs = np.asarray(cm.ict_index_probs(grid, p_mean, p_std))
      assert probs.shape == (n - 1,)
      np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-12)
      # Lognormal CDF mass of each interval (scipy, float64).
      cdf = special.ndtr((np.log(grid) - p_mean) / p_std)
      np.testing.assert_allclose(probs, np.diff(cdf) / (cdf[-1] - cdf[0]), rtol=1e-9, atol=1e-15)
  grid = cm.karras_grid_ascending(1281)
  probs = np.asarray(cm.ict_index_probs(grid))
  log_grid = np.log(np.asarray(grid))
  # The density per unit ln(sigma) peaks at exp(P_mean) ...
  density = probs / np.diff(log_grid)
  assert abs(0.5 * (log_grid[:-1] + log_grid[1:])[np.argmax(density)] - p_mean) < 0.05
  # ... while the mass per Karras interval (wider in ln sigma at low noise,
  # d ln sigma proportional to sigma^(-1/rho)) peaks at exp(P_mean - P_std^2/rho).
  assert abs(log_grid[np.argmax(probs)] - (p_mean - p_std ** 2 / 7)) < 0.05
  # float32 keeps the tail intervals (erfc path): every pair has positive mass.
  assert np.all(probs > 0)
  # Padding (repeated sigma_max) adds pairs of zero probability only.
  padded = np.asarray(cm.ict_index_probs(cm.karras_grid_ascending(11, size=16)))
  np.testing.assert_allclose(padded[:10], np.asarray(cm.ict_index_probs(cm.karras_grid_ascending(11))),
                             rtol=1e-6)
  np.testing.assert_array_equal(padded[10:], 0.0)


def test_ict_sample_pair_follows_index_probs():
  grid = cm.karras_grid_ascending(11)
  t, r = cm.ict_sample_pair(jax.random.PRNGKey(0), (20_000,), grid)
  grid = np.asarray(grid)
  index = np.searchsorted(grid, np.asarray(r))
  np.testing.assert_array_equal(np.asarray(t), grid[index + 1])   # teacher one step below
  freq = np.bincount(index, minlength=10) / 20_000
  np.testing.assert_allclose(freq, np.asarray(cm.ict_index_probs(grid)), atol=0.01)


def test_ict_huber_c():
  assert cm.ict_huber_c(3 * 32 * 32) == pytest.approx(0.0299, abs=1e-4)
  assert cm.ict_huber_c(3 * 64 * 64) == pytest.approx(0.0599, abs=1e-4)


def test_ct_sample_pair_is_one_grid_step_apart():
  t, r = jax.jit(lambda k, n: cm.ct_sample_pair(k, (5000,), n))(jax.random.PRNGKey(1), 18)
  grid = np.asarray(cm.karras_grid_ascending(18))
  index = np.argmin(np.abs(grid[None] - np.asarray(r)[:, None]), axis=1)
  np.testing.assert_allclose(np.asarray(r), grid[index], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(t), grid[index + 1], rtol=1e-5)
  # Uniform over the 17 pairs: sigma_min is never a student, sigma_max never a teacher.
  assert set(index.tolist()) == set(range(17))


# ----------------------------------------------------------------------------- metric

def test_pseudo_huber_c0_is_per_sample_l2_norm():
  rng = np.random.default_rng(2)
  delta = rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
  got = cm.pseudo_huber(delta, 0.0)
  chex.assert_shape(got, (5,))
  np.testing.assert_allclose(np.asarray(got), np.linalg.norm(delta.reshape(5, -1), axis=1),
                             rtol=1e-6)


def test_pseudo_huber_positive_c_and_small_deltas():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    delta = rng.standard_normal((4, 10)) * np.array([[1.0], [1e-2], [1e-4], [0.0]])
    c = 0.03
    got = np.asarray(cm.pseudo_huber(jnp.asarray(delta), c))
    sq = (delta ** 2).sum(1)
    np.testing.assert_allclose(got, np.sqrt(sq + c * c) - c, rtol=1e-9, atol=1e-18)
  # In float32 a tiny delta keeps ~7 digits (no cancellation of sqrt(s+c^2) - c).
  tiny = np.full((1, 10), 1e-5, np.float32)
  got32 = float(cm.pseudo_huber(tiny, 0.06)[0])
  assert got32 == pytest.approx(1e-9 / (2 * 0.06), rel=1e-4)
  # Per-sample c.
  np.testing.assert_allclose(np.asarray(cm.pseudo_huber(np.ones((2, 3), np.float32),
                                                        jnp.array([0.0, 1.0]))),
                             [math.sqrt(3), 1.0], rtol=1e-6)


def test_pseudo_huber_gradient_is_finite_at_zero():
  # ECT with r = t makes delta exactly 0; the plain sqrt would give NaN gradients.
  for c in (0.0, 0.03):
    g = jax.grad(lambda d: jnp.sum(cm.pseudo_huber(d, c)))(jnp.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(g), 0.0)
  g = jax.grad(lambda d: jnp.sum(cm.pseudo_huber(d, 0.0)))(jnp.array([[3.0, 4.0]]))
  np.testing.assert_allclose(np.asarray(g), [[0.6, 0.8]], rtol=1e-6)


# ----------------------------------------------------------------------------- weights

def test_consistency_weights():
  t, r = jnp.array([0.5, 2.0]), jnp.array([0.25, 1.5])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "uniform")), [1, 1])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "snr")), [4, 0.25])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "snrp1")), [5, 1.25])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "truncated_snr")), [4, 1])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "ict")), [4, 2])
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "ect")), [4, 2])
  # EDM lambda: (t^2 + 0.25) / (0.5 t)^2 -> 8 and 4.25.
  np.testing.assert_allclose(np.asarray(cm.consistency_weight(t, r, "edm")), [8, 4.25], rtol=1e-6)
  with pytest.raises(ValueError, match="weighting"):
    cm.consistency_weight(t, r, "lpips")
