"""Tests of ACT's bin / EMA schedule, GAN time weight and ADA update (docs/act.md#testable-properties)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.objectives.act import math as act


def test_schedule_end_points_cifar_and_imagenet():
  # CIFAR-10: 2 -> 150 bins, mu 0.81 -> 0.9985868.
  assert act.act_schedule(0.0) == (2, pytest.approx(0.81, abs=1e-15))
  num, ema = act.act_schedule(1.0)
  assert num == 150 and ema == pytest.approx(0.9985868, abs=1e-7)
  # ImageNet-64: 2 -> 200 bins with mu0 = 0.95: 0.9025 -> 0.9994846.
  assert act.act_schedule(0.0, n_max=200, mu0=0.95) == (2, pytest.approx(0.9025, abs=1e-15))
  num, ema = act.act_schedule(1.0, n_max=200, mu0=0.95)
  assert num == 200 and ema == pytest.approx(0.9994846, abs=1e-7)
  # Mid-way by hand: sqrt(0.5 * 22496 + 4) = 106.08 -> 106 bins.
  num, ema = act.act_schedule(0.5)
  assert num == 106 and ema == pytest.approx(math.exp(2 * math.log(0.9) / 105), rel=1e-14)


def test_schedule_rounds_half_to_even():
  # n_min = 2, n_max = 4: progress 3/16 gives sqrt(6.25) = 2.5 -> 2 and
  # progress 11/16 gives sqrt(12.25) = 3.5 -> 4 (a ceiling or half-up would give 3 and 4,
  # half-down 2 and 3). All values are exact in binary, so both paths see the tie.
  assert act.act_schedule(0.1875, n_min=2, n_max=4)[0] == 2
  assert act.act_schedule(0.6875, n_min=2, n_max=4)[0] == 4
  traced = jax.jit(lambda p: act.act_schedule(p, n_min=2, n_max=4)[0])
  assert int(traced(jnp.float32(0.1875))) == 2
  assert int(traced(jnp.float32(0.6875))) == 4


def test_schedule_device_path_matches_official_float64_rounding():
  total = 400_000
  steps = np.arange(total + 1)
  by_hand = np.round(np.sqrt(steps / total * (200 ** 2 - 2 ** 2) + 4)).astype(int)  # half-even
  with jax.enable_x64(True):
    bins, ema = jax.jit(jax.vmap(lambda p: act.act_schedule(p, n_max=200, mu0=0.95)))(
        jnp.asarray(steps / total))
  np.testing.assert_array_equal(np.asarray(bins), by_hand)
  np.testing.assert_allclose(np.asarray(ema), np.exp(2 * np.log(0.95) / (by_hand - 1)), rtol=1e-14)
  # The host path is Python's own float64 round, as the official code.
  for k in np.random.default_rng(0).integers(0, total, 300):
    assert act.act_schedule(k / total, n_max=200, mu0=0.95)[0] == by_hand[k]
  # float32 progress: off by at most one bin, on a handful of steps.
  bins32, _ = jax.jit(jax.vmap(lambda p: act.act_schedule(p, n_max=200, mu0=0.95)))(
      jnp.asarray(steps / total, jnp.float32))
  mismatch = np.asarray(bins32) != by_hand
  assert mismatch.sum() <= 5 and np.all(np.abs(np.asarray(bins32) - by_hand) <= 1)


def test_time_weight():
  n = 150
  exponent = math.log(0.2 / 0.6, 0.5)
  assert exponent == pytest.approx(1.58496, abs=1e-5)
  w = np.asarray(act.act_time_weight(jnp.array([0.0, (n - 1) / 4, (n - 1) / 2, n - 1]), n))
  # 0 at sigma_min, lam0 * w = w_mid at the middle (w = 1/3), 1 at sigma_max;
  # a quarter of the way, 0.25^e = (0.5^e)^2 = 1/9.
  np.testing.assert_allclose(w, [0.0, 1 / 9, 1 / 3, 1.0], rtol=1e-6, atol=1e-12)
  assert 0.6 * w[2] == pytest.approx(0.2, rel=1e-6)
  # Integer indices, a traced num_bins, and a slightly negative index do not NaN.
  traced = jax.jit(act.act_time_weight)(jnp.arange(5), jnp.int32(5))
  np.testing.assert_allclose(np.asarray(traced), (np.arange(5) / 4) ** exponent, rtol=1e-6)
  assert float(act.act_time_weight(-1e-6, n)) == 0.0


def _run_ada(r1, threshold, calls, p0=0.0, batch_size=160):
  def body(state, _):
    p, r1_ema = act.ada_update(*state, r1, threshold, batch_size)
    return (p, r1_ema), p
  # ACT initialises the EMA at the threshold.
  _, ps = jax.lax.scan(body, (jnp.float32(p0), jnp.float32(threshold)), None, length=calls)
  return np.asarray(ps)


def test_ada_rises_by_fixed_step_and_saturates():
  delta = 160 * 16 / 500_000
  assert delta == pytest.approx(0.00512)
  ps = _run_ada(r1=2e4, threshold=1e4, calls=250)
  k = np.arange(1, 251)
  np.testing.assert_allclose(ps, np.minimum(k * delta, 1.0), atol=1e-5)
  assert ps[-1] == 1.0 and ps.max() <= 1.0


def test_ada_stays_at_zero_below_threshold_and_ties_lower_p():
  np.testing.assert_array_equal(_run_ada(r1=5e3, threshold=1e4, calls=50), 0.0)
  # The official comparison is strict: an EMA equal to the threshold lowers p.
  p, r1_ema = act.ada_update(0.5, 1e4, 1e4, threshold=1e4, batch_size=160)
  assert float(r1_ema) == 1e4
  assert float(p) == pytest.approx(0.5 - 0.00512, abs=1e-7)


def test_ada_ema_and_dtype():
  p, r1_ema = act.ada_update(jnp.float32(0.2), jnp.float32(100.0), 200.0, threshold=150.0,
                             batch_size=80, interval=16, length=500_000, ema_rate=0.9)
  assert p.dtype == jnp.float32
  assert float(r1_ema) == pytest.approx(110.0, rel=1e-6)      # 0.9 * 100 + 0.1 * 200
  assert float(p) == pytest.approx(0.2 - 80 * 16 / 500_000, rel=1e-6)   # 110 < 150: lower
  with jax.enable_x64(True):
    p64, _ = act.ada_update(jnp.float64(0.2), jnp.float64(100.0), 200.0, 50.0, 80)
    assert p64.dtype == jnp.float64
