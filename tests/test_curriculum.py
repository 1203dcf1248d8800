"""Tests of the difficulty curriculum's pure parts (docs/curriculum.md#testable-properties)."""
import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from jaxdiff import curriculum
from jaxdiff.curriculum import analysis
from jaxdiff.curriculum import clusters
from jaxdiff.curriculum import settings as curriculum_settings
from jaxdiff.diffusion import lognormal_sigma

P_MEAN, P_STD = -1.2, 1.2

# docs/curriculum.md#method: EDM's lognormal(-1.2, 1.2) cut into 20 equal-mass clusters.
SPEC_EDGES_20 = [
    0.0418, 0.0647, 0.0868, 0.1097, 0.1341, 0.1605, 0.1897, 0.2222, 0.2590,
    0.3012, 0.3502, 0.4082, 0.4783, 0.5651, 0.6766, 0.8269, 1.0447, 1.4019,
    2.1680
]

# docs/curriculum.md#the-difficulty-study: per-dimension KL(q_{t-1} || q_t), linear betas,
# x0^2 = 0.25.
SPEC_KL_TABLE = {
    1: 0.121, 2: 0.0517, 5: 0.0145, 10: 5.1e-3, 50: 3.2e-4, 100: 8.2e-5,
    500: 4.5e-7, 999: 5.2e-10
}

_sample_sigma = jax.jit(
    clusters.sample_sigma_in_mask, static_argnames=("shape", "mask"))
_sample_t = jax.jit(
    clusters.sample_timestep_in_mask,
    static_argnames=("shape", "mask", "num_timesteps"))


# ------------------------------------------------------------------ clusters


@pytest.mark.parametrize("n", [1, 2, 20])
def test_lognormal_edges_ascending_and_count(n):
  edges = np.asarray(curriculum.cluster_edges(n))
  assert edges.shape == (n - 1,)
  assert np.all(np.diff(edges) > 0)
  assert np.all(edges > 0)


def test_lognormal_edges_match_spec_table():
  edges = np.asarray(curriculum.cluster_edges(20, "lognormal", P_MEAN, P_STD))
  np.testing.assert_allclose(edges, SPEC_EDGES_20, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [5, 20])
def test_lognormal_clusters_carry_equal_mass(n):
  # Integrate the normal density of ln sigma between consecutive edges: each
  # cluster must hold exactly 1/N of the training distribution.
  log_edges = np.log(np.asarray(curriculum.cluster_edges(n), np.float64))
  bounds = np.concatenate([[-np.inf], log_edges, [np.inf]])
  pdf = stats.norm(P_MEAN, P_STD).pdf
  masses = [
      integrate.quad(pdf, lo, hi, epsabs=1e-12)[0]
      for lo, hi in zip(bounds[:-1], bounds[1:])
  ]
  np.testing.assert_allclose(masses, 1.0 / n, atol=1e-6, rtol=0)


def test_lognormal_edges_follow_p_mean_and_p_std():
  edges = np.asarray(curriculum.cluster_edges(4, p_mean=0.5, p_std=2.0))
  expected = np.exp(0.5 + 2.0 * stats.norm.ppf([0.25, 0.5, 0.75]))
  np.testing.assert_allclose(edges, expected, rtol=1e-5)


def test_uniform_edges():
  edges = curriculum.cluster_edges(20, "uniform", num_timesteps=1000)
  assert edges.dtype == jnp.int32
  np.testing.assert_array_equal(edges, np.arange(50, 1000, 50))
  # T not divisible by N: floor(i T / N).
  np.testing.assert_array_equal(
      curriculum.cluster_edges(3, "uniform", num_timesteps=10), [3, 6])


def test_cluster_edges_rejects_unknown_kind():
  with pytest.raises(ValueError, match="kind"):
    curriculum.cluster_edges(4, "linear")


def test_stage_mask_paper_order():
  n = 6
  assert curriculum.stage_mask(1, n) == (False,) * 5 + (True,)
  assert curriculum.stage_mask(n, n) == (True,) * n
  previous = set()
  for stage in range(1, n + 1):
    mask = curriculum.stage_mask(stage, n)
    assert isinstance(mask, tuple) and all(type(m) is bool for m in mask)
    hash(mask)  # Usable as a jit static argument.
    enabled = {i for i, m in enumerate(mask) if m}
    # Cumulative: one more cluster per stage, the highest-noise ones first.
    assert previous < enabled and len(enabled) == stage
    assert enabled == set(range(n - stage, n))
    previous = enabled


@pytest.mark.parametrize("order", ["hard_to_easy", "random"])
def test_other_orders_are_cumulative_permutations(order):
  n = 9
  sequence = curriculum.stage_order(n, order, seed=3)
  assert sorted(sequence) == list(range(n))
  previous = set()
  for stage in range(1, n + 1):
    mask = curriculum.stage_mask(stage, n, order=order, seed=3)
    enabled = {i for i, m in enumerate(mask) if m}
    assert previous < enabled
    assert enabled - previous == {sequence[stage - 1]}
    previous = enabled
  assert previous == set(range(n))


def test_stage_orders():
  assert curriculum.stage_order(4) == (3, 2, 1, 0)
  assert curriculum.stage_order(4, "hard_to_easy") == (0, 1, 2, 3)
  assert curriculum.stage_mask(1, 4, "hard_to_easy") == (True, False, False,
                                                         False)
  # The random order is a fixed function of the seed (resume must rebuild
  # it), differs between seeds and is not one of the two monotone orders.
  first = curriculum.stage_order(20, "random", seed=0)
  assert first == curriculum.stage_order(20, "random", seed=0)
  assert first != curriculum.stage_order(20, "random", seed=1)
  assert first not in (tuple(range(20)), tuple(range(19, -1, -1)))
  # Pinned value: a library upgrade must not silently change the order.
  assert curriculum.stage_order(10, "random", seed=0) == (6, 3, 2, 9, 8, 1, 4,
                                                          7, 0, 5)


@pytest.mark.parametrize("stage", [0, 5, -1])
def test_stage_mask_rejects_out_of_range_stage(stage):
  with pytest.raises(ValueError, match="stage"):
    curriculum.stage_mask(stage, 4)


def test_quantile_intervals_merge_adjacent_clusters():
  assert curriculum.quantile_intervals((False, True, True, False, True)) == (
      (0.2, 0.6), (0.8, 1.0))
  assert curriculum.quantile_intervals(curriculum.stage_mask(3, 10)) == ((0.7,
                                                                          1.0),)
  with pytest.raises(ValueError, match="no cluster"):
    curriculum.quantile_intervals((False, False))


def test_cluster_index():
  edges = jnp.array([1.0, 2.0, 3.0])
  sigma = jnp.array([[0.5, 1.0], [2.5, 100.0]])
  index = curriculum.cluster_index(sigma, edges)
  # Clusters are [lo, hi): a value on an edge belongs to the cluster above.
  np.testing.assert_array_equal(index, [[0, 1], [2, 3]])
  t_edges = curriculum.cluster_edges(20, "uniform")
  np.testing.assert_array_equal(
      curriculum.cluster_index(jnp.array([0, 49, 50, 999]), t_edges),
      [0, 0, 1, 19])


def _clusters_hit(sigma, n):
  edges = curriculum.cluster_edges(n)
  return set(np.unique(np.asarray(curriculum.cluster_index(sigma, edges))))


@pytest.mark.parametrize("stage", [1, 3])
def test_sigma_samples_stay_in_enabled_clusters(stage):
  n = 8
  mask = curriculum.stage_mask(stage, n)
  sigma = _sample_sigma(jax.random.key(stage), (20000,), mask)
  assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
  assert _clusters_hit(sigma, n) == {i for i, m in enumerate(mask) if m}


def test_sigma_samples_for_non_contiguous_mask_are_exact():
  n = 10
  mask = curriculum.stage_mask(4, n, order="random", seed=3)
  assert len(curriculum.quantile_intervals(mask)) > 1  # Non-contiguous.
  sigma = np.asarray(_sample_sigma(jax.random.key(0), (20000,), mask),
                     np.float64)
  enabled = [i for i, m in enumerate(mask) if m]
  assert _clusters_hit(sigma, n) == set(enabled)
  # Exactness: map each sample's lognormal quantile u onto the concatenation
  # of the enabled intervals; an exact truncated sampler makes that uniform.
  u = stats.norm.cdf((np.log(sigma) - P_MEAN) / P_STD)
  cluster = np.floor(u * n).astype(int)
  rank = np.searchsorted(enabled, cluster)
  position = (rank + (u * n - cluster)) / len(enabled)
  assert stats.kstest(position, "uniform").pvalue > 0.01
  # And the wrong hypothesis (the untruncated u itself) is rejected.
  assert stats.kstest(u, "uniform").pvalue < 1e-6


def test_full_mask_matches_lognormal_and_partial_does_not():
  n = 20
  full = _sample_sigma(jax.random.key(7), (5000,), curriculum.stage_mask(n, n))
  log_full = np.log(np.asarray(full, np.float64))
  assert stats.kstest(log_full, stats.norm(P_MEAN, P_STD).cdf).pvalue > 0.01
  first = _sample_sigma(jax.random.key(7), (5000,), curriculum.stage_mask(1, n))
  log_first = np.log(np.asarray(first, np.float64))
  assert stats.kstest(log_first, stats.norm(P_MEAN, P_STD).cdf).pvalue < 1e-10


def test_full_mask_is_bit_identical_to_base_sampler():
  # docs/curriculum.md#testable-properties: curriculum off == the baseline with the same keys.
  # Both run inside jit, as in a train step (eager and jit may differ in
  # the last bit, since XLA fuses the arithmetic).
  key = jax.random.key(11)
  mask = curriculum.stage_mask(20, 20)
  curriculum_draw = jax.jit(
      lambda k: curriculum.sample_sigma_in_mask(k, (64,), mask))
  baseline_draw = jax.jit(lambda k: lognormal_sigma(k, (64,), P_MEAN, P_STD))
  np.testing.assert_array_equal(curriculum_draw(key), baseline_draw(key))


def test_sigma_sampler_dtype_and_x64():
  mask = curriculum.stage_mask(2, 4, order="random", seed=1)
  assert _sample_sigma(jax.random.key(0), (4,), mask).dtype == jnp.float32
  with jax.enable_x64(True):
    sigma = curriculum.sample_sigma_in_mask(
        jax.random.key(0), (4,), mask, dtype=jnp.float64)
    assert sigma.dtype == jnp.float64


def test_sampling_jits_once_per_mask():
  calls = []

  @chex.assert_max_traces(n=2)
  def traced(key, mask):
    calls.append(mask)
    return curriculum.sample_sigma_in_mask(key, (8,), mask)

  step = jax.jit(traced, static_argnums=1)
  mask_a = curriculum.stage_mask(1, 5)
  mask_b = curriculum.stage_mask(2, 5)
  for i in range(3):
    step(jax.random.key(i), mask_a)
    step(jax.random.key(i), mask_b)
  assert calls == [mask_a, mask_b]  # Traced once per mask, not per call.
  # A traced mask is a usage error with a clear message.
  with pytest.raises(TypeError, match="static"):
    jax.jit(curriculum.sample_sigma_in_mask,
            static_argnums=1)(jax.random.key(0), (2,), jnp.array([True, True]))


@pytest.mark.parametrize("order,stage", [("easy_to_hard", 1),
                                         ("easy_to_hard", 3),
                                         ("random", 4)])
def test_timesteps_uniform_over_enabled_clusters(order, stage):
  n, num_t = 10, 1000
  mask = curriculum.stage_mask(stage, n, order=order, seed=3)
  t = np.asarray(_sample_t(jax.random.key(1), (30000,), mask, num_t))
  assert t.dtype == np.int32
  allowed = np.concatenate(
      [np.arange(i * 100, (i + 1) * 100) for i, m in enumerate(mask) if m])
  assert np.all(np.isin(t, allowed))
  # Every allowed timestep about equally likely: chi-square on the counts.
  counts = np.bincount(t, minlength=num_t)[allowed]
  assert stats.chisquare(counts).pvalue > 0.001
  assert np.all(counts > 0)


def test_timesteps_full_mask_is_randint_and_uneven_clusters():
  key = jax.random.key(5)
  np.testing.assert_array_equal(
      curriculum.sample_timestep_in_mask(key, (100,), (True,) * 20, 1000),
      jax.random.randint(key, (100,), 0, 1000, jnp.int32))
  # T = 10, N = 3: clusters {0,1,2}, {3,4,5}, {6..9}; disable the middle one.
  t = np.asarray(
      curriculum.sample_timestep_in_mask(key, (7000,), (True, False, True), 10))
  counts = np.bincount(t, minlength=10)
  assert np.all(counts[3:6] == 0)
  assert stats.chisquare(counts[[0, 1, 2, 6, 7, 8, 9]]).pvalue > 0.001


# -------------------------------------------------------------------- pacing


def _run(pacer, losses, start=0):
  """Stage of each next step after observing `losses` from step `start`."""
  return [pacer.observe(start + i, loss) for i, loss in enumerate(losses)]


def test_patience_pacer_decreasing_loss_never_advances():
  pacer = curriculum.PatiencePacer(5, window=10, tau=20, delta=0.0, cap=None)
  stages = _run(pacer, [1.0 / (1 + s) for s in range(2000)])
  assert set(stages) == {1}


def test_patience_pacer_constant_loss_advances_after_tau_plus_one_checks():
  window, tau = 10, 20
  pacer = curriculum.PatiencePacer(5, window=window, tau=tau, cap=None)
  stages = _run(pacer, [0.5] * 400)
  # Patience counts iterations: the first check sets best (inf before), then each
  # non-improving check adds a window; patience 30 > tau = 20 after three of them.
  # The stage lasts (tau / window + 2) * window = 40 steps, so observing step 39
  # moves step 40 to stage 2.
  assert stages[38] == 1 and stages[39] == 2
  assert stages[78] == 2 and stages[79] == 3
  # Reaches N = 5 after 4 stages and stays there; monotone throughout.
  assert stages[159] == 5 and set(stages[159:]) == {5}
  assert all(b - a in (0, 1) for a, b in zip(stages, stages[1:]))


def test_patience_pacer_tau_zero_and_delta():
  # tau = 0: the first non-improving check advances (2 windows).
  pacer = curriculum.PatiencePacer(3, window=5, tau=0)
  stages = _run(pacer, [1.0] * 10)
  assert stages[8] == 1 and stages[9] == 2
  # Improvements smaller than delta do not count as improvements.
  slow = [1.0 - 1e-4 * s for s in range(100)]
  strict = curriculum.PatiencePacer(3, window=5, tau=5, delta=0.0)
  tolerant = curriculum.PatiencePacer(3, window=5, tau=5, delta=0.01)
  assert set(_run(strict, slow)) == {1}
  assert _run(tolerant, slow)[14] == 2


def test_patience_pacer_non_finite_losses_count_against_patience():
  pacer = curriculum.PatiencePacer(3, window=2, tau=2)
  stages = _run(pacer, [1.0, 1.0, float("nan"), 0.1, 0.5, float("inf")])
  # Check 1 sets best = 1; checks 2 and 3 hold a non-finite loss, so they do
  # not improve even though 0.1 alone is lower; the second one advances.
  assert stages == [1, 1, 1, 1, 1, 2]
  pacer = curriculum.PatiencePacer(3, window=2, tau=2)
  _run(pacer, [1.0, 1.0, float("nan")])
  json.dumps(pacer.state_dict(), allow_nan=False)  # Still valid JSON.


def test_patience_pacer_cap_forces_advance():
  pacer = curriculum.PatiencePacer(4, window=10, tau=1000, cap=25)
  stages = _run(pacer, [1.0 / (1 + s) for s in range(200)])
  assert stages[23] == 1 and stages[24] == 2 and stages[49] == 3
  assert stages[74] == 4 and set(stages[74:]) == {4}


def test_pacers_never_pass_last_stage():
  pacer = curriculum.PatiencePacer(3, window=1, tau=0, cap=1)
  assert max(_run(pacer, [1.0] * 50)) == 3
  assert pacer.finished
  fixed = curriculum.FixedPacer(3, steps_per_stage=2)
  assert max(_run(fixed, [None] * 50)) == 3


def test_fixed_pacer_is_a_function_of_the_step():
  pacer = curriculum.FixedPacer(4, steps_per_stage=3)
  assert pacer.stage == 1
  stages = _run(pacer, [0.0] * 20)
  # Stage of step s + 1 after observing step s.
  assert stages == [min(4, 1 + (s + 1) // 3) for s in range(20)]
  assert [pacer.stage_at(s) for s in (0, 2, 3, 8, 9, 100)] == [1, 1, 2, 3, 4, 4]


def test_pacer_rejects_repeated_steps():
  pacer = curriculum.PatiencePacer(3, window=2, tau=2)
  pacer.observe(0, 1.0)
  with pytest.raises(ValueError, match="increase"):
    pacer.observe(0, 1.0)


@pytest.mark.parametrize("make", [
    lambda: curriculum.PatiencePacer(6, window=7, tau=14, delta=1e-3, cap=90),
    lambda: curriculum.FixedPacer(6, steps_per_stage=13),
])
def test_pacer_state_round_trip_continues_identically(make):
  rng = np.random.default_rng(0)
  losses = list(1.0 + 0.1 * rng.standard_normal(400))
  reference = make()
  _run(reference, losses[:157])  # Mid-window and mid-stage.
  state = json.loads(json.dumps(reference.state_dict(), allow_nan=False))
  assert reference.stage > 1
  resumed = curriculum.Pacer.from_state_dict(state)
  in_place = make().load_state_dict(state)
  assert resumed.state_dict() == reference.state_dict()
  expected = _run(reference, losses[157:], start=157)
  assert _run(resumed, losses[157:], start=157) == expected
  assert _run(in_place, losses[157:], start=157) == expected
  assert resumed.state_dict() == reference.state_dict()


def test_pacer_state_refuses_other_hyperparameters():
  saved = curriculum.PatiencePacer(6, window=7, tau=14).state_dict()
  other = curriculum.PatiencePacer(6, window=7, tau=21)
  with pytest.raises(ValueError, match="tau"):
    other.load_state_dict(saved)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    other.load_state_dict(saved, strict=False)
  assert caught and other.tau == 21
  with pytest.raises(ValueError, match="patience"):
    curriculum.FixedPacer(6, 10).load_state_dict(saved)
  # Fresh state has no best yet: stored as None since JSON lacks infinity.
  assert saved["best"] is None


def test_default_config_and_make_pacer():
  cfg = curriculum.default_curriculum_config()
  assert cfg.enabled is False and cfg.num_clusters == 20
  assert (cfg.kind, cfg.pacing, cfg.order) == ("lognormal", "patience",
                                               "easy_to_hard")
  assert (cfg.window, cfg.tau, cfg.delta, cfg.cap, cfg.steps_per_stage) == (
      100, 500, 0.0, None, 500)
  assert (cfg.monitor, cfg.smoothing) == ("batch", 0.0)  # the paper's "current training loss"
  # Disabled: a constant pacer at the last stage, whose mask enables all.
  off = curriculum.make_pacer(cfg)
  assert isinstance(off, curriculum.ConstantPacer) and off.stage == 20
  assert curriculum.mask_for_stage(cfg, off.stage) == (True,) * 20
  cfg.enabled = True
  patience = curriculum.make_pacer(cfg)
  assert isinstance(patience, curriculum.PatiencePacer)
  assert (patience.window, patience.tau, patience.cap) == (100, 500, None)
  cfg.pacing = "fixed"
  fixed = curriculum.make_pacer(cfg)
  assert isinstance(fixed, curriculum.FixedPacer)
  assert fixed.steps_per_stage == 500
  cfg.cap = 2000  # A cap is an option.
  curriculum.validate_curriculum_config(cfg)


@pytest.mark.parametrize("key,value,allowed", [
    ("kind", "linear", "lognormal"),
    ("pacing", "adaptive", "patience"),
    ("order", "reverse", "hard_to_easy"),
    ("num_clusters", 0, ">= 1"),
    ("window", 0, ">= 1"),
    ("tau", -1, ">= 0"),
    ("smoothing", 1.0, "[0, 1)"),
    ("monitor", "cluster", "newest_cluster"),
    ("delta", -0.1, ">= 0"),
    ("cap", 0, "None"),
    ("enabled", "yes", "True or False"),
])
def test_config_validation_names_key_value_and_allowed(key, value, allowed):
  cfg = curriculum.default_curriculum_config()
  with cfg.ignore_type():
    cfg[key] = value
  with pytest.raises(ValueError) as error:
    curriculum.validate_curriculum_config(cfg)
  message = str(error.value)
  assert f"curriculum.{key}" in message
  assert repr(value) in message and allowed in message


def test_config_validation_unknown_and_missing_keys():
  cfg = curriculum.default_curriculum_config()
  cfg.stages = 3
  with pytest.raises(ValueError, match="stages"):
    curriculum.validate_curriculum_config(cfg)
  cfg = curriculum.default_curriculum_config()
  del cfg["tau"]
  with pytest.raises(ValueError, match="tau"):
    curriculum.make_pacer(cfg)


# ------------------------------------------------------------------ analysis


def test_alphas_cumprod_convention():
  alphas = np.asarray(analysis.ddpm_alphas_cumprod(), np.float64)
  betas = np.linspace(1e-4, 0.02, 1000)
  np.testing.assert_allclose(alphas, np.cumprod(1 - betas), rtol=1e-5)
  # 0-based: index 0 already carries one step of noise.
  np.testing.assert_allclose(alphas[0], 1 - 1e-4, rtol=1e-7)


@pytest.mark.parametrize("x64", [False, True])
def test_consecutive_kl_reproduces_spec_table(x64):
  with jax.enable_x64(x64):
    t, kl = analysis.ddpm_consecutive_kl(0.25)
    assert kl.dtype == (jnp.float64 if x64 else jnp.float32)
  t, kl = np.asarray(t), np.asarray(kl, np.float64)
  assert t[0] == 1 and t[-1] == 999 and kl.shape == (999,)
  for step, value in SPEC_KL_TABLE.items():
    np.testing.assert_allclose(kl[step - 1], value, rtol=0.03, err_msg=step)
  assert np.all(np.diff(kl) < 0)  # Strictly decreasing in t.


def test_consecutive_kl_broadcasts_over_x0():
  _, kl = analysis.ddpm_consecutive_kl(jnp.array([[0.0], [0.25], [1.0]]))
  assert kl.shape == (3, 1, 999)
  # A larger signal separates consecutive means more: larger KL.
  assert np.all(kl[0] < kl[1]) and np.all(kl[1] < kl[2])


def test_marginal_kl_single_point_matches_closed_form():
  # One reference point: p_t is exactly q(x_t | x0), so the MC estimate of the
  # marginal KL must agree with d times the closed-form per-dim value.
  d = 4
  reference = jnp.full((1, d), 0.5)  # x0^2 = 0.25 per dimension.
  t_values = jnp.array([1, 5])
  with jax.enable_x64(True):
    estimate = analysis.marginal_kl_mc(
        jax.random.key(0), reference.astype(jnp.float64), t_values, 4000)
    _, kl = analysis.ddpm_consecutive_kl(0.25, dtype=jnp.float64)
  np.testing.assert_allclose(
      np.asarray(estimate), d * np.asarray(kl)[t_values - 1], rtol=0.1)


def test_marginal_kl_rejects_out_of_range_timesteps():
  with pytest.raises(ValueError, match="t_values"):
    analysis.marginal_kl_mc(jax.random.key(0), jnp.zeros((2, 2)), [0, 5], 8)


def test_marginal_kl_positive_and_larger_at_small_t():
  reference = 0.5 * jax.random.normal(jax.random.key(3), (32, 2))
  kl = np.asarray(
      analysis.marginal_kl_mc(jax.random.key(4), reference, [1, 10, 200], 1024))
  assert kl.shape == (3,)
  assert kl[0] > 0 and kl[1] > 0
  assert kl[0] > 5 * kl[1] and kl[1] > 5 * abs(kl[2])


def test_iterations_to_converge_known_curves():
  # exp decay to 1: |e^{-k/10} - e^{-9.9}| <= 0.01 f first at k = 46.
  k = np.arange(100)
  curve = 1.0 + np.exp(-k / 10.0)
  assert int(analysis.iterations_to_converge(curve, eps=0.01)) == 46
  # A dip into the band before leaving it again: "first" vs "stay".
  bumpy = np.array([5.0, 2.0, 5.0, 3.0, 2.0, 2.0])
  assert int(analysis.iterations_to_converge(bumpy, 0.05)) == 1
  assert int(analysis.iterations_to_converge(bumpy, 0.05, mode="stay")) == 4
  # Smoothing over 2: [5, 3.5, 3.5, 4, 2.5, 2] -> only the last is within 5%.
  assert int(analysis.iterations_to_converge(bumpy, 0.05, smoothing=2)) == 5
  # Batched over leading dims.
  both = analysis.iterations_to_converge(np.stack([curve, curve[::-1]]), 0.01)
  assert both.shape == (2,) and int(both[0]) == 46


def test_per_cluster_mean_and_probe_set():
  means, counts = analysis.per_cluster_mean(
      jnp.array([1.0, 3.0, 5.0]), jnp.array([0, 0, 2]), 4)
  np.testing.assert_array_equal(counts, [2, 0, 1, 0])
  np.testing.assert_allclose(np.asarray(means)[[0, 2]], [2.0, 5.0])
  assert np.isnan(means[1]) and np.isnan(means[3])

  n = 5
  probe = analysis.make_probe_set(jax.random.key(0), jnp.ones((3, 2, 2, 1)), n)
  assert probe["x0"].shape == (15, 2, 2, 1) and probe["sigma"].shape == (15,)
  np.testing.assert_array_equal(
      curriculum.cluster_index(probe["sigma"], curriculum.cluster_edges(n)),
      probe["cluster"])
  # A loss that is sigma itself: per-cluster means increase with the cluster.
  losses = analysis.per_cluster_probe_losses(lambda x0, z, s: s, probe, n)
  assert losses.shape == (n,) and np.all(np.diff(np.asarray(losses)) > 0)


def test_plot_kl_writes_png(tmp_path):
  t, kl = analysis.ddpm_consecutive_kl()
  path = analysis.plot_kl(str(tmp_path / "kl.png"), t, kl)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------- pacing as the paper states it


def test_patience_counts_iterations_whatever_the_window():
  # The same tau in iterations gives the same stage length (up to a window's rounding)
  # whether the loss is checked every iteration or every 5.
  for window in (1, 5):
    pacer = curriculum.PatiencePacer(3, window=window, tau=10, cap=None)
    stages = _run(pacer, [1.0] * 40)
    first_advance = stages.index(2)
    # best is set by the first check (after `window` steps), then patience > 10 needs
    # 11 more iterations (window 1) or 3 more windows of 5 (window 5).
    assert first_advance == {1: 11, 5: 19}[window]


def test_patience_weights_the_window_mean():
  # Two steps, one window: the newest cluster held 3 examples at loss 1.0 and 1 at 5.0.
  pacer = curriculum.PatiencePacer(3, window=2, tau=100)
  _run(pacer, [1.0, 5.0])
  pacer2 = curriculum.PatiencePacer(3, window=2, tau=100)
  pacer2.observe(0, 1.0, weight=3)
  pacer2.observe(1, 5.0, weight=1)
  assert pacer.best == pytest.approx(3.0) and pacer2.best == pytest.approx(2.0)
  # A step without any example of the monitored clusters adds nothing to the mean...
  pacer3 = curriculum.PatiencePacer(3, window=2, tau=100)
  pacer3.observe(0, float("nan"), weight=0)
  pacer3.observe(1, 4.0, weight=2)
  assert pacer3.best == pytest.approx(4.0)
  # ... and a window without any is a non-improving check.
  pacer4 = curriculum.PatiencePacer(3, window=1, tau=1)
  assert _run(pacer4, [1.0]) == [1]
  pacer4.observe(1, float("nan"), weight=0)
  assert pacer4.patience == 1


def test_patience_smoothing_is_an_ema_of_the_checked_loss():
  pacer = curriculum.PatiencePacer(3, window=1, tau=100, smoothing=0.5)
  _run(pacer, [4.0, 2.0, 2.0])
  # EMA: 4 -> 3 -> 2.5, each an improvement.
  assert pacer.best == pytest.approx(2.5) and pacer.patience == 0
  json.dumps(pacer.state_dict(), allow_nan=False)


def test_pacer_state_of_the_window_unit_is_refused():
  """A checkpoint whose tau counted windows must not resume with tau read as iterations."""
  saved = curriculum.PatiencePacer(3, window=5, tau=5).state_dict()
  del saved["patience_unit"], saved["smoothing"], saved["smoothed"], saved["window_weight"]
  with pytest.raises(ValueError, match="patience_unit"):
    curriculum.PatiencePacer(3, window=5, tau=5).load_state_dict(saved)
  with pytest.raises(ValueError, match="smoothing"):
    curriculum.Pacer.from_state_dict(saved)


@pytest.mark.parametrize("order", ["easy_to_hard", "hard_to_easy", "random"])
def test_monitored_mask_is_the_cluster_each_stage_adds(order):
  cfg = curriculum.default_curriculum_config()
  cfg.enabled, cfg.num_clusters, cfg.order, cfg.monitor = True, 6, order, "newest_cluster"
  assert curriculum_settings.monitored_mask(cfg, curriculum.mask_for_stage(cfg, 1)) is None
  seen = set()
  for stage in range(2, 7):
    newest = curriculum_settings.monitored_mask(cfg, curriculum.mask_for_stage(cfg, stage))
    assert sum(newest) == 1
    index = newest.index(True)
    assert curriculum.mask_for_stage(cfg, stage)[index]
    assert not curriculum.mask_for_stage(cfg, stage - 1)[index]
    seen.add(index)
  assert len(seen) == 5
  cfg.monitor = "batch"
  assert curriculum_settings.monitored_mask(cfg, curriculum.mask_for_stage(cfg, 3)) is None
